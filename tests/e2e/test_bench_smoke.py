"""Smoke test of issue 7's benchmark: `bench/run_bench.py --quick` runs and yields the numbers.

It runs the real thing (floor and engine as child processes, `lora-train check`) on the
SD1.5-topology tiny model, so it proves the harness measures what it claims: the engine and
the floor both trained, their step times, first-step times and peak RSS are real, and the
ratios are computed from those same rounds. A unit test pins the measuring rule itself.
"""

from __future__ import annotations

import json
import os
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


def test_the_peer_probe_times_another_trainers_optimizer_steps(tmp_path):
    """Peer mode measures sd-scripts through bench/peer_probe.py: a script that knows nothing
    of it gets one step_ended event per optimizer step (under accelerate's wrapper too), and
    the full-size harness reads them like ours."""
    from bench.full_size import run_child

    peer = tmp_path / "peer"
    (peer / "library").mkdir(parents=True)
    # imported from the script's own folder, as sd-scripts imports `library`
    (peer / "library" / "__init__.py").write_text("STEPS = 5\n", encoding="utf-8")
    (peer / "train.py").write_text(
        "import sys, time\nimport torch\nfrom accelerate import Accelerator\n"
        "from library import STEPS\n"
        "assert sys.argv[1:] == ['--flag', 'value'], sys.argv\n"
        "model = torch.nn.Linear(4, 4)\n"
        "accelerator = Accelerator(cpu=True)\n"
        "opt = torch.optim.AdamW(model.parameters())\n"
        "model, opt = accelerator.prepare(model, opt)\n"
        "if __name__ == '__main__':\n"
        "    for _ in range(STEPS):\n"
        "        model(torch.ones(1, 4)).sum().backward()\n"
        "        opt.step(); opt.zero_grad(); time.sleep(0.05)\n", encoding="utf-8")
    events = tmp_path / "peer.jsonl"
    run = run_child("peer", [sys.executable, str(ROOT / "bench" / "peer_probe.py"), str(events),
                             str(peer / "train.py"), "--flag", "value"],
                    events, dict(os.environ), tmp_path / "peer.log", 1, tmp_path)
    steps = [json.loads(line) for line in events.read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5]
    assert run.steps == 5 and 0.05 <= run.s_per_step < 2
    assert 0 < run.first_step_s < run.wall_s
    assert 0 < run.rss_to_first_step_mb <= run.peak_rss_mb
