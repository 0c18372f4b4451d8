"""Opt-in (``pytest -m slow``): training on a full-size SD 1.5-architecture checkpoint.

Proves nothing in the real-size single-file path is tiny-only, through the full-size
benchmark's own harness (``bench/full_size.py``): the shipped SD 1.5 configs build the real
architecture with random weights, written once as one A1111 ``.safetensors`` file in float16
(as released files are); ``lora-train run`` finds the (generated) CLIP tokenizer in a private
Hugging Face cache and trains a U-Net LoRA at 256 px in bf16 for a few steps. It prints the
benchmark's table (time to first step, s/step, RSS); the numbers themselves are the
benchmark's business (bench/RESULTS.md), not this test's. Takes a few minutes and about
6 GB of memory (the checkpoint is built in float16, in a child process).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from safetensors import safe_open

from bench.full_size import parse_args, render_table, run_benchmark

STEPS = 4


@pytest.mark.slow
def test_a_u_net_lora_trains_in_bf16_on_a_full_size_sd15_single_file(tmp_path: Path) -> None:
    cache = Path(os.environ.get("LORA_TUI_BENCH_CACHE", tmp_path / "bench"))
    args = parse_args(["--family", "sd15", "--steps", str(STEPS), "--warmup", "1",
                       "--no-usual", "--cache-dir", str(cache)])
    report = run_benchmark(args)
    print("\n" + render_table(report))

    checkpoint = Path(report["checkpoint"]["path"])
    assert 2.0e9 < checkpoint.stat().st_size < 2.3e9  # 1.07 G float16 weights, as released
    (run,) = report["rounds"][0].values()
    assert run["name"] == "ours-fast" and run["steps"] == STEPS
    assert run["s_per_step"] > 0 and 0 < run["first_step_s"] < run["wall_s"]
    assert 0 < run["rss_to_first_step_mb"] <= run["peak_rss_mb"]

    out = Path(report["work"]) / "round-1" / "ours-fast-out"
    with safe_open(str(out / "ours.safetensors"), framework="pt") as lora:
        keys = list(lora.keys())
        meta = lora.metadata()
    # SD 1.5's U-Net: 192 LoRA modules (down, up and alpha each), no text encoder
    assert len([k for k in keys if k.endswith(".lora_down.weight")]) == 192
    assert all(k.startswith("lora_unet_") for k in keys)
    assert meta["ss_mixed_precision"] == "bf16"
    assert meta["ss_max_train_steps"] == str(STEPS)
