"""``[training] cpu_offload_checkpointing`` for the SD U-Nets (issue 28): with gradient
checkpointing, the inputs each checkpointed block keeps for the backward wait in CPU memory
(``lora_core/models/offloaded_checkpointing.py``, shared with Flux). The same gradients as
plain checkpointing on the tiny SD1 U-Net, with the text conditioning trained or not; each
input a checkpoint keeps is one the offload packed to the CPU; check accepts it with gradient
checkpointing, refuses it without, notes that it changes nothing without a GPU; calibrate
proposes it on a GPU only; a profile keeps it through save and load. What it saves in VRAM
is a GPU measurement (none here)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lora_core import calibrate as cal
from lora_core.checks.levers import lever_problems
from lora_core.checks.machine import machine_problems
from lora_core.cli import main
from lora_core.family_registry import family
from lora_core.models import offloaded_checkpointing as offload
from lora_core.profile import Profile
from lora_core.profile_io import save_profile
from lora_core.profile_load import load_profile

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KEY = "cpu_offload_checkpointing"


@pytest.fixture(scope="module")
def tiny_unet():
    from diffusers import UNet2DConditionModel

    from lora_core.models.builtin import ensure_builtin

    return UNet2DConditionModel.from_pretrained(ensure_builtin("tiny-sd1") / "unet")


def _gradients(unet, cpu_offload: bool, text_trained: bool) -> list[torch.Tensor]:
    """Every gradient of one forward and backward through a copy of ``unet``, checkpointed
    as the SD family does it (the text conditioning's too when it is trained)."""
    unet = copy.deepcopy(unet)
    unet.train()
    family("sd1").enable_gradient_checkpointing(SimpleNamespace(unet=unet),
                                                cpu_offload=cpu_offload)
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    text.requires_grad_(text_trained)
    prediction = unet(latents, torch.tensor([10, 500]), text).sample
    prediction.square().mean().backward()
    return [p.grad for p in unet.parameters()] + ([text.grad] if text_trained else [])


@pytest.mark.parametrize("text_trained", [False, True])
def test_offloaded_checkpointing_gives_plain_checkpointings_gradients(tiny_unet, text_trained):
    plain = _gradients(tiny_unet, False, text_trained)
    offloaded = _gradients(tiny_unet, True, text_trained)
    assert all(g is not None for g in plain) and any(g.abs().sum() > 0 for g in plain)
    assert len(offloaded) == len(plain)
    for a, b in zip(plain, offloaded, strict=True):
        assert torch.equal(a, b)


def test_each_input_a_block_keeps_is_one_packed_to_the_cpu(tiny_unet, monkeypatch):
    """Every block diffusers checkpoints (in the tiny U-Net 17 of its 12 resnets and 6
    transformer blocks: the middle block runs its first resnet as it is) goes through the
    offload once per forward: its tensor inputs reach the checkpoint only as the CPU copies
    ``to_cpu`` made, next to an empty tensor on the compute device (whose random state the
    checkpoint then keeps for the recompute)."""
    import torch.utils.checkpoint

    plain_calls = []
    plain = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint",
                        lambda *a, **k: plain_calls.append(a) or plain(*a, **k))
    _gradients(tiny_unet, False, text_trained=True)  # diffusers' own checkpointing
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", plain)
    packed: list[torch.Tensor] = []
    kept: list[tuple] = []
    to_cpu, checkpoint = offload.to_cpu, offload.checkpoint

    def packing(value):
        out = to_cpu(value)
        if isinstance(value, torch.Tensor):
            packed.append(out)
        return out

    def keeping(function, *args, **kwargs):
        kept.append(args)
        return checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(offload, "to_cpu", packing)
    monkeypatch.setattr(offload, "checkpoint", keeping)
    _gradients(tiny_unet, True, text_trained=True)
    assert len(plain_calls) == 17 and len(kept) == len(plain_calls)
    packed_ids = {id(t) for t in packed}
    for anchor, *inputs in kept:
        assert anchor.numel() == 0 and anchor.device == torch.device("cpu")  # this CPU's
        tensors = [a for a in inputs if isinstance(a, torch.Tensor)]
        assert tensors, "a block kept no tensor"
        for tensor in tensors:
            assert id(tensor) in packed_ids and tensor.device.type == "cpu"


def test_the_offload_keeps_to_cpu_and_moves_back_to_the_compute_device(monkeypatch):
    """The device logic with the compute device parametrised: ``offloaded`` moves each input
    to the device of the checkpoint's anchor, ``to_cpu`` leaves CPU tensors as they are (no
    copy on a CPU) and anything that is not a tensor untouched."""
    x = torch.ones(2)
    assert offload.to_cpu(x) is x and offload.to_cpu(None) is None
    seen = []

    def block(*args):
        seen.extend(args)
        return args[0] * 2

    moved = []
    monkeypatch.setattr(offload, "to_device",
                        lambda value, device: moved.append(device) or value)
    out = offload.offloaded(block)(torch.empty(0, device="meta"), x, {"a": 1})
    assert torch.equal(out, x * 2) and seen == [x, {"a": 1}]
    assert moved == [torch.device("meta")] * 2  # every input, to the anchor's device


