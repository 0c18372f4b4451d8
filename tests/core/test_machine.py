"""The machine checks: what torch-free probing says agrees with torch."""

from __future__ import annotations

from lora_core.checks.machine import (
    ProbedMachine,
    TorchMachine,
    cuda_device_count,
    machine_problems,
    torch_build,
)
from lora_core.profile import Profile


class _Machine:
    def __init__(self, has_cuda: bool) -> None:
        self.has_cuda = has_cuda


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
