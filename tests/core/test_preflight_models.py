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
