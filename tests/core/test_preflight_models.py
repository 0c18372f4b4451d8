"""Settings checked against the model family detected from the weights."""

from __future__ import annotations

from lora_core.dataset.preflight import model_problems
from lora_core.profile import Profile


def test_bucket_steps_of_32_only_for_sdxl_and_v2_must_match():
    p = Profile()
    p.dataset.bucket_reso_steps = 32
    assert "multiple of 64 for SD 1.x" in model_problems(p, "sd1")[0]
    assert model_problems(p, "sdxl") == []
    p.dataset.bucket_reso_steps = 64
    p.model.v2 = True
    assert "v2` = true but the model is SD 1.x" in model_problems(p, "sd1")[0]
    assert model_problems(p, "sd2") == []
    assert model_problems(p, None) == []  # family unknown until the model loads (.ckpt)


def test_model_advisories_follow_the_detected_family():
    from lora_core.dataset.preflight import settings_advisories
    from lora_core.errors import ModelError
    from lora_core.models.loading import ModelSource

    p = Profile()
    p.model.clip_skip = 2
    sdxl = ModelSource("m.safetensors", "single_file", "sdxl", "m.safetensors", None)
    assert any("ignored for SDXL" in n for n in settings_advisories(p, sdxl))
    sd1 = ModelSource("m.safetensors", "single_file", "sd1", "m.safetensors", None)
    assert not any("clip_skip" in n for n in settings_advisories(p, sd1))
    broken = ModelError("no such model", "fix the path")  # reported as a problem instead
    assert not any("clip_skip" in n for n in settings_advisories(p, broken))


def test_preflight_reads_the_model_header_once(tmp_path, monkeypatch):
    from lora_core.dataset import preflight
    from tests.core.dataset_helpers import make_folder, profile_for

    make_folder(tmp_path / "train", "2_tok", 2)
    profile = profile_for(tmp_path / "train", resolution=64, min_bucket_reso=64,
                          max_bucket_reso=64)
    profile.model.pretrained_model_name_or_path = "builtin:tiny-sd1"
    calls = []
    real = preflight.inspect_model
    monkeypatch.setattr(preflight, "inspect_model",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    preflight.run_preflight(profile, strict=False)
    assert len(calls) == 1
