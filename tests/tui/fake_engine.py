"""A stand-in for `lora-train run` (no torch, starts in a blink) for runner tests.

    python fake_engine.py EVENTS_FILE RUN_DIR [--ignore-sigint] [--steps N]

It writes what the engine writes: ``run.json`` (through lora_core's own status code), the
run in the state folder's list, and the event stream to both EVENTS_FILE and the run
folder's ``events.jsonl``; a step every 0.1 s. SIGINT behaves like the engine's first
Ctrl+C: a state is saved, ``run_finished(interrupted)`` is said and it exits 130 (unless
``--ignore-sigint``, to test the escalation to SIGKILL).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from lora_core.events import EventBus, JsonLinesSink, RunFinished, RunStarted, StateSaved, StepEnded
from lora_core.runs.status import StatusRecorder, new_status, register_run, write_status


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("events", type=Path)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--ignore-sigint", action="store_true")
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    run_dir = args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    status = new_status(run_dir, "fake", run_dir / "profile.toml", None,
                        total_steps=args.steps, total_epochs=1)
    write_status(status)
    register_run(run_dir)
    bus = EventBus()
    for path in (args.events, run_dir / "events.jsonl"):
        bus.add(JsonLinesSink(open(path, "a", encoding="utf-8"), close=True))  # noqa: SIM115
    bus.add(StatusRecorder(status))
    stop = []
    signal.signal(signal.SIGINT, signal.SIG_IGN if args.ignore_sigint else
                  lambda *_: stop.append(True))
    bus.emit(RunStarted(str(run_dir), "p.toml", "fake", str(run_dir / "train.log"),
                        {"max_train_steps": args.steps}))
    print("fake engine: started", file=sys.stderr, flush=True)
    for step in range(1, args.steps + 1):
        if stop:
            state = run_dir / "states" / f"step-{step - 1}"
            state.mkdir(parents=True)
            bus.emit(StateSaved(str(state), step - 1, 1))
            final = str(run_dir / "fake-interrupted.safetensors")
            bus.emit(RunFinished([final], final, step - 1, 1.0, interrupted=True))
            return 130
        time.sleep(0.1)
        bus.emit(StepEnded(step=step, total_steps=args.steps, epoch=1, total_epochs=1,
                           loss=0.1, avg_loss=0.1, lrs={"unet": 1e-4}, it_per_s=10.0,
                           eta_s=1.0))
    bus.emit(RunFinished([], "", args.steps, 1.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