def test_check_accepts_it_for_sd_with_gradient_checkpointing_and_refuses_it_without():
    for name in ("sd1", "sd2", "sdxl"):
        profile = Profile()
        profile.training.cpu_offload_checkpointing = True
        (problem,) = [p for p in lever_problems(profile, family(name))
                      if p.field == ("training", KEY)]
        assert problem.is_error
        assert "needs `gradient_checkpointing = true`" in problem.message
        assert "set [training] gradient_checkpointing = true" in problem.hint
        profile.training.gradient_checkpointing = True
        assert [p for p in lever_problems(profile, family(name))
                if p.field == ("training", KEY)] == []
        profile.training.blocks_to_swap = 2  # still one or the other (and no swap for SD)
        assert any("cannot be used with blocks_to_swap" in p.message
                   for p in lever_problems(profile, family(name)))


class _Machine:
    def __init__(self, has_cuda: bool) -> None:
        self.has_cuda, self.gpus, self.cpu_bf16 = has_cuda, [], None


def test_without_a_gpu_it_is_a_note_not_a_refusal():
    profile = Profile()
    profile.training.gradient_checkpointing = profile.training.cpu_offload_checkpointing = True
    (note,) = [p for p in machine_problems(profile, _Machine(False)) if p.field == ("training",
                                                                                      KEY)]
    assert note.severity == "warning" and "changes nothing" in note.message
    assert "keep it for a GPU machine" in note.hint
    assert [p for p in machine_problems(profile, _Machine(True))
            if p.field == ("training", KEY)] == []


def test_check_on_an_sd_profile_refuses_it_without_checkpointing_and_notes_it_with(
        tmp_path, capsys, state_dir):
    folder = tmp_path / "profiles"
    folder.mkdir()
    shutil.copy(EXAMPLES / "quickstart.toml", folder / "quickstart.toml")
    shutil.copytree(EXAMPLES / "dataset", folder / "dataset")
    args = [str(folder / "quickstart.toml"), "--set", f"training.{KEY}=true"]
    assert main(["check", *args, "--set", "training.gradient_checkpointing=false"]) == 2
    captured = capsys.readouterr()
    said = " ".join((captured.out + captured.err).split())
    assert f"`[training] {KEY}` needs `gradient_checkpointing = true`" in said
    assert main(["check", *args, "--set", "training.gradient_checkpointing=true"]) in (0, 1)
    captured = capsys.readouterr()
    said = " ".join((captured.out + captured.err).split())
    assert "is for Flux.1 models" not in said and "needs `gradient_checkpointing" not in said
    assert f"`[training] {KEY}` with no CUDA GPU changes nothing" in said  # no GPU in tests


def test_an_sd_profile_keeps_it_through_save_and_load_and_the_check_runs_it(tmp_path):
    from lora_core.checks import check_profile

    folder = tmp_path / "profiles"
    folder.mkdir()
    shutil.copy(EXAMPLES / "quickstart.toml", folder / "quickstart.toml")
    shutil.copytree(EXAMPLES / "dataset", folder / "dataset")
    profile = load_profile(folder / "quickstart.toml", [
        "training.gradient_checkpointing=true", f"training.{KEY}=true"])
    save_profile(profile, folder / "saved.toml")
    assert f"{KEY} = true" in (folder / "saved.toml").read_text(encoding="utf-8")
    again = load_profile(folder / "saved.toml")
    assert again.training.cpu_offload_checkpointing is True
    assert again.training.gradient_checkpointing is True
    assert again.model.pretrained_model_name_or_path == "builtin:tiny-sd1"
    report = check_profile(again, on=_Machine(True))
    assert report.errors == [] and report.plan is not None


def test_calibrate_proposes_it_on_a_gpu_after_checkpointing_and_not_on_a_cpu():
    profile = Profile()
    profile.training.mixed_precision = "bf16"
    profile.training.train_batch_size = 2
    offloading = [f"training.{KEY}=true"]
    assert offloading not in cal.candidate_levers(profile, family("sd1"))  # a CPU's
    sets = cal.candidate_levers(profile, family("sd1"), cuda=True)
    assert sets.index(["training.gradient_checkpointing=true"]) < sets.index(offloading)
    assert sets.index(["training.full_bf16=true"]) < sets.index(offloading) \
        < sets.index(["training.train_batch_size=1", "training.gradient_accumulation_steps=2"])
    profile.training.cpu_offload_checkpointing = True  # already set: not proposed again
    assert offloading not in cal.candidate_levers(profile, family("sdxl"), cuda=True)
    # Flux: block swap replaces it (the check refuses the two together).
    flux = cal.candidate_levers(Profile(), family("flux"), cuda=True)
    assert offloading in flux
    assert flux[-1] == [f"training.{KEY}=false", "training.blocks_to_swap=8"]
