"""examples/options-tour.toml end to end: the options kohya users reach for most, together.

AdamW8bit + cosine_with_restarts + min_snr_gamma + noise_offset + shuffle_caption /
keep_tokens + flip_aug + cache_latents + samples every N steps, on the tiny model, through
the real CLI. The sample images must exist under <output_dir>/sample/ with sd-scripts'
names, each announced by an event, and the file's metadata must record the options.
"""

from __future__ import annotations

import math
import re

import pytest
from PIL import Image
from safetensors import safe_open

from lora_core.events import RunFinished, SampleSaved, StepEnded, read_events
from tests.e2e.conftest import ROOT, assert_diffusers_applies_every_module, run_cli, snapshot

TOUR = ROOT / "examples" / "options-tour.toml"


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    out = tmp_path_factory.mktemp("tour-out")
    dataset = ROOT / "examples" / "dataset"
    before = snapshot(dataset)
    proc = run_cli("run", str(TOUR), "--set", f"saving.output_dir={out}",
                   "--events", str(out / "stream.jsonl"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "events": list(read_events(out / "stream.jsonl")),
            "dataset": dataset, "before": before}


def test_sample_images_at_first_and_every_20_steps(tour):
    samples = [e for e in tour["events"] if isinstance(e, SampleSaved)]
    # sample_at_first (step 0) and every 20 steps of 40 (20, 40); two prompts each
    assert [(e.step, e.prompt_index) for e in samples] == [
        (0, 0), (0, 1), (20, 0), (20, 1), (40, 0), (40, 1)]
    for event in samples:
        path = tour["out"] / "sample" / event.path.rsplit("/", 1)[-1]
        assert path.is_file() and str(path) == event.path
        num = f"e{event.epoch:06d}" if event.epoch is not None else f"{event.step:06d}"
        assert re.fullmatch(rf"options-tour_{num}_{event.prompt_index:02d}_"
                            r"\d{14}_\d+\.png", path.name), path.name
        with Image.open(path) as image:
            assert image.size == (64, 64)
    assert snapshot(tour["dataset"]) == tour["before"]
    # `lora-train check` announces exactly the sampling points the run used
    from lora_core.profile_load import load_profile
    from lora_core.training.sample_prompts import sample_points

    profile = load_profile(TOUR)
    assert sample_points(profile.sample, 40, 20, 2) == sorted({e.step for e in samples})
    check = run_cli("check", str(TOUR))
    assert "after step(s): 0, 20, 40" in check.stdout


def test_schedule_and_metadata_record_the_options(tour):
    steps = [e for e in tour["events"] if isinstance(e, StepEnded)]
    assert len(steps) == 40
    lrs = [e.lrs["lr/unet"] for e in steps]
    # warm-up 4 steps, then cosine with 2 hard restarts: the rate climbs back after step ~22
    assert lrs[0] < lrs[3] and max(lrs[3:]) <= 1e-3 + 1e-12
    dips = [i for i in range(5, 39) if lrs[i + 1] > lrs[i] + 1e-6]
    assert dips, "no restart in cosine_with_restarts"
    final = next(e for e in tour["events"] if isinstance(e, RunFinished)).final_file
    with safe_open(final, "pt") as fh:
        meta = fh.metadata()
    assert meta["ss_optimizer"].startswith("bitsandbytes.optim.adamw.AdamW8bit")
    assert meta["ss_lr_scheduler"] == "cosine_with_restarts"
    assert float(meta["ss_min_snr_gamma"]) == 5.0
    assert float(meta["ss_noise_offset"]) == 0.05
    assert (meta["ss_flip_aug"], meta["ss_cache_latents"], meta["ss_shuffle_caption"]) == \
        ("True", "True", "True")
    assert meta["ss_keep_tokens"] == "1"
    assert all(math.isfinite(e.loss) for e in steps)
    assert_diffusers_applies_every_module(final)
