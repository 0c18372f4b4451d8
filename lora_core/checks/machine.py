"""Settings this machine cannot run: fp16 (and full_fp16) without a CUDA GPU, more
processes than GPUs, a GPU number that is not there; one that does nothing here:
cpu_offload_checkpointing without a CUDA GPU; and one it runs very slowly: bf16 on a
CPU without native bf16 (AVX2-only processors, some AMD EPYC ones among them), where
convolutions fall to a slow path (caching one latent of a full-size SD 1.5 VAE took 0.5 s
in fp32 and over 90 s in bf16 on such a machine). The CPU's flags come from
``/proc/cpuinfo`` (Linux); elsewhere nothing is said.

``lora-train check`` must answer in well under a second, so it cannot import torch (about
1.5 s) to ask ``torch.cuda.is_available()``. :class:`ProbedMachine` answers the same question
without it: the installed torch build says whether it was built for CUDA (``torch/version.py``
is read as text), and the NVIDIA driver library says how many GPUs this process may use
(``cuInit`` + ``cuDeviceGetCount`` through ctypes, which honour ``CUDA_VISIBLE_DEVICES``).
The driver also names the GPUs, their memory and compute capability (:func:`cuda_devices`),
which the wizard shows beside the process count and uses to write a new profile's
``mixed_precision`` for this machine (:func:`mixed_precision_for`). ``run`` asks
:class:`TorchMachine` once torch is imported anyway; both feed the same
:func:`machine_problems`, so both say the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

from lora_core.checks.problem import Problem, error, warning
from lora_core.checks.rules import gpu_id_list
from lora_core.profile import Profile

_FP16_HINT = ("on a CPU set mixed_precision = \"no\" (or \"bf16\"); on a GPU machine check "
              "that a CUDA build of torch is installed (python -c \"import torch; "
              "print(torch.cuda.is_available())\")")


@dataclass(frozen=True)
class Gpu:
    index: int  # as this process numbers them (after CUDA_VISIBLE_DEVICES)
    name: str
    memory_bytes: int
    capability: tuple[int, int] | None = None  # CUDA compute capability, when known

    def label(self) -> str:
        return f"{self.index}: {self.name} ({self.memory_bytes / 2**30:.0f} GB)"


class Machine(Protocol):
    @property
    def has_cuda(self) -> bool: ...

    @property
    def gpus(self) -> list[Gpu]: ...

    @property
    def cpu_bf16(self) -> bool | None:
        """Whether the CPU computes bf16 natively (None: not known here)."""
        ...


# CPU flags (as /proc/cpuinfo names them) of native bf16 arithmetic: AVX512-BF16 (Cooper
# Lake, Zen 4 and later) and AMX-BF16 (Sapphire Rapids and later).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The first processor's flags, or None where the file is not there (not Linux) or
    names none (an ARM CPU lists "Features" instead)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return None


def native_bf16(flags: frozenset[str] | None) -> bool | None:
    """Whether those flags include native bf16 (None when the flags are not known)."""
    if flags is None:
        return None
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


_SLOW_BF16 = ("`[training] mixed_precision` = \"bf16\" with no GPU: this CPU has no native "
              "bf16 (no AVX512-BF16 or AMX), so convolutions take a slow path, many times "
              "slower than fp32 (caching one SD 1.5 latent: 0.5 s in fp32, over 90 s in "
              "bf16 on such a CPU)")


def machine_problems(profile: Profile, machine: Machine) -> list[Problem]:
    tr, found = profile.training, []
    if tr.mixed_precision == "fp16" and not machine.has_cuda:
        found.append(error("`[training] mixed_precision` = \"fp16\" needs a CUDA GPU, and none "
                           "was found", _FP16_HINT, section="training", key="mixed_precision"))
    if tr.full_fp16 and not machine.has_cuda:
        found.append(error("`[training] full_fp16` trains the LoRA in fp16, which needs a CUDA "
                           "GPU, and none was found", "on a CPU remove full_fp16 (full_bf16 with "
                           "mixed_precision = \"bf16\" keeps the LoRA in half precision "
                           "there)", section="training", key="full_fp16"))
    if tr.mixed_precision == "bf16" and not machine.has_cuda and machine.cpu_bf16 is False:
        found.append(warning(_SLOW_BF16, "set [training] mixed_precision = \"no\" (fp32) on "
                             "this machine", section="training", key="mixed_precision"))
    if tr.cpu_offload_checkpointing and tr.gradient_checkpointing and not machine.has_cuda:
        # A note, not a refusal: the same profile saves GPU memory on a GPU machine.
        found.append(warning(
            "`[training] cpu_offload_checkpointing` with no CUDA GPU changes nothing: it "
            "keeps the checkpointed block inputs in CPU memory, where they are already",
            "keep it for a GPU machine (it saves GPU memory at some speed cost), or remove "
            "it here", section="training", key="cpu_offload_checkpointing"))
    if tr.num_processes > 1:
        found += _process_problems(profile, machine)
    # torch_compile's backend and what it needs here (a C++ compiler, Triton, a package).
    from lora_core.checks.compiling import compile_problems

    return found + compile_problems(profile, machine)


def _process_problems(profile: Profile, machine: Machine) -> list[Problem]:
    tr = profile.training
    if not machine.has_cuda:
        return [warning(f"`[training] num_processes` = {tr.num_processes} with no CUDA GPU: the "
                        "processes share this machine's CPU (gloo), which is slower than one "
                        "process", "use 1 here; several processes are for several GPUs",
                        section="training", key="num_processes")]
    count = len(machine.gpus)
    if not tr.gpu_ids.strip() and tr.num_processes > count:
        return [error(f"`[training] num_processes` = {tr.num_processes} needs one GPU per "
                      f"process, and this machine has {count}",
                      f"set num_processes to {count} or less", section="training",
                      key="num_processes")]
    ids = gpu_id_list(tr.gpu_ids) or []
    # Inside a launcher's process (or with CUDA_VISIBLE_DEVICES) the GPUs are renumbered:
    # only the launching process can hold the ids against the machine.
    if os.environ.get("WORLD_SIZE") or os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return []
    missing = [i for i in ids if i >= count]
    if missing:
        return [error(f"`[training] gpu_ids` = \"{tr.gpu_ids}\" names GPU "
                      f"{', '.join(map(str, missing))}, and this machine has GPUs "
                      f"0-{count - 1}",
                      "name GPUs from the list the wizard shows, or `nvidia-smi -L`",
                      section="training", key="gpu_ids")]
    return []


class TorchMachine:
    """What torch says (for ``run``, which imports torch anyway)."""

    @cached_property
    def cpu_bf16(self) -> bool | None:
        return native_bf16(cpu_flags())

    @cached_property
    def has_cuda(self) -> bool:
        import torch

        return torch.cuda.is_available()

    @cached_property
    def gpus(self) -> list[Gpu]:
        import torch

        if not torch.cuda.is_available():
            return []
        found = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            found.append(Gpu(index, props.name, int(props.total_memory),
                             (props.major, props.minor)))
        return found


class ProbedMachine:
    """What the installed torch build and the GPU driver say, without importing torch."""

    @cached_property
    def cpu_bf16(self) -> bool | None:
        return native_bf16(cpu_flags())

    @cached_property
    def has_cuda(self) -> bool:
        build = torch_build()
        if build == "rocm":
            return Path("/dev/kfd").exists()  # ROCm builds answer torch.cuda too
        return build == "cuda" and cuda_device_count() > 0

    @cached_property
    def gpus(self) -> list[Gpu]:
        return cuda_devices() if self.has_cuda else []


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
    return _device_count(_driver())


def _device_count(driver) -> int:
    count = ctypes.c_int(0)
    if driver is None:
        return 0
    try:
        if driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
    except AttributeError:
        return 0
    return count.value


def _driver():
    """The NVIDIA driver library, initialised (None without one or with every GPU hidden)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return None
    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
    try:
        driver = ctypes.CDLL(name)
        return driver if driver.cuInit(0) == 0 else None
    except (OSError, AttributeError):
        return None


