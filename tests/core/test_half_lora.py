"""``[training] full_bf16`` / ``full_fp16`` (issue 28): the LoRA weights and the optimizer
state in half precision. Each refusal at its field with what to do, ``check`` and ``run``
refusing alike before anything loads, and fp16's loss scaler taking fp16 gradients. (The
training itself: tests/e2e/test_training_options.py and tests/e2e/test_resume.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lora_core.checks.levers import lever_problems
from lora_core.checks.machine import machine_problems
from lora_core.cli import main
from lora_core.profile import Profile
from lora_core.training.trainer import allow_fp16_gradients, lora_dtype

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class _Machine:
    def __init__(self, has_cuda: bool) -> None:
        self.has_cuda, self.gpus, self.cpu_bf16 = has_cuda, [], None


def _training(mixed_precision: str, **levers: bool) -> Profile:
    profile = Profile()
    profile.training.mixed_precision = mixed_precision
    for key, value in levers.items():
        setattr(profile.training, key, value)
    return profile


def _at(problems, key: str) -> list:
    return [p for p in problems if p.field == ("training", key) and p.severity == "error"]


@pytest.mark.parametrize("key, wanted", [("full_bf16", "bf16"), ("full_fp16", "fp16")])
def test_each_half_lora_lever_needs_the_mixed_precision_of_its_dtype(key, wanted):
    for other in ("no", "fp16", "bf16"):
        found = _at(lever_problems(_training(other, **{key: True}), None), key)
        if other == wanted:
            assert found == []
            continue
        (problem,) = found
        assert f"`[training] {key}`" in problem.message
        assert f"needs mixed_precision = \"{wanted}\"; it is \"{other}\"" in problem.message
        assert f"set [training] mixed_precision = \"{wanted}\", or remove {key}" in problem.hint


def test_full_bf16_and_full_fp16_together_are_refused_once():
    for precision in ("bf16", "fp16"):
        found = lever_problems(_training(precision, full_bf16=True, full_fp16=True), None)
        (problem,) = [p for p in found if p.severity == "error"]
        assert problem.field == ("training", "full_fp16")
        assert "both set" in problem.message and "remove the other" in problem.hint


def test_full_fp16_needs_a_cuda_gpu_at_its_own_field():
    profile = _training("fp16", full_fp16=True)
    (problem,) = _at(machine_problems(profile, _Machine(False)), "full_fp16")
    assert "needs a CUDA GPU" in problem.message and "remove full_fp16" in problem.hint
    assert _at(machine_problems(profile, _Machine(True)), "full_fp16") == []
    # full_bf16 runs on a CPU (bf16's own warning, on CPUs without native bf16, aside)
    assert _at(machine_problems(_training("bf16", full_bf16=True), _Machine(False)),
               "full_bf16") == []


def test_the_lora_dtype_follows_the_lever():
    assert lora_dtype(_training("no").training) == torch.float32
    assert lora_dtype(_training("bf16", full_bf16=True).training) == torch.bfloat16
    assert lora_dtype(_training("fp16", full_fp16=True).training) == torch.float16


def test_fp16s_loss_scaler_unscales_the_fp16_gradients_full_fp16_makes():
    """torch's GradScaler refuses fp16 gradients; full_fp16 lets it take them (as sd-scripts'
    patch_accelerator_for_fp16_training), unscaled exactly and stepped."""

    def scaled_step(patch: bool):
        weight = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float16))
        optimizer = torch.optim.SGD([weight], lr=0.25)
        scaler = torch.amp.GradScaler("cpu", init_scale=64.0)
        if patch:
            allow_fp16_gradients(scaler)
        scaler.scale((weight.float() ** 2).sum()).backward()
        scaler.unscale_(optimizer)
        grad = weight.grad.clone()
        scaler.step(optimizer)
        scaler.update()
        return weight, grad

    with pytest.raises(ValueError, match="unscale FP16 gradients"):
        scaled_step(patch=False)
    weight, grad = scaled_step(patch=True)
    assert grad.dtype == torch.float16 and grad.tolist() == [2.0, -4.0, 1.0]  # 2w, unscaled
    assert weight.dtype == torch.float16 and weight.tolist() == [0.5, -1.0, 0.25]


def test_check_and_run_refuse_full_bf16_without_bf16_alike(tmp_path, capsys, state_dir):
    folder = tmp_path / "profiles"
    folder.mkdir()
    shutil.copy(EXAMPLES / "quickstart.toml", folder / "quickstart.toml")
    shutil.copytree(EXAMPLES / "dataset", folder / "dataset")
    args = [str(folder / "quickstart.toml"), "--set", "training.full_bf16=true"]
    wanted = "`[training] full_bf16` keeps the LoRA weights in bf16, so it needs " \
             "mixed_precision = \"bf16\"; it is \"no\""
    assert main(["check", *args]) == 2
    captured = capsys.readouterr()
    assert wanted in " ".join((captured.out + captured.err).split())
    assert main(["run", *args]) == 2
    captured = capsys.readouterr()
    assert wanted in " ".join((captured.out + captured.err).split())
    assert not (tmp_path / "output").exists()  # refused before anything was written
    assert main(["check", *args, "--set", "training.mixed_precision=bf16"]) in (0, 1)
    captured = capsys.readouterr()
    said = " ".join((captured.out + captured.err).split())
    assert "keeps the LoRA weights in bf16" not in said and "Problems (0)" in said
    # only the advisory on how its updates are rounded (the quickstart's AdamW8bit)
    assert "`[training] full_bf16` with AdamW8bit: each update is computed in float32 and " \
        "written to the bf16 LoRA weights (its moments are 8-bit) with stochastic rounding" \
        in said


def test_full_fp16_with_torchs_adam_family_is_refused_and_why():
    """Its moments would be fp16: eps 1e-8 is 0 there and a small second moment underflows,
    so three AdamW steps turn the weights infinite (shown below); AdamW8bit keeps 8-bit
    state with fp32 maths and is allowed."""
    weight = torch.nn.Parameter(torch.full((4,), 0.01, dtype=torch.float16))
    optimizer = torch.optim.AdamW([weight], lr=1e-4)
    for _ in range(3):
        weight.grad = torch.full((4,), 1e-4, dtype=torch.float16)
        optimizer.step()
    assert not torch.isfinite(weight).all()  # why the check refuses it
    profile = _training("fp16", full_fp16=True)
    profile.optimizer.optimizer_type = "AdamW"
    (found,) = [p for p in _at(lever_problems(profile, None), "full_fp16")
                if "eps" in p.message]
    assert "AdamW8bit" in found.hint
    profile.optimizer.optimizer_type = "AdamW8bit"
    assert not [p for p in _at(lever_problems(profile, None), "full_fp16") if "eps" in p.message]
