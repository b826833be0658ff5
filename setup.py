"""Build script: the pure-Python package plus the fused-loss C++ (and optionally CUDA) extension.

Build against the torch already installed, never in an isolated build environment:

    pip install --no-build-isolation --no-deps -e .

The extension ``hytver_dist._C`` holds the ``hytver::`` custom operators (csrc/). Its CPU part is
always built when torch is importable. The CUDA part (csrc/cuda/*.cu) is controlled by
``HYTVER_CUDA``:

* ``1``: build it, and fail if torch has no CUDA or nvcc / CUDA_HOME is missing;
* ``0``: CPU only;
* ``auto`` (default): build it when ``torch.version.cuda`` is set and nvcc is found under
  CUDA_HOME (a GPU is not needed; ``torch.cuda.is_available()`` is deliberately not consulted).

``HYTVER_LIMITED_API=0`` builds without the limited (abi3) Python API.
CUDA builds also want ``TORCH_CUDA_ARCH_LIST`` (e.g. ``9.0``) when no GPU is visible, and usually
``CUDA_HOME=/usr/local/cuda``. ``MAX_JOBS`` limits parallel compilation (ninja).
Without an importable torch (an isolated build) the package installs without the extension, and
``hytver_dist.ops`` then falls back to the pure-PyTorch reference implementations.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
EXT_NAME = "hytver_dist._C"


def _log(msg: str) -> None:
    print(f"hytver-dist setup: {msg}", file=sys.stderr)


def _rel(paths: list[str]) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _cuda_wanted(torch_mod, cuda_home: str | None) -> bool:
    mode = os.environ.get("HYTVER_CUDA", "auto").strip().lower()
    has_torch_cuda = bool(getattr(torch_mod.version, "cuda", None))
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else None
    has_nvcc = bool(nvcc and os.path.exists(nvcc))
    if mode in ("0", "off", "false", "no"):
        return False
    if mode in ("1", "on", "true", "yes"):
        if not has_torch_cuda:
            raise RuntimeError(
                f"HYTVER_CUDA=1 but torch {torch_mod.__version__} is a CPU-only build "
                "(torch.version.cuda is None); install a CUDA build of torch"
            )
        if not has_nvcc:
            raise RuntimeError(
                f"HYTVER_CUDA=1 but nvcc was not found (CUDA_HOME={cuda_home!r}); "
                "set CUDA_HOME, e.g. CUDA_HOME=/usr/local/cuda"
            )
        return True
    if mode != "auto":
        raise RuntimeError(f"HYTVER_CUDA={mode!r}: use 1, 0 or auto")
    if has_torch_cuda and not has_nvcc:
        _log(
            f"torch has CUDA {torch_mod.version.cuda} but nvcc was not found "
            f"(CUDA_HOME={cuda_home!r}): building the CPU kernels only"
        )
    return has_torch_cuda and has_nvcc


def _extensions():
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        _log(
            "torch is not importable (isolated build?): installing without the C++ extension; "
            "use `pip install --no-build-isolation -e .` to build it"
        )
        return [], {}

    # No -std here: torch adds the standard its headers need (C++20 in recent versions; 2.14
    # rejects C++17).
    cxx_flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-g0"]
    link_flags: list[str] = []
    if sys.platform != "darwin":  # Apple clang has no -fopenmp; at::parallel_for is then serial
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")

    cpu_sources = glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))
    sources = _rel([os.path.join(ROOT, "csrc", "ops.cpp"), os.path.join(ROOT, "csrc", "autograd.cpp"),
                    *cpu_sources])
    cuda_home = cpp_extension.CUDA_HOME or os.environ.get("CUDA_HOME")
    with_cuda = _cuda_wanted(torch, cuda_home)
    # py_limited_api (one abi3 build for all CPython versions) needs torch >= 2.6.
    # HYTVER_LIMITED_API=0 builds a plain CPython extension instead (per-machine builds gain
    # nothing from abi3; the GPU check builds so, to rule the stable-ABI path out when an op's
    # C++ exception misbehaves).
    torch_version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    limited_api = (torch_version >= (2, 6)
                   and os.environ.get("HYTVER_LIMITED_API", "1").strip() not in ("0", "no", "off"))
    kwargs = dict(
        name=EXT_NAME,
        extra_link_args=link_flags,
        py_limited_api=limited_api,
    )
    if with_cuda:
        sources += _rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
        nvcc_flags = ["-O3", "-lineinfo"]
        ext = cpp_extension.CUDAExtension(
            sources=sources, extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, **kwargs
        )
        _log(
            f"building CPU + CUDA kernels (torch {torch.__version__}, CUDA "
            f"{torch.version.cuda}, CUDA_HOME={cuda_home}, "
            f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '<unset>')})"
        )
    else:
        ext = cpp_extension.CppExtension(
            sources=sources, extra_compile_args={"cxx": cxx_flags}, **kwargs
        )
        _log(f"building CPU kernels (torch {torch.__version__})")
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}
    # cp310: requires-python >= 3.10, and torch defines Py_LIMITED_API for 3.9 or 3.10.
    options = {"bdist_wheel": {"py_limited_api": "cp310"}} if limited_api else {}
    return [ext], {"cmdclass": cmdclass, "options": options}


ext_modules, extra = _extensions()
setup(ext_modules=ext_modules, **extra)