def cuda_devices() -> list[Gpu]:
    """The GPUs the NVIDIA driver lets this process use, with their names and memory."""
    driver = _driver()
    if driver is None:
        return []
    found = []
    for index in range(_device_count(driver)):
        device, name = ctypes.c_int(0), ctypes.create_string_buffer(256)
        memory = ctypes.c_size_t(0)
        try:
            if driver.cuDeviceGet(ctypes.byref(device), index) != 0:
                continue
            driver.cuDeviceGetName(name, len(name), device)
            driver.cuDeviceTotalMem_v2(ctypes.byref(memory), device)
        except AttributeError:
            continue
        found.append(Gpu(index, name.value.decode(errors="replace") or "GPU", memory.value,
                         _capability(driver, device)))
    return found


def _capability(driver, device: ctypes.c_int) -> tuple[int, int] | None:
    """The device's compute capability (major, minor) from the driver, None if it won't say."""
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    try:
        if driver.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device) != 0 or \
                driver.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device) != 0:
            return None
    except AttributeError:
        return None
    return major.value, minor.value


# CUdevice_attribute numbers of the compute capability (cuda.h).
_CC_MAJOR, _CC_MINOR = 75, 76
# bf16 matrix maths came with Ampere (compute capability 8.0), as torch.cuda.is_bf16_supported
# tells it.
_BF16_CAPABILITY = (8, 0)


def mixed_precision_for(machine: Machine) -> tuple[str, str]:
    """The ``mixed_precision`` that suits ``machine`` and why, for a new profile made in the
    wizard (the profile's own default stays fp16): "no" without a CUDA GPU (fp16 needs one),
    "bf16" when every GPU has it (fp32's range, so no loss scaling), else "fp16"."""
    if not machine.has_cuda:
        return "no", ("no CUDA GPU was found here, and fp16 needs one: \"no\" computes in "
                      "full precision (fp32)")
    gpus = machine.gpus
    if gpus and all(g.capability is not None and g.capability >= _BF16_CAPABILITY
                    for g in gpus):
        names = "; ".join(f"{g.name} (compute {g.capability[0]}.{g.capability[1]})"
                          for g in gpus if g.capability is not None)
        return "bf16", (f"{names} can compute in bf16, which keeps fp32's range (no loss "
                        "scaling, no overflow)")
    names = "; ".join(g.name + (f" (compute {g.capability[0]}.{g.capability[1]})"
                                if g.capability else "") for g in gpus) or "this GPU"
    return "fp16", (f"{names}: no bf16 support known (it needs compute capability 8.0), so "
                    "fp16")

