"""In-tree PEP 517 backend: setuptools' own, after a check that fails at once with the fix.

``pip install --no-build-isolation -e .`` builds with the setuptools of the target environment
(build requirements are not installed). A fresh ``python3 -m venv`` of Python 3.11 ships
setuptools 65.5, which rejects the SPDX ``license = "Apache-2.0"`` ("must be valid exactly by one
definition"; the string form needs setuptools >= 77, the table form is deprecated) and has no
``bdist_wheel`` of its own (before 70.1 it came from the ``wheel`` package, which no longer provides
it). This backend stops at once and says what to do instead.
"""
from __future__ import annotations

import setuptools
from setuptools import build_meta as _meta
from setuptools.build_meta import *  # noqa: F401,F403 - every hook not wrapped below

MIN_SETUPTOOLS = (77, 0)


def _version(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def check_build_tools() -> None:
    if _version(setuptools.__version__) >= MIN_SETUPTOOLS:
        return
    raise SystemExit(
        f"odysseus-kernels: setuptools {setuptools.__version__} in this environment cannot build the package "
        f"(it needs setuptools >= 77: SPDX license metadata and a built-in bdist_wheel). "
        f"Fix: python -m pip install -U 'setuptools>=77' and rerun "
        f"'pip install --no-build-isolation -e .' (with --no-build-isolation pip does not install build "
        f"requirements; torch must be installed first so the extension builds against it).")


def _checked(name):
    hook = getattr(_meta, name)

    def run(*args, **kwargs):
        check_build_tools()
        return hook(*args, **kwargs)

    run.__name__ = name
    return run


for _name in ("prepare_metadata_for_build_wheel", "prepare_metadata_for_build_editable", "build_wheel",
              "build_editable", "build_sdist"):
    if hasattr(_meta, _name):
        globals()[_name] = _checked(_name)
