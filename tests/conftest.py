import os

import torch

# Without a GPU, Triton kernels run in the interpreter (set before anything imports triton;
# spawned test workers inherit it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from tests import nanfill


def pytest_configure(config):
    nanfill.install()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    from tests import distributed

    distributed._shutdown_all()
