"""Whether ``[training] torch_compile`` can work on this machine with its ``dynamo_backend``,
said before the run (``run`` would otherwise stop at its first step, minutes in, with a
compiler's traceback).

* The profile accepts sd-scripts' whole ``--dynamo_backend`` list, so imported commands
  load; some of those backends left torch long ago (the nvfuser ones, ``ofi``, ``fx2trt``),
  others come with a package of their own (TensorRT, IPEX, TVM, ONNX Runtime).
* ``inductor`` writes kernels and compiles them: C++ on a CPU, with the compiler inductor
  looks for (``CXX``, else g++ on Linux, clang++ on macOS, MSVC's cl on Windows); Triton
  on a GPU (Linux wheels of torch bring it; Windows needs the ``triton-windows`` package),
  which on Linux builds its launcher with a C compiler (``CC``, else gcc or clang).
* ``cudagraphs`` records CUDA graphs, so it needs a GPU.
* Regional compilation reuses one block's graph for the others from torch 2.5 on (it treats
  the parameters as graph inputs there); an older torch compiles every block on its own.

No torch: packages are looked up with ``importlib.util.find_spec``, the torch version is read
from the installed package's metadata.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from typing import TYPE_CHECKING

from lora_core.checks.levers import installed_torch_version as _torch_version
from lora_core.checks.problem import Problem, error, warning
from lora_core.profile import Profile
from lora_core.profile_keys import DYNAMO_BACKEND_PACKAGES as PACKAGED

if TYPE_CHECKING:
    from lora_core.checks.machine import Machine

# Backends sd-scripts lists that torch no longer has (removed by torch 2.2).
GONE = {"aot_ts_nvfuser": "TorchScript's nvFuser", "nvprims_nvfuser": "nvFuser's prims",
        "ofi": "TorchScript's optimize_for_inference", "fx2trt": "FX-to-TensorRT"}
_HINT = "set [training] dynamo_backend = \"inductor\" (the default), or remove torch_compile"


def compile_problems(profile: Profile, machine: Machine) -> list[Problem]:
    tr = profile.training
    if not tr.torch_compile:
        return []
    backend, found = tr.dynamo_backend, []

    def say(message: str, hint: str = _HINT) -> None:
        found.append(error(f"`[training] dynamo_backend` = \"{backend}\": {message}", hint,
                           section="training", key="dynamo_backend"))

    if backend in GONE:
        say(f"torch has had no such backend ({GONE[backend]}) since torch 2.2; sd-scripts "
            "still lists it")
    elif backend in PACKAGED:
        module, pip_name = PACKAGED[backend]
        if importlib.util.find_spec(module) is None:
            say(f"this backend comes with the {pip_name} package, which is not installed",
                f"pip install {pip_name} into lora-train's environment, or {_HINT}")
    elif backend == "cudagraphs" and not machine.has_cuda:
        say("CUDA graphs need a CUDA GPU, and none was found")
    elif backend == "inductor":
        found += _inductor_problems(machine)
    version = _torch_version()
    if version is not None and version < (2, 5):
        found.append(warning(
            f"`[training] torch_compile` with torch {'.'.join(map(str, version))}: before "
            "torch 2.5 each block compiles on its own, so the first step takes many times "
            "longer", "upgrade torch to 2.5 or later", section="training",
            key="torch_compile"))
    return found


def _inductor_problems(machine: Machine) -> list[Problem]:
    if machine.has_cuda:
        if importlib.util.find_spec("triton") is None:
            wheel = "triton-windows" if sys.platform == "win32" else "triton"
            return [error("`[training] torch_compile` with inductor on a GPU needs Triton, "
                          "which is not installed", f"pip install {wheel} into lora-train's "
                          "environment (the version torch's release notes name), or set "
                          "dynamo_backend = \"cudagraphs\", or remove torch_compile",
                          section="training", key="torch_compile")]
        if sys.platform.startswith("linux") and c_compiler() is None:
            return [error("`[training] torch_compile` with inductor on a GPU: Triton builds "
                          "its launcher with a C compiler, and none was found (CC, gcc or "
                          "clang)", "install one (Debian/Ubuntu: apt install gcc), or set "
                          "CC to yours, or remove torch_compile",
                          section="training", key="torch_compile")]
        return []
    if cpp_compiler() is None:
        wanted = os.environ.get("CXX") or _DEFAULT_CXX.get(sys.platform, "g++")
        return [error("`[training] torch_compile` with inductor on a CPU compiles C++ with "
                      f"{wanted}, which was not found", "install it (Debian/Ubuntu: apt "
                      "install g++; Windows: Visual Studio's Build Tools, run from their "
                      "prompt), or set CXX to the C++ compiler you have (CXX=clang++), or "
                      "remove torch_compile", section="training", key="torch_compile")]
    return []


# The C++ compiler inductor uses when CXX is unset (torch._inductor.config.cpp.cxx).
_DEFAULT_CXX = {"darwin": "clang++", "win32": "cl"}


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use here (the one CXX names, else its default for
    the platform), or None when it is not on the PATH."""
    return shutil.which(os.environ.get("CXX") or _DEFAULT_CXX.get(sys.platform, "g++"))


def c_compiler() -> str | None:
    """The C compiler Triton builds its launcher with (CC, else gcc or clang), or None."""
    names = [os.environ["CC"]] if os.environ.get("CC") else ["gcc", "clang", "cc"]
    return next((found for name in names if (found := shutil.which(name))), None)

