"""Issue 28: ``lora-train calibrate``'s prediction against real runs, and what fp8_base saves,
on a full-size model (the real SD 1.5 architecture with random weights, bench/full_size.py's
checkpoint), on this machine.

    python bench/calibrate_levers.py [--family sd15] [--resolution 256] [--steps 8]
                                     [--precision no] [--json] [--cache-dir DIR]

Every run is a child process started as a user starts it, one after another (never two at
once), in a temporary work folder:

1. ``lora-train calibrate --json`` on the profile (U-Net LoRA rank 4, latents cached, AdamW,
   batch 1, ``--precision``): its predicted seconds per step, time to the first step, peak
   memory and ETA;
2. ``lora-train run`` of the same profile for ``--steps`` steps: its real s/step (median
   interval between ``step_ended`` events after 2 warm-up steps), first step, wall time and
   peak RSS (``os.wait4``'s ``ru_maxrss``), beside the prediction;
3. the same run with ``training.fp8_base=true``: what fp8 weights save;
4. ``calibrate --memory-budget`` 75 % of the real plain peak, then a real run with the first
   proposal that fits: whether it stays under that budget.

Results are printed as a Markdown table (``--json``: one object) to paste into
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.full_size import ensure_checkpoint, ensure_hf_home  # noqa: E402
from tests.e2e.conftest import make_images  # noqa: E402

WARMUP = 2


def profile_for(checkpoint: Path, data: Path, out: Path, args: argparse.Namespace) -> dict:
    return {
        "profile_version": 1,
        "model": {"pretrained_model_name_or_path": str(checkpoint)},
        "dataset": {"train_data_dir": str(data), "resolution": args.resolution,
                    "min_bucket_reso": args.resolution, "max_bucket_reso": args.resolution,
                    "max_data_loader_n_workers": 0, "cache_latents": True},
        "network": {"network_module": "LoRA", "network_dim": 4, "network_alpha": 1.0,
                    "network_train_unet_only": True},
        "optimizer": {"optimizer_type": "AdamW", "learning_rate": 1e-4,
                      "lr_scheduler": "constant"},
        "training": {"max_train_steps": args.steps, "train_batch_size": 1,
                     "mixed_precision": args.precision, "seed": 1},
        "saving": {"output_dir": str(out), "output_name": "bench"},
    }


def child(argv: list[str], env: dict) -> dict:
    """Run one child to its end (calibrate): its wall time and stdout."""
    started = time.time()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv[:4])} failed ({done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    return {"wall_s": time.time() - started, "stdout": done.stdout, "code": done.returncode}


def timed_run(argv: list[str], env: dict) -> dict:
    """A run whose step_ended events are stamped as they come (the stream has no clock)."""
    started = time.time()
    process = subprocess.Popen([*argv, "--events", "-"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT)
    stamps, reported = [], None
    assert process.stdout is not None
    for line in process.stdout:
        if '"step_ended"' in line:
            stamps.append(time.time() - started)
        elif '"run_finished"' in line:
            reported = json.loads(line).get("peak_memory_bytes")
    _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        assert process.stderr is not None
        raise SystemExit(f"run failed ({code}):\n{process.stderr.read()[-3000:]}")
    intervals = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][WARMUP - 1:]
    return {"wall_s": time.time() - started, "first_step_s": stamps[0],
            "s_per_step": statistics.median(intervals) if intervals else None,
            "peak_rss": usage.ru_maxrss * 1024,
            # on CUDA: the run's allocator peak, reserved included (calibrate's measure)
            "peak_reported": reported}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="sd15", choices=("sd15", "sdxl"))
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--precision", default="no", choices=("no", "bf16", "fp16"))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "bench" / ".cache")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--each-lever", action="store_true",
                        help="also a real run with each lever alone: its peak and s/step")
    parser.add_argument("--levers-only", action="store_true",
                        help="only the plain run and each lever alone (no calibrate)")
    args = parser.parse_args(argv)
    checkpoint = ensure_checkpoint(args.cache_dir, args.family)
    hf_home = ensure_hf_home(args.cache_dir, args.family)
    work = Path(tempfile.mkdtemp(prefix="bench-calibrate-"))
    data = work / "data"
    make_images(data / "1_tok thing", args.images, size=(args.resolution, args.resolution))
    profile = work / "profile.toml"
    profile.write_text(tomli_w.dumps(profile_for(checkpoint, data, work / "out", args)))
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "LORA_TUI_STATE_DIR": str(work / "state"), "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "lora_core.cli"]
    report: dict = {"family": args.family, "resolution": args.resolution,
                    "precision": args.precision, "steps": args.steps}

    if args.levers_only:
        return levers_table(profile, cli, env, args)
    predicted = json.loads(child([*cli, "calibrate", str(profile), "--json"], env)["stdout"])
    real = timed_run([*cli, "run", str(profile), "--no-progress"], env)
    fp8 = timed_run([*cli, "run", str(profile), "--no-progress", "--set",
                     "training.fp8_base=true", "--set", "saving.output_name=fp8"], env)
    budget = int(0.75 * (real["peak_reported"] if predicted["device"].startswith("cuda")
                         else real["peak_rss"]))
    proposed = child([*cli, "calibrate", str(profile), "--json", "--memory-budget",
                      str(budget)], env)
    proposals = json.loads(proposed["stdout"])["proposals"]
    fitting = next((p for p in proposals if p["fits"]), None)
    proposal_run = None
    if fitting is not None:
        sets = [arg for item in fitting["set"] for arg in ("--set", item)]
        proposal_run = timed_run([*cli, "run", str(profile), "--no-progress", *sets,
                                  "--set", "saving.output_name=proposal"], env)
    levers = {}
    if args.each_lever:
        for name, sets in lever_runs(args.precision):
            items = [arg for item in sets for arg in ("--set", item)]
            levers[name] = timed_run([*cli, "run", str(profile), "--no-progress", *items,
                                      "--set", f"saving.output_name={name}"], env)
    report.update(predicted=predicted, real=real, fp8=fp8, budget=budget,
                  proposals=proposals, proposal_run=proposal_run, levers=levers)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    gib = 2**30
    eta_real = real["wall_s"]
    on_gpu = predicted["device"].startswith("cuda")
    peak = "peak_reported" if on_gpu else "peak_rss"
    for run in (real, fp8, proposal_run):
        if run is not None:
            run["peak"] = run[peak]
    rows = [
        (f"peak {'VRAM' if on_gpu else 'memory'} (GiB)", predicted["peak_memory_bytes"] / gib,
         real["peak"] / gib),
        ("s/step", predicted["seconds_per_step"], real["s_per_step"]),
        ("time to first step (s)", predicted["first_step_seconds"], real["first_step_s"]),
        (f"whole run of {args.steps} steps (s)", predicted["eta_seconds"], eta_real)]
    print(f"{args.family} at {args.resolution} px, mixed_precision {args.precision}, "
          f"{args.steps} steps")
    print("| | predicted | real | error |\n|---|---|---|---|")
    for name, guess, value in rows:
        error = f"{100 * (guess - value) / value:+.0f} %" if value else "-"
        print(f"| {name} | {guess:.2f} | {value:.2f} | {error} |")
    print(f"\nfp8_base: peak {fp8['peak'] / gib:.2f} GiB against {real['peak'] / gib:.2f}"
          f" GiB ({(real['peak'] - fp8['peak']) / gib:.2f} GiB less), "
          f"{fp8['s_per_step']:.2f} s/step against {real['s_per_step']:.2f}")
    print(f"\nbudget {budget / gib:.2f} GiB (75 % of the real peak):")
    for p in proposals:
        print(f"  {' '.join(p['set'])}: {p['seconds_per_step']} s/step, "
              f"{(p['peak_memory_bytes'] or 0) / gib:.2f} GiB, fits {p['fits']} {p['note']}")
    if proposal_run is not None:
        # on CUDA the run needs its context beside the allocator's peak, which calibrate
        # keeps out of a budget given to it (CUDA_CONTEXT_BYTES)
        needed = proposal_run["peak"] + (512 * 2**20 if on_gpu else 0)
        print(f"the real run with it: peak {proposal_run['peak'] / gib:.2f} GiB"
              f"{' + 0.5 GiB CUDA context' if on_gpu else ''} "
              f"({'under' if needed <= budget else 'OVER'} the budget), "
              f"{proposal_run['s_per_step']:.2f} s/step")
    if levers:
        print("\n| lever (alone) | peak (GiB) | s/step |\n|---|---|---|")
        print(f"| none | {real['peak'] / gib:.2f} | {real['s_per_step']:.2f} |")
        for name, run in levers.items():
            value = run["peak_reported"] if on_gpu else run["peak_rss"]
            print(f"| {name} | {value / gib:.2f} | {run['s_per_step']:.2f} |")
    return 0


def levers_table(profile: Path, cli: list[str], env: dict, args: argparse.Namespace) -> int:
    """The plain run and each lever alone, one after another: peak RSS (on CUDA the run's
    allocator peak) and s/step, as a Markdown table."""
    gib = 2**30
    rows = [("none", timed_run([*cli, "run", str(profile), "--no-progress"], env))]
    for name, sets in lever_runs(args.precision):
        items = [arg for item in sets for arg in ("--set", item)]
        rows.append((name, timed_run([*cli, "run", str(profile), "--no-progress", *items,
                                      "--set", f"saving.output_name={name}"], env)))
    if args.json:
        print(json.dumps({"family": args.family, "resolution": args.resolution,
                          "precision": args.precision, "runs": dict(rows)}, indent=1))
        return 0
    print(f"{args.family} at {args.resolution} px, mixed_precision {args.precision}, "
          f"{args.steps} steps, each lever alone")
    print("| lever | peak (GiB) | s/step | first step (s) |\n|---|---|---|---|")
    for name, run in rows:
        peak = run["peak_reported"] or run["peak_rss"]
        print(f"| {name} | {peak / gib:.2f} | {run['s_per_step']:.2f} | "
              f"{run['first_step_s']:.1f} |")
    return 0


def lever_runs(precision: str) -> list[tuple[str, list[str]]]:
    """Each memory or speed lever alone, as ``--set`` items (the profile caches latents)."""
    runs = [("gradient_checkpointing", ["training.gradient_checkpointing=true"]),
            ("fp8_base", ["training.fp8_base=true"]),
            ("fp8_base_unet", ["training.fp8_base_unet=true"]),
            ("AdamW8bit", ["optimizer.optimizer_type=AdamW8bit"]),
            ("cpu_offload_checkpointing", ["training.gradient_checkpointing=true",
                                           "training.cpu_offload_checkpointing=true"]),
            ("torch_compile", ["training.torch_compile=true"])]
    if precision == "bf16":
        runs.insert(4, ("full_bf16", ["training.full_bf16=true"]))
    if precision == "fp16":
        runs.insert(4, ("full_fp16", ["training.full_fp16=true",
                                      "optimizer.optimizer_type=AdamW8bit"]))
    return runs


if __name__ == "__main__":
    raise SystemExit(main())
