"""The machine checks: what torch-free probing says agrees with torch."""

from __future__ import annotations

import pytest

from lora_core.checks.machine import (
    Gpu,
    ProbedMachine,
    TorchMachine,
    cuda_device_count,
    cuda_devices,
    machine_problems,
    mixed_precision_for,
    torch_build,
)
from lora_core.checks.rules import gpu_id_list, profile_rules
from lora_core.profile import Profile


class _Machine:
    def __init__(self, has_cuda: bool, gpus: int = 0, cpu_bf16: bool | None = None) -> None:
        self.has_cuda = has_cuda
        self.gpus = [Gpu(i, "RTX 4090", 24 * 2**30) for i in range(gpus)]
        self.cpu_bf16 = cpu_bf16


def _processes(count: int, gpu_ids: str = "") -> Profile:
    profile = Profile()
    profile.training.mixed_precision = "bf16"
    profile.training.num_processes = count
    profile.training.gpu_ids = gpu_ids
    return profile


def test_fp16_needs_a_cuda_gpu():
    profile = Profile()
    profile.training.mixed_precision = "fp16"
    found = machine_problems(profile, _Machine(False))
    assert len(found) == 1 and found[0].field == ("training", "mixed_precision")
    assert "needs a CUDA GPU" in found[0].message and "mixed_precision = \"no\"" in found[0].hint
    assert machine_problems(profile, _Machine(True)) == []
    profile.training.mixed_precision = "bf16"
    assert machine_problems(profile, _Machine(False)) == []


