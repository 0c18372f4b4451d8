"""Smoke test of issue 7's benchmark: `bench/run_bench.py --quick` runs and yields the numbers.

It runs the real thing (floor and engine as child processes, `lora-train check`) on the
SD1.5-topology tiny model, so it proves the harness measures what it claims: the engine and
the floor both trained, their step times, first-step times and peak RSS are real, and the
ratios are computed from those same rounds. A unit test pins the measuring rule itself.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from bench.run_bench import measure
from tests.e2e.conftest import ROOT


def test_measure_takes_the_median_interval_after_warm_up(tmp_path):
    launched = 1000.0
    # Steps end at 1002, then 1002.5 (warm-up), then intervals of 0.1, 0.3, 0.2.
    times = [1002.0, 1002.5, 1002.6, 1002.9, 1003.1]
    lines = [{"type": "phase_changed", "time": 1001.0, "phase": "training"}]
    lines += [{"type": "step_ended", "time": t, "step": i + 1} for i, t in enumerate(times)]
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")

    m = measure("engine", events, launched, warmup=1, peak_rss_mb=123.0, wall_s=4.0)

    assert m.steps == 5
    assert abs(m.median_s_per_step - 0.2) < 1e-9  # median of 0.1, 0.3, 0.2 (0.5 is warm-up)
    assert abs(m.time_to_first_step_s - 2.0) < 1e-9
    assert m.phases == [("training", 1.0)]


def test_quick_bench_reports_engine_and_floor(tmp_path):
    cache = tmp_path / "bench-cache"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_bench.py"), "--quick", "--json",
         "--cache-dir", str(cache)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)

    (round_1,) = report["rounds"]
    assert set(round_1) == {"floor", "engine"}
    for name, m in round_1.items():
        assert m["steps"] == report["settings"]["steps"] == 8, name
        assert 0 < m["median_s_per_step"] < 30, name
        assert m["time_to_first_step_s"] > m["median_s_per_step"], name
        assert m["peak_rss_mb"] > 50, name  # a process that loaded torch and a U-Net
        assert any(phase == "training" for phase, _ in m["phases"]), name

    # The engine really trained: its LoRA file is in the round's output folder.
    runs = cache / "runs"
    (run_dir,) = list(runs.iterdir())
    assert list((run_dir / "round-1" / "engine-out").rglob("bench.safetensors"))

    engine, floor = round_1["engine"], round_1["floor"]
    summary = report["summary"]["engine"]
    assert summary["step_ratio"] == engine["median_s_per_step"] / floor["median_s_per_step"]
    assert summary["rss_ratio"] == engine["peak_rss_mb"] / floor["peak_rss_mb"]
    assert report["summary"]["floor"]["s_per_step"] == statistics.median(
        [floor["median_s_per_step"]])

    check = report["check"]
    assert check["images"] == 50 and check["exit_code"] == 0 and check["seconds"] > 0
    assert report["model"]["parameters"]["unet"] > 1_000_000
    assert report["machine"]["torch"] != "not installed"
