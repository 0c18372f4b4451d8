"""Issue 7's benchmark: our engine against the eager floor, measured in one run.

    python bench/run_bench.py [--steps 60] [--warmup 10] [--rounds 2] [--full-size]
                              [--device cpu|cuda] [--json] [--quick] [--no-usual]

Each round runs, one after another, each as its own child process as a user would start it:

* ``floor``: bench/floor.py, the bare eager loop with everything cached up front;
* ``engine``: ``python -m lora_core.cli run PROFILE --events FILE --no-progress`` with the
  bench profile (cache_latents, cache_text_encoder_outputs, network_train_unet_only, 64 px,
  batch 1, LoRA rank 4, AdamW, mixed_precision "no");
* ``usual`` (unless ``--no-usual``): the same engine with sd-scripts users' usual settings —
  the text encoder trains too and nothing is cached (issue 7's 0.107 s/step anchor);

then, once, ``lora-train check`` on a generated 1,000-image dataset.

What is measured, the same way for every child, from its JSON-lines event stream:

* **s/step**: the median interval between consecutive ``step_ended`` event ``time`` values,
  after ``--warmup`` steps. The interval is what a user waits per step (loader, events and
  all), so the floor's is its whole loop body too.
* **time to first step**: from just before the process is launched to its first
  ``step_ended`` event (interpreter start, imports, model load, caching, setup, step 1).
* **peak RSS**: ``ru_maxrss`` of that child alone, from ``os.wait4`` (no psutil needed).

Ratios are engine/floor within the same round (same machine, same load), then the median
over rounds. Everything is written under ``--cache-dir`` (default ``bench/.cache``): the
generated model and datasets are reused between invocations; run folders are per round.
The children get their own state and cache folders there and ``HF_HUB_OFFLINE=1``; nothing
touches the user's home.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/run_bench.py` puts bench/ first, not the root
    sys.path.insert(0, str(ROOT))

from bench.dataset import ensure_check_dataset, ensure_train_dataset  # noqa: E402
from bench.models import BENCH_FULL, BENCH_TINY, ensure_model, parameter_counts  # noqa: E402

LORA_RANK = 4
LORA_ALPHA = 1.0
LEARNING_RATE = 1e-4
CHILD_TIMEOUT_S = 1800


@dataclass
class Measurement:
    """One child process's numbers."""

    name: str
    steps: int
    median_s_per_step: float
    time_to_first_step_s: float
    peak_rss_mb: float
    wall_s: float
    # seconds from launch at which each phase_changed event arrived, in order
    phases: list[tuple[str, float]] = field(default_factory=list)


# --- profiles -----------------------------------------------------------------------------


def engine_profile(model_dir: Path, data_dir: Path, output_dir: Path, steps: int,
                   resolution_px: int, usual: bool = False) -> dict:
    """The bench profile. ``usual``: sd-scripts users' usual settings (TE trains, no cache)."""
    return {
        "profile_version": 1,
        "model": {"pretrained_model_name_or_path": str(model_dir)},
        "dataset": {
            "train_data_dir": str(data_dir),
            "resolution": resolution_px,
            "min_bucket_reso": resolution_px,
            "max_bucket_reso": resolution_px,
            "cache_latents": not usual,
            "cache_text_encoder_outputs": not usual,
        },
        "network": {"network_module": "LoRA", "network_dim": LORA_RANK,
                    "network_alpha": LORA_ALPHA, "network_train_unet_only": not usual},
        "optimizer": {"optimizer_type": "AdamW", "learning_rate": LEARNING_RATE,
                      "lr_scheduler": "constant"},
        "training": {"max_train_steps": steps, "train_batch_size": 1,
                     "mixed_precision": "no", "seed": 1},
        "saving": {"output_dir": str(output_dir), "output_name": "bench"},
    }


def write_profile(path: Path, profile: dict) -> Path:
    import tomli_w

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(profile), encoding="utf-8")
    return path


# --- running and measuring a child --------------------------------------------------------


