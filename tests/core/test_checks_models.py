"""Settings checked against the model family detected from the weights."""

from __future__ import annotations

from lora_core.checks.inputs import model_notes, model_problems
from lora_core.models.loading import ModelSource
from lora_core.profile import Profile


def _source(family: str | None) -> ModelSource:
    return ModelSource("builtin:x", "builtin", family, "x", None)


def test_bucket_steps_of_32_only_for_sdxl_and_v2_must_match():
    p = Profile()
    p.dataset.bucket_reso_steps = 32
    found = model_problems(p, _source("sd1"))
    assert "multiple of 64 for SD 1.x" in found[0].message
    assert found[0].field == ("dataset", "bucket_reso_steps")
    assert model_problems(p, _source("sdxl")) == []
    p.dataset.bucket_reso_steps = 64
    p.model.v2 = True
    found = model_problems(p, _source("sd1"))
    assert "v2` = true but the model is SD 1.x" in found[0].message
    assert found[0].field == ("model", "v2")
    assert model_problems(p, _source("sd2")) == []
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
