"""Settings checked against the model family detected from the weights."""

from __future__ import annotations

from lora_core.checks.inputs import model_notes
from lora_core.families.sd.checks import model_problems
from lora_core.family_registry import family
from lora_core.models.loading import ModelSource
from lora_core.profile import Profile


def _source(family: str | None) -> ModelSource:
    return ModelSource("builtin:x", "builtin", family, "x", None)


def _problems(p: Profile, name: str):
    """What the family of that name finds (its checks: ``check`` asks them the same way)."""
    return family(name).input_problems(p, _source(name))


def test_bucket_steps_of_32_only_for_sdxl_and_v2_must_match():
    p = Profile()
    p.dataset.bucket_reso_steps = 32
    found = _problems(p, "sd1")
    assert "multiple of 64 for SD 1.x" in found[0].message
    assert found[0].field == ("dataset", "bucket_reso_steps")
    assert _problems(p, "sdxl") == []
    p.dataset.bucket_reso_steps = 64
    p.model.v2 = True
    found = _problems(p, "sd1")
    assert "v2` = true but the model is SD 1.x" in found[0].message
    assert found[0].field == ("model", "v2")
    assert _problems(p, "sd2") == []
    assert model_problems(p, _source(None)) == []  # family unknown until it loads (.ckpt)


def test_model_advisories_follow_the_detected_family():
    from lora_core.errors import ModelError

    p = Profile()
    p.model.clip_skip = 2
    sdxl = ModelSource("m.safetensors", "single_file", "sdxl", "m.safetensors", None)
    notes = model_notes(p, sdxl)
    assert any("ignored for SDXL" in n.message for n in notes)
    assert all(not n.is_error for n in notes)
    sd1 = ModelSource("m.safetensors", "single_file", "sd1", "m.safetensors", None)
    assert not any("clip_skip" in n.message for n in model_notes(p, sd1))
    broken = ModelError("no such model", "fix the path")  # reported as a problem instead
    assert not any("clip_skip" in n.message for n in model_notes(p, broken))


def test_checks_read_the_model_header_once(tmp_path, monkeypatch):
    from lora_core.checks import check_profile, inputs
    from tests.core.dataset_helpers import make_folder, profile_for

    make_folder(tmp_path / "train", "2_tok", 2)
    profile = profile_for(tmp_path / "train", resolution=64, min_bucket_reso=64,
                          max_bucket_reso=64)
    profile.model.pretrained_model_name_or_path = "builtin:tiny-sd1"
    calls = []
    real = inputs.inspect_model
    monkeypatch.setattr(inputs, "inspect_model",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    check_profile(profile)
    assert len(calls) == 1


def test_a_pickled_checkpoint_gets_what_every_sd_family_says(tmp_path):
    """A .ckpt's variant is told only when it loads, but it is an SD checkpoint: `[flux]`
    values and Flux's levers are refused for it as for any SD model (they were let through,
    then ignored by the run and dropped by export)."""
    import torch

    from lora_core.checks import check_profile

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(2)}}, ckpt)
    (tmp_path / "train" / "1_tok").mkdir(parents=True)
    p = Profile()
    p.dataset.train_data_dir, p.saving.output_dir = str(tmp_path / "train"), str(tmp_path)
    p.model.pretrained_model_name_or_path = str(ckpt)
    p.flux.guidance_scale = 2.0
    p.training.blocks_to_swap = 2
    p.training.gradient_checkpointing = True
    found = {problem.field for problem in check_profile(p).errors}
    assert {("flux", "guidance_scale"), ("training", "blocks_to_swap")} <= found


def test_a_bucket_step_larger_than_any_bucket_is_refused_not_a_crash():
    """bucket_reso_steps 96 with 64 px buckets made the bucket maths divide by zero: a
    traceback from `check`."""
    from lora_core.checks.rules import profile_rules

    p = Profile()
    p.dataset.resolution = (64, 64)
    p.dataset.min_bucket_reso = p.dataset.max_bucket_reso = 64
    p.dataset.bucket_reso_steps = 96
    (found,) = [x for x in profile_rules(p) if x.field == ("dataset", "bucket_reso_steps")
                and "no bucket fits" in x.message]
    assert found.is_error
