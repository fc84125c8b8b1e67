"""Build script: the Python package plus the optional compiled extension ``odysseus_kernels._C``.

The extension (``csrc/*.cpp`` always, ``csrc/cuda/*.cu`` when torch has CUDA and ``nvcc`` is found)
is built with torch's ``BuildExtension``. ``ODYSSEUS_KERNELS_BUILD_EXT=0`` skips it; without torch
importable at build time it is skipped with a message (the package works without it).
Install with ``pip install --no-build-isolation -e .`` so the build uses the torch already installed.
"""
import glob
import os
import shutil
import site
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _nvidia_include_dirs():
    """Include folders of the pip ``nvidia`` packages (CUDA headers the local toolkit may lack)."""
    dirs = []
    roots = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
    for root in roots:
        if not root or not os.path.isdir(os.path.join(root, "nvidia")):
            continue
        for inc in glob.glob(os.path.join(root, "nvidia", "*", "include")) + glob.glob(
            os.path.join(root, "nvidia", "*", "*", "include")
        ):
            if inc not in dirs:
                dirs.append(inc)
    return dirs


def _fix_cuda_home():
    """Point ``CUDA_HOME`` at a real toolkit when it is unset and the ``nvcc`` on PATH is a wrapper.

    torch guesses ``CUDA_HOME`` as the parent of ``which nvcc``; a wrapper script such as
    ``/usr/local/bin/nvcc`` (exec'ing ``/usr/local/cuda-X/bin/nvcc``) makes that ``/usr/local``, which
    has neither the CUDA headers nor ``lib64/libcudart``. Only files are inspected (no subprocess).
    Must run before ``torch.utils.cpp_extension`` is imported (it reads ``CUDA_HOME`` at import).
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return

    def is_toolkit(home):
        return bool(home) and os.path.exists(os.path.join(home, "include", "cuda_runtime.h")) and os.path.exists(
            os.path.join(home, "bin", "nvcc"))

    nvcc = shutil.which("nvcc")
    guess = os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None
    if guess is None or is_toolkit(guess):
        return
    for home in ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True):
        if is_toolkit(home):
            print(f"odysseus-kernels: nvcc at {nvcc} is not inside a toolkit; using CUDA_HOME={home}")
            os.environ["CUDA_HOME"] = home
            return


def _extensions():
    if os.environ.get("ODYSSEUS_KERNELS_BUILD_EXT", "1") == "0":
        print("odysseus-kernels: ODYSSEUS_KERNELS_BUILD_EXT=0, skipping the compiled extension")
        return [], {}
    _fix_cuda_home()
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("odysseus-kernels: torch not importable at build time, skipping the compiled extension "
              "(install torch first and use --no-build-isolation)")
        return [], {}
    cpp = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cu = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    if not cpp:
        return [], {}
    nvcc = CUDA_HOME and os.path.join(CUDA_HOME, "bin", "nvcc")  # the one BuildExtension runs
    with_cuda = torch.version.cuda is not None and bool(cu) and bool(nvcc) and os.path.exists(nvcc)
    # No -std flag: torch's BuildExtension adds the standard its headers need (C++20 since torch 2.10).
    # -g0 undoes the -g of Python's CFLAGS: debug info of torch's headers doubles compile time and size.
    cxx = ["-O3", "-g0"]
    if with_cuda:
        # SASS for sm_80 (A100) and sm_90 (H100/H200), plus compute_90 PTX that newer GPUs JIT from.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        inc = _nvidia_include_dirs()
        ext = CUDAExtension(
            "odysseus_kernels._C",
            cpp + cu,
            include_dirs=inc,
            define_macros=[("ODYSSEUS_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
        )
        print(f"odysseus-kernels: building the extension with CUDA for TORCH_CUDA_ARCH_LIST="
              f"{os.environ['TORCH_CUDA_ARCH_LIST']}")
    else:
        ext = CppExtension("odysseus_kernels._C", cpp, extra_compile_args={"cxx": cxx})
        print("odysseus-kernels: building the extension without CUDA (CPU kernels only)")
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
