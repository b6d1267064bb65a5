"""Builds pybert and its extension pybert._C by driving CMake (the shape of vLLM's build).

Environment:
  PYBERT_CUDA=auto|0|1   build the CUDA kernels: auto (default) when nvcc is found and the
                         installed torch is a CUDA build; 1 insists; 0 builds the CPU kernels only.
  PYBERT_CUDA_ARCHS      CUDA architectures, default "80;90".
  PYBERT_SANITIZE=1      instrument the extension with AddressSanitizer and UBSan (run Python
                         with the sanitizer runtime preloaded: see scripts/sanitize.sh).
  PYBERT_GENERIC_CPU=1   compile the CPU kernels' baseline code only (no AVX2 / AVX-512 clones):
                         what a CPU without them runs (scripts/sanitize.sh tests it).
  PYBERT_WERROR=1        warnings in pybert's own code are errors (CI sets it).
  MAX_JOBS               parallel compile jobs.

The CMake build folder remembers the tools it was configured with; pip builds in a temporary
environment that is deleted afterwards, so a folder configured by an earlier build whose
tools are gone (or differ) is configured afresh instead of failing.

The extension is compiled against the torch found at build time, and the package then requires
exactly that torch version, so that build and runtime ABI always match.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _torch_version_and_cuda():
    import torch

    return torch.__version__, torch.version.cuda is not None


def _want_cuda(torch_has_cuda: bool) -> bool:
    choice = os.environ.get("PYBERT_CUDA", "auto").strip().lower()
    have_nvcc = shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").exists()
    if choice in ("0", "off", "false", "no"):
        return False
    if choice in ("1", "on", "true", "yes"):
        if not (have_nvcc and torch_has_cuda):
            sys.exit("PYBERT_CUDA=1 needs nvcc and a CUDA build of torch "
                     f"(nvcc found: {have_nvcc}, CUDA torch: {torch_has_cuda})")
        return True
    if choice != "auto":
        sys.exit(f"PYBERT_CUDA must be auto, 0 or 1, got {choice!r}")
    return have_nvcc and torch_has_cuda


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


def _flag(name: str) -> str:
    return "ON" if os.environ.get(name, "0").strip().lower() in ("1", "on", "true", "yes") \
        else "OFF"


def _fresh_build_dir(build_dir: Path, tools: dict) -> None:
    """Empty ``build_dir`` unless it was configured with exactly these tools and settings."""
    stamp = build_dir / "pybert-build-tools.json"
    try:
        same = json.loads(stamp.read_text()) == tools
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(build_dir, ignore_errors=True)
        build_dir.mkdir(parents=True)
        stamp.write_text(json.dumps(tools))


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import torch

        _, torch_has_cuda = _torch_version_and_cuda()
        use_cuda = _want_cuda(torch_has_cuda)
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        ninja = shutil.which("ninja")
        args = [
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}",
            f"-DPYBERT_CUDA={'ON' if use_cuda else 'OFF'}",
            f"-DPYBERT_SANITIZE={_flag('PYBERT_SANITIZE')}",
            f"-DPYBERT_GENERIC_CPU={_flag('PYBERT_GENERIC_CPU')}",
            f"-DPYBERT_WERROR={_flag('PYBERT_WERROR')}",
        ]
        if "PYBERT_CUDA_ARCHS" in os.environ:
            args.append(f"-DPYBERT_CUDA_ARCHS={os.environ['PYBERT_CUDA_ARCHS']}")
        if ninja:
            args += ["-GNinja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        _fresh_build_dir(build_dir, {"args": args, "cmake": shutil.which("cmake"),
                                     "torch": torch.__file__})
        print(f"pybert: building the extension with CUDA {'on' if use_cuda else 'off'}")
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)


torch_version, _ = _torch_version_and_cuda()
# A local version label (+cpu, +cu130) is not part of the requirement: pip matches 2.13.0+cpu
# against ==2.13.0.
torch_requirement = f"torch=={torch_version.split('+')[0]}"

setup(
    ext_modules=[CMakeExtension("pybert._C")],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=[torch_requirement, "numpy", "safetensors", "tokenizers", "tqdm",
                      "huggingface_hub>=0.26"],
)
