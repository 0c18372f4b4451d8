"""Runs seen from outside: ``status`` lists them, ``stop`` asks one to stop, ``signal`` asks
one to save or sample now (through the run registry, ``lora_core.runs``)."""

from __future__ import annotations

from pathlib import Path

from lora_core.durations import format_age
from lora_core.errors import LoraError


def cmd_status(run_dir: Path | None, as_json: bool) -> int:
    """Runs on this machine (or one run) under column headers: state, name, step, age,
    folder; a failed run's message, a crashed one's last log lines (tracebacks left out:
    they are in the log)."""
    import dataclasses
    import json
    import time

    from lora_core.runs.status import list_runs, log_tail, read_status

    runs = [read_status(run_dir)] if run_dir is not None \
        else list_runs(limit=20, unreadable=True)
    if as_json:
        print(json.dumps([dataclasses.asdict(r) | {"resumable": r.resumable} for r in runs],
                         indent=2))
        return 0
    if not runs:
        print("no runs recorded on this machine yet")
        return 0
    print(f"{'STATE':<9} {'RUN':<24} {'STEP':<11} {'AGE':>6}  FOLDER")
    for r in runs:
        steps = f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step)
        age = format_age(time.time() - (r.started_at if r.active else r.updated_at))
        print(f"{r.status:<9} {r.output_name:<24} {steps:<11} {age:>6}  {r.run_dir}")
        if r.best_file:
            print(f"{'':10}best: {r.best_file} (validation loss "
                  f"{r.best_validation_loss:.5g}, a copy of {Path(r.best_source).name})")
        if r.grid_file:
            print(f"{'':10}sample grid: {r.grid_file}")
        if r.status == "finished" and r.message:
            print(f"{'':10}{r.message}")
        if r.resumable:
            print(f"{'':10}lora-train resume can continue it from step "
                  f"{r.last_state_step or r.step}")
        if r.status in ("failed", "unreadable") and r.message:
            print(f"{'':10}{r.message}")
        elif r.status == "crashed":
            if r.message:
                print(f"{'':10}{r.message}")
            for line in log_tail(r.path, 5 if run_dir is None else 20, tracebacks=False):
                print(f"{'':10}| {line}")
    return 0


def cmd_stop(run_dir: Path, force: bool) -> int:
    from lora_core.runs.status import read_status, request_stop

    status = read_status(run_dir)
    if not request_stop(status, force=force):
        raise LoraError(f"the run in {run_dir} is not running here (it is {status.status})",
                        "`lora-train status` lists the runs on this machine")
    print("killed" if force else "asked to stop: it finishes its step, saves and exits")
    return 0


def cmd_signal(run_dir: Path, save_now: bool, sample_now: bool) -> int:
    """Save now / sample now: the run acts after its current step."""
    from lora_core.runs.requests import SAMPLE_NOW, SAVE_NOW, request_action
    from lora_core.runs.status import read_status

    if not (save_now or sample_now):
        raise LoraError("say what the run should do now",
                        "add --save-now (a LoRA file of this step) or --sample-now (sample "
                        "images), or both")
    status = read_status(run_dir)
    if not status.active:
        raise LoraError(f"the run in {run_dir} is not running (it is {status.status})",
                        "`lora-train status` lists the runs on this machine")
    asked = [action for action, wanted in ((SAVE_NOW, save_now), (SAMPLE_NOW, sample_now))
             if wanted]
    for action in asked:
        request_action(run_dir, action)
    print(f"asked {' and '.join(asked)}: the run acts after its current step "
          f"(files named as a step's: {status.output_name}-stepNNNNNNNN.safetensors, "
          f"{status.output_name}_NNNNNN_NN_TIME.png)")
    return 0


def cmd_grid(run_dir: Path, output: Path | None) -> int:
    """Rebuild a run's sample grid from its events (one row per prompt, one column per
    sampling point)."""
    from lora_core.runs.folders import EVENTS_FILE
    from lora_core.runs.status import read_status
    from lora_core.saving.sample_grid import grid_path, write_grid

    run_dir = Path(run_dir)
    events = run_dir / EVENTS_FILE
    if not events.is_file():
        raise LoraError(f"{run_dir} is not a run folder: it has no {EVENTS_FILE}",
                        "give the folder `lora-train status` lists for the run")
    status = read_status(run_dir)
    # A run folder is <output_dir>/<runs folder>/<run>: its samples are in output_dir.
    target = output or grid_path(run_dir.resolve().parent.parent, status.output_name)
    grid = write_grid(events, target)
    if grid is None:
        raise LoraError(f"the run in {run_dir} made no sample images yet",
                        "set `[sample] sample_prompts` and sample_every_n_epochs (or "
                        "_steps) for the next run, or ask this one with `lora-train signal "
                        f"{run_dir} --sample-now`")
    print(f"{grid.path}: {grid.rows} prompt(s) x {grid.columns} sampling point(s), "
          f"{grid.width_px}x{grid.height_px} px")
    return 0


def add_parsers(sub) -> None:
    grid = sub.add_parser("grid", help="rebuild a run's sample grid (one row per prompt, one "
                          "column per sampling point)")
    grid.add_argument("run_dir", type=Path, metavar="RUN_FOLDER")
    grid.add_argument("-o", "--output", type=Path, metavar="FILE",
                      help="write it here (default: <output_name>_grid.png in the sample "
                      "folder)")
    grid.set_defaults(handler=lambda args: cmd_grid(args.run_dir, args.output))
    status = sub.add_parser("status", help="list runs on this machine: running, finished, "
                            "stopped, failed or crashed")
    status.add_argument("run_dir", type=Path, nargs="?", metavar="RUN_FOLDER")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=lambda args: cmd_status(args.run_dir, args.json))
    stop = sub.add_parser("stop", help="ask a running run to stop (it saves first)")
    stop.add_argument("run_dir", type=Path, metavar="RUN_FOLDER")
    stop.add_argument("--force", action="store_true", help="kill it at once (SIGKILL)")
    stop.set_defaults(handler=lambda args: cmd_stop(args.run_dir, args.force))
    signal_ = sub.add_parser("signal", help="ask a running run to save a LoRA file or make "
                             "sample images after its current step")
    signal_.add_argument("run_dir", type=Path, metavar="RUN_FOLDER")
    signal_.add_argument("--save-now", action="store_true",
                         help="save a LoRA file of this step (NAME-stepNNNNNNNN.safetensors)")
    signal_.add_argument("--sample-now", action="store_true",
                         help="make the sample images of [sample] sample_prompts now")
    signal_.set_defaults(handler=lambda args: cmd_signal(args.run_dir, args.save_now,
                                                          args.sample_now))