def child_env(work: Path, device: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "LORA_TUI_STATE_DIR": str(work / "state"),
           "LORA_TUI_CACHE_DIR": str(work / "engine-cache"),
           "HF_HOME": str(work / "hf-home"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU variant stays on the CPU on a GPU machine
    return env


def run_child(name: str, argv: list[str], events: Path, env: dict[str, str], warmup: int,
              log: Path) -> Measurement:
    """Launch ``argv``, wait for it alone (``os.wait4`` gives its own rusage) and read its
    events."""
    events.parent.mkdir(parents=True, exist_ok=True)
    events.write_text("", encoding="utf-8")
    with open(log, "w", encoding="utf-8") as log_fh:
        launched = time.time()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log_fh, stderr=subprocess.STDOUT)
        usage = wait_alone(name, proc, CHILD_TIMEOUT_S, log)
        ended = time.time()
    return measure(name, events, launched, warmup, usage.ru_maxrss / 1024, ended - launched)


def wait_alone(name: str, proc: subprocess.Popen, timeout_s: float, log: Path):
    """Wait for ``proc`` (killed past ``timeout_s``); its own rusage. A failed child raises
    RuntimeError with the end of its ``log``."""
    try:
        _, status, usage = _wait4(proc, timeout_s)
    except TimeoutError:
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text("utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{name} exited with {proc.returncode}; its output ends:\n{tail}")
    return usage


def _wait4(proc: subprocess.Popen, timeout_s: float):
    """``os.wait4`` with a deadline: polls with WNOHANG so a hung child cannot hang us."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            return pid, status, usage
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.args!r} ran past {timeout_s} s")
        time.sleep(0.02)


def measure(name: str, events: Path, launched: float, warmup: int, peak_rss_mb: float,
            wall_s: float) -> Measurement:
    """Median s/step after ``warmup`` steps and time to first step, from an event stream."""
    records = [json.loads(line) for line in events.read_text("utf-8").splitlines()
               if line.strip()]
    step_times = [r["time"] for r in records if r["type"] == "step_ended"]
    if len(step_times) < warmup + 2:
        raise RuntimeError(f"{name}: {len(step_times)} step_ended events in {events}; need at "
                           f"least warm-up + 2 = {warmup + 2}")
    intervals = [b - a for a, b in pairwise(step_times[warmup:])]
    phases = [(r["phase"], round(r["time"] - launched, 3)) for r in records
              if r["type"] == "phase_changed"]
    return Measurement(name=name, steps=len(step_times),
                       median_s_per_step=statistics.median(intervals),
                       time_to_first_step_s=step_times[0] - launched,
                       peak_rss_mb=peak_rss_mb, wall_s=wall_s, phases=phases)


def time_check(profile: Path, env: dict[str, str], log: Path) -> tuple[float, int]:
    """Wall time of ``lora-train check`` (process launch to exit) and its exit code."""
    with open(log, "w", encoding="utf-8") as log_fh:
        started = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", "lora_core.cli", "check", str(profile)],
                             cwd=ROOT, env=env, stdout=log_fh, stderr=subprocess.STDOUT,
                             timeout=CHILD_TIMEOUT_S)
        return time.perf_counter() - started, rc


# --- the machine --------------------------------------------------------------------------


def machine_info(device: str) -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "nproc": str(len(os.sched_getaffinity(0))),
            "python": platform.python_version(), "platform": platform.platform(),
            "torch": _version("torch"), "diffusers": _version("diffusers"),
            "transformers": _version("transformers"), "accelerate": _version("accelerate")}
    if device == "cuda" and shutil.which("nvidia-smi"):
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True)
        info["gpu"] = gpu.stdout.strip()
    return info


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


# --- the benchmark ------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the engine against the eager floor "
                                     "(issue 7).")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the median")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat floor/engine(/usual) this many times; medians over rounds")
    parser.add_argument("--full-size", action="store_true",
                        help="SD1.5's real widths with random weights (slow)")
    parser.add_argument("--resolution", type=int, default=64, help="image size in pixels")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--no-usual", action="store_true",
                        help="skip the 'usual settings' engine run (TE trained, no caching)")
    parser.add_argument("--check-images", type=int, default=1000,
                        help="images in the dataset `lora-train check` is timed on (0: skip)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 8 steps, warm-up 2, no usual run, 50-image check")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "bench" / ".cache",
                        help="generated model, datasets and run folders")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.no_usual = 8, 2, True
        args.check_images = min(args.check_images, 50)
    if args.steps < args.warmup + 2:
        parser.error("--steps must be at least --warmup + 2")
    return args


def run_benchmark(args: argparse.Namespace) -> dict:
    cache = args.cache_dir.resolve()
    config = BENCH_FULL if args.full_size else BENCH_TINY
    model_dir = ensure_model(cache, config)
    data_dir = ensure_train_dataset(cache / "datasets", size_px=args.resolution)
    work = cache / "runs" / time.strftime("%Y%m%d-%H%M%S")
    env = child_env(work, args.device)
    rounds = []
    for index in range(args.rounds):
        folder = work / f"round-{index + 1}"
        results = {}
        floor_events = folder / "floor.jsonl"
        results["floor"] = run_child(
            "floor", [sys.executable, str(ROOT / "bench" / "floor.py"), str(model_dir),
                      str(data_dir), "--steps", str(args.steps), "--events", str(floor_events),
                      "--device", args.device],
            floor_events, env, args.warmup, folder / "floor.log")
        variants = [("engine", False)] + ([] if args.no_usual else [("usual", True)])
        for name, usual in variants:
            profile = write_profile(folder / f"{name}.toml", engine_profile(
                model_dir, data_dir, folder / f"{name}-out", args.steps, args.resolution,
                usual=usual))
            events = folder / f"{name}.jsonl"
            results[name] = run_child(
                name, [sys.executable, "-m", "lora_core.cli", "run", str(profile), "--events",
                       str(events), "--no-progress"],
                events, env, args.warmup, folder / f"{name}.log")
        rounds.append(results)

    report: dict = {
        "command": " ".join(["python", "bench/run_bench.py", *sys.argv[1:]]),
        "machine": machine_info(args.device),
        "model": {"config": asdict(config), "parameters": parameter_counts(model_dir),
                  "folder": str(model_dir)},
        "settings": {"steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
                     "resolution_px": args.resolution, "device": args.device,
                     "batch_size": 1, "lora_rank": LORA_RANK, "optimizer": "AdamW",
                     "precision": "fp32"},
        "rounds": [{name: asdict(m) for name, m in r.items()} for r in rounds],
        "summary": summarise(rounds),
    }
    if args.check_images:
        check_data = ensure_check_dataset(cache / "datasets", count=args.check_images)
        profile = write_profile(work / "check.toml", engine_profile(
            model_dir, check_data, work / "check-out", args.steps, args.resolution))
        seconds, rc = time_check(profile, env, work / "check.log")
        report["check"] = {"images": args.check_images, "seconds": seconds, "exit_code": rc}
    return report


def summarise(rounds: list[dict[str, Measurement]]) -> dict:
    """Per child: medians over rounds; ratios to the floor taken within each round first."""
    summary = {}
    for name in rounds[0]:
        ms = [r[name] for r in rounds]
        row = {
            "s_per_step": statistics.median(m.median_s_per_step for m in ms),
            "time_to_first_step_s": statistics.median(m.time_to_first_step_s for m in ms),
            "peak_rss_mb": statistics.median(m.peak_rss_mb for m in ms),
        }
        if name != "floor":
            row["step_ratio"] = statistics.median(
                r[name].median_s_per_step / r["floor"].median_s_per_step for r in rounds)
            row["first_step_ratio"] = statistics.median(
                r[name].time_to_first_step_s / r["floor"].time_to_first_step_s for r in rounds)
            row["rss_ratio"] = statistics.median(
                r[name].peak_rss_mb / r["floor"].peak_rss_mb for r in rounds)
        summary[name] = row
    return summary


def render_table(report: dict) -> str:
    lines = [
        f"machine: {report['machine']['cpu']}, {report['machine']['nproc']} cores, torch "
        f"{report['machine']['torch']}" + (f", GPU {report['machine']['gpu']}"
                                           if "gpu" in report["machine"] else ""),
        f"model: {report['model']['config']['name']} "
        f"({', '.join(f'{k} {v / 1e6:.2f} M' for k, v in report['model']['parameters'].items())})",
        f"settings: {report['settings']['steps']} steps (median after "
        f"{report['settings']['warmup']}), {report['settings']['resolution_px']} px, batch 1, "
        f"LoRA r{LORA_RANK}, AdamW, fp32, {report['settings']['device']}, "
        f"{report['settings']['rounds']} round(s)",
        "",
        "| run | s/step | ×floor | first step (s) | ×floor | peak RSS (MB) | ×floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in report["summary"].items():
        def ratio(key: str, r=row) -> str:
            return f"{r[key]:.2f}" if key in r else "1.00"

        lines.append(f"| {name} | {row['s_per_step']:.4f} | {ratio('step_ratio')} | "
                     f"{row['time_to_first_step_s']:.2f} | {ratio('first_step_ratio')} | "
                     f"{row['peak_rss_mb']:.0f} | {ratio('rss_ratio')} |")
    if "check" in report:
        check = report["check"]
        lines += ["", f"lora-train check on {check['images']} images: {check['seconds']:.2f} s "
                  f"(exit code {check['exit_code']})"]
    lines += ["", "phases (seconds from launch, round 1):"]
    for name, m in report["rounds"][0].items():
        shown = ", ".join(f"{phase} {t:.2f}" for phase, t in m["phases"]
                          if not phase.split()[-1][0].isdigit())
        lines.append(f"  {name}: {shown}; first step {m['time_to_first_step_s']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not _has_cuda():
        print("error: --device cuda needs a CUDA GPU and a CUDA build of torch", file=sys.stderr)
        return 2
    report = run_benchmark(args)
    print(json.dumps(report, indent=2) if args.json else render_table(report))
    return 0


def _has_cuda() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    return probe.stdout.strip() == "True"


if __name__ == "__main__":
    raise SystemExit(main())