def test_the_probe_agrees_with_torch_without_importing_it():
    import subprocess
    import sys

    code = ("import sys\nfrom lora_core.checks.machine import ProbedMachine\n"
            "print(ProbedMachine().has_cuda, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert out[1] == "False"  # torch was never imported
    assert (out[0] == "True") == TorchMachine().has_cuda
    assert ProbedMachine().has_cuda == TorchMachine().has_cuda


def test_the_build_and_the_driver_are_read():
    import torch

    expected = "cuda" if torch.version.cuda else ("rocm" if torch.version.hip else "cpu")
    assert torch_build() == expected
    # the tests hide every GPU (CUDA_VISIBLE_DEVICES=""), and the driver honours that
    assert cuda_device_count() == 0


def test_processes_are_held_against_the_gpus(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert machine_problems(_processes(2), _Machine(True, gpus=2)) == []
    assert machine_problems(_processes(2, "1,3"), _Machine(True, gpus=4)) == []
    (found,) = machine_problems(_processes(4), _Machine(True, gpus=2))
    assert found.is_error and found.field == ("training", "num_processes")
    assert "this machine has 2" in found.message and "2 or less" in found.hint
    (found,) = machine_problems(_processes(2, "0,3"), _Machine(True, gpus=2))
    assert found.is_error and found.field == ("training", "gpu_ids")
    assert "names GPU 3" in found.message and "0-1" in found.message
    # no GPU: the processes run on the CPU (how the tests run them), said but not stopped
    (found,) = machine_problems(_processes(2), _Machine(False))
    assert not found.is_error and "gloo" in found.message
    assert machine_problems(_processes(1), _Machine(False)) == []


def test_inside_a_launcher_the_gpu_numbers_are_not_held_against_the_machine(monkeypatch):
    # accelerate sets CUDA_VISIBLE_DEVICES to gpu_ids, so GPU 3 is the rank's GPU 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert machine_problems(_processes(2, "2,3"), _Machine(True, gpus=2)) == []


@pytest.mark.parametrize(("text", "ids"), [("", []), ("all", []), ("0,1", [0, 1]),
                                           (" 2, 3 ", [2, 3]), ("0,0", None), ("a", None),
                                           ("0;1", None), ("-1", None)])
def test_gpu_ids_are_distinct_numbers(text, ids):
    assert gpu_id_list(text) == ids


def test_gpu_ids_name_one_gpu_per_process():
    bad = [p for p in profile_rules(_processes(2, "0,x")) if p.field == ("training", "gpu_ids")]
    assert len(bad) == 1 and "separated by commas" in bad[0].message
    few = [p for p in profile_rules(_processes(3, "0,1")) if p.field == ("training", "gpu_ids")]
    assert len(few) == 1 and "names 2 GPU(s) for num_processes = 3" in few[0].message
    assert not [p for p in profile_rules(_processes(2, "0,1")) if p.section == "training"]


def test_the_driver_lists_no_gpu_when_they_are_hidden():
    assert cuda_devices() == []
    assert ProbedMachine().gpus == [] == TorchMachine().gpus
    assert Gpu(1, "NVIDIA A100", 80 * 2**30).label() == "1: NVIDIA A100 (80 GB)"


class _Gpus:
    cpu_bf16 = None

    def __init__(self, *capabilities: tuple[int, int] | None) -> None:
        self.has_cuda = bool(capabilities)
        self.gpus = [Gpu(i, f"GPU{i}", 24 * 2**30, cc) for i, cc in enumerate(capabilities)]


def test_a_new_profiles_mixed_precision_suits_the_machine():
    """What the wizard writes into a new profile (issue 24): no on a CPU (fp16 needs CUDA),
    bf16 where every GPU has it (compute 8.0+), else fp16; each with its reason."""
    value, why = mixed_precision_for(_Gpus())
    assert value == "no" and "no CUDA GPU" in why and "fp16 needs one" in why
    value, why = mixed_precision_for(_Gpus((9, 0)))
    assert value == "bf16" and "GPU0 (compute 9.0)" in why
    assert mixed_precision_for(_Gpus((8, 6), (7, 5)))[0] == "fp16"  # one without bf16
    value, why = mixed_precision_for(_Gpus((7, 5)))
    assert value == "fp16" and "compute capability 8.0" in why
    assert mixed_precision_for(_Gpus(None))[0] == "fp16"  # unknown: the safe one
    # the profile's own default is unchanged
    assert Profile().training.mixed_precision == "fp16"


def test_the_driver_gives_each_gpus_compute_capability(monkeypatch):
    """cuda_devices reads the compute capability through the driver (attributes 75/76 of
    cuda.h), the wizard's bf16 test; a driver without the call gives None, not an error."""
    from lora_core.checks import machine

    class _Driver:  # the few driver calls cuda_devices makes, writing through byref
        def cuDeviceGetCount(self, count):  # noqa: N802
            count._obj.value = 1
            return 0

        def cuDeviceGet(self, device, index):  # noqa: N802
            device._obj.value = index
            return 0

        def cuDeviceGetName(self, name, size, device):  # noqa: N802
            name.value = b"NVIDIA H100"
            return 0

        def cuDeviceTotalMem_v2(self, memory, device):  # noqa: N802
            memory._obj.value = 80 * 2**30
            return 0

        def cuDeviceGetAttribute(self, value, attribute, device):  # noqa: N802
            value._obj.value = {75: 9, 76: 0}[attribute]
            return 0

    monkeypatch.setattr(machine, "_driver", _Driver)
    (gpu,) = cuda_devices()
    assert gpu == Gpu(0, "NVIDIA H100", 80 * 2**30, (9, 0))
    del _Driver.cuDeviceGetAttribute
    assert cuda_devices()[0].capability is None


AVX2_ONLY = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7B12
flags		: fpu vme sse sse2 avx avx2 fma bmi2 sha_ni
"""
SAPPHIRE_RAPIDS = AVX2_ONLY.replace("AuthenticAMD", "GenuineIntel").replace(
    "sha_ni", "avx512f avx512_bf16 amx_bf16 amx_tile")


def test_bf16_on_a_cpu_without_native_bf16_is_a_warning_that_proposes_fp32(tmp_path):
    """Issue 28: on an AVX2-only CPU (flags mocked) bf16 convolutions take a slow path; check
    says so at the field and proposes "no". A CPU with AVX512-BF16 / AMX keeps bf16 quiet,
    and so does a GPU machine or a CPU whose flags are not known."""
    from lora_core.checks.machine import cpu_flags, native_bf16

    (tmp_path / "avx2").write_text(AVX2_ONLY)
    (tmp_path / "spr").write_text(SAPPHIRE_RAPIDS)
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert native_bf16(cpu_flags(tmp_path / "avx2")) is False
    assert native_bf16(cpu_flags(tmp_path / "spr")) is True
    assert cpu_flags(tmp_path / "arm") is None and native_bf16(None) is None
    assert cpu_flags(tmp_path / "missing") is None

    profile = Profile()
    profile.training.mixed_precision = "bf16"
    (found,) = machine_problems(profile, _Machine(False, cpu_bf16=False))
    assert not found.is_error and found.field == ("training", "mixed_precision")
    assert "no native bf16" in found.message and 'mixed_precision = "no"' in found.hint
    assert machine_problems(profile, _Machine(False, cpu_bf16=True)) == []
    assert machine_problems(profile, _Machine(False, cpu_bf16=None)) == []
    assert machine_problems(profile, _Machine(True, 1, cpu_bf16=False)) == []
    profile.training.mixed_precision = "no"
    assert machine_problems(profile, _Machine(False, cpu_bf16=False)) == []
