"""Settings this machine cannot run: fp16 without a CUDA GPU.

``lora-train check`` must answer in well under a second, so it cannot import torch (about
1.5 s) to ask ``torch.cuda.is_available()``. :class:`ProbedMachine` answers the same question
without it: the installed torch build says whether it was built for CUDA (``torch/version.py``
is read as text), and the NVIDIA driver library says how many GPUs this process may use
(``cuInit`` + ``cuDeviceGetCount`` through ctypes, which honour ``CUDA_VISIBLE_DEVICES``).
``run`` asks :class:`TorchMachine` once torch is imported anyway; both feed the same
:func:`machine_problems`, so both say the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Protocol

from lora_core.checks.problem import Problem, error
from lora_core.profile import Profile

_FP16_HINT = ("on a CPU set mixed_precision = \"no\" (or \"bf16\"); on a GPU machine check "
              "that a CUDA build of torch is installed (python -c \"import torch; "
              "print(torch.cuda.is_available())\")")


class Machine(Protocol):
    @property
    def has_cuda(self) -> bool: ...


def machine_problems(profile: Profile, machine: Machine) -> list[Problem]:
    if profile.training.mixed_precision == "fp16" and not machine.has_cuda:
        return [error("`[training] mixed_precision` = \"fp16\" needs a CUDA GPU, and none was "
                      "found", _FP16_HINT, section="training", key="mixed_precision")]
    return []


class TorchMachine:
    """What torch says (for ``run``, which imports torch anyway)."""

    @cached_property
    def has_cuda(self) -> bool:
        import torch

        return torch.cuda.is_available()


class ProbedMachine:
    """What the installed torch build and the GPU driver say, without importing torch."""

    @cached_property
    def has_cuda(self) -> bool:
        build = torch_build()
        if build == "rocm":
            return Path("/dev/kfd").exists()  # ROCm builds answer torch.cuda too
        return build == "cuda" and cuda_device_count() > 0


def torch_build() -> str | None:
    """"cuda", "rocm" or "cpu" for the installed torch (None when it is not installed)."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        version = Path(folder) / "version.py"
        try:
            text = version.read_text(encoding="utf-8")
        except OSError:
            continue
        if re.search(r"^hip\s*(?::[^=]*)?=\s*['\"]", text, re.M):
            return "rocm"
        if re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]", text, re.M):
            return "cuda"
        return "cpu"
    return None


def cuda_device_count() -> int:
    """GPUs the NVIDIA driver lets this process use (0 without a driver)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
    try:
        driver = ctypes.CDLL(name)
    except OSError:
        return 0
    count = ctypes.c_int(0)
    try:
        if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
    except AttributeError:
        return 0
    return count.value
