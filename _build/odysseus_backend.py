"""In-tree PEP 517 backend: setuptools' own, after a check that fails at once with the fix.

``pip install --no-build-isolation -e .`` builds with the setuptools of the target environment
(build requirements are not installed). A fresh ``python3 -m venv`` of Python 3.11 ships
setuptools 65.5, which has no ``bdist_wheel`` of its own (it came from the ``wheel`` package before
setuptools 70.1, and ``wheel`` >= 0.46 no longer provides it): the build would stop with
"invalid command 'bdist_wheel'". This backend says what to do instead.
"""
from __future__ import annotations

import setuptools
from setuptools import build_meta as _meta
from setuptools.build_meta import *  # noqa: F401,F403 - every hook not wrapped below

MIN_SETUPTOOLS = (70, 1)


def _version(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _has_legacy_bdist_wheel() -> bool:
    try:
        from wheel.bdist_wheel import bdist_wheel  # noqa: F401  (wheel < 0.46 provides it itself)
    except Exception:  # noqa: BLE001
        return False
    return True


def check_build_tools() -> None:
    if _version(setuptools.__version__) >= MIN_SETUPTOOLS or _has_legacy_bdist_wheel():
        return
    raise SystemExit(
        f"odysseus-kernels: setuptools {setuptools.__version__} in this environment cannot build the package "
        f"(no bdist_wheel; it needs setuptools >= 70.1, or the 'wheel' package < 0.46). "
        f"Fix: python -m pip install -U 'setuptools>=70.1' and rerun "
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
