"""Training runs: ``run``, ``resume``, ``rerun-last`` and ``queue``, in this process or,
with more than one process asked for, through accelerate's launcher."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lora_core.cli.common import (
    EXIT_INTERRUPTED,
    LogToEvents,
    StopFlag,
    add_log_file,
    log,
    open_event_sinks,
    print_error,
)
from lora_core.errors import LoraError, ProfileError
from lora_core.events import EventBus, JsonLinesSink, RunFailed
from lora_core.paths import state_dir


def cmd_run(profile_path: Path, overrides: list[str], events_arg: str | None,
            progress: bool = True) -> int:
    """Run one profile. Every failure, early or late, ends the event stream with run_failed."""

    def start():
        from lora_core.profile_load import load_profile
        from lora_core.session import start_run

        profile = load_profile(profile_path, overrides)
        return profile, profile_path, start_run(profile, profile_path)

    return _run(start, events_arg, progress)


def cmd_resume(run_dir: Path, overrides: list[str], events_arg: str | None,
               progress: bool = True) -> int:
    """Continue a stopped, failed or crashed run from its newest state."""

    def start():
        from lora_core.session import start_resume

        profile, started = start_resume(run_dir, overrides)
        return profile, started.folder.profile if started.folder else None, started

    return _run(start, events_arg, progress)


def _run(start, events_arg: str | None, progress: bool) -> int:
    from lora_core.progress import ProgressPrinter
    from lora_core.runs.status import StatusRecorder
    from lora_core.session import is_main_process, run_training

    bus = EventBus()
    main = is_main_process()  # under accelerate launch, only rank 0 talks and writes
    if progress and main:
        bus.add(ProgressPrinter(use_bar=None))
    sinks = open_event_sinks(bus, events_arg if main else None)
    stop = StopFlag()
    stop.install()
    log_path = state_dir() / "lora-train.log"
    bridge = LogToEvents(bus)
    logging.getLogger("lora_core").addHandler(bridge)
    from lora_core.notify import EndingRecorder

    ending = EndingRecorder()
    bus.add(ending)
    profile = started = None
    try:
        profile, profile_path, started = start()
        if started.folder is not None:
            log_path = started.folder.log
            add_log_file(log_path)
            events_file = open(started.folder.events, "a", encoding="utf-8")  # noqa: SIM115
            sinks.append(JsonLinesSink(events_file, close=True))
            bus.add(sinks[-1])
        if started.status is not None:
            recorder = StatusRecorder(started.status)
            bus.add(recorder)
            stop.on_first = recorder.mark_stopping
        result = run_training(profile, profile_path, started, bus, stop)
        return EXIT_INTERRUPTED if result.interrupted else 0
    except LoraError as exc:
        log.exception("run failed")
        bus.emit(_failure_event(exc, profile, started, log_path))
        print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.warning("aborted with a second Ctrl+C")
        bus.emit(RunFailed("aborted with a second Ctrl+C; nothing more was saved", "",
                           str(log_path), **_resume_fields(started)))
        print("aborted; nothing more was saved", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug, not bad input: short message, traceback in the log
        log.exception("internal error")
        bus.emit(RunFailed(f"internal error: {type(exc).__name__}: {exc}",
                           f"the full traceback is in {log_path}", str(log_path),
                           **_resume_fields(started)))
        print(f"error: internal error: {type(exc).__name__}: {exc}\n"
              f"the full traceback is in {log_path}", file=sys.stderr)
        return 1
    finally:
        if main and profile is not None and ending.ending is not None:
            _notify(profile.notify, ending.ending, bus)
        stop.done = True
        logging.getLogger("lora_core").removeHandler(bridge)
        for sink in sinks:
            sink.close()


def _notify(section, ending, bus: EventBus) -> None:
    """Tell ``[notify]`` how the run ended. A failing notification is a warning in the
    events and the log; it never changes the run's outcome or exit code."""
    from lora_core.events import NotificationSent, WarningIssued
    from lora_core.notify import send

    try:
        outcomes = send(section, ending)
    except Exception as exc:  # a bug in a notification must not turn a run into a failure
        log.exception("notification failed")
        bus.emit(WarningIssued(f"notification failed: {type(exc).__name__}; see the log"))
        return
    for outcome in outcomes:
        if outcome.problem is None:
            log.info("notified %s %s (%s)", outcome.channel, outcome.destination,
                     ending.status)
            bus.emit(NotificationSent(outcome.channel, ending.status, outcome.destination))
        else:
            # A warning event too, through the LogToEvents bridge.
            log.warning("notification failed: %s", outcome.problem)
            print(f"warning: notification failed: {outcome.problem}", file=sys.stderr)


def _resume_fields(started) -> dict:
    """The run folder of a failed run, and whether it has a state to resume from."""
    if started is None or started.folder is None:
        return {}
    from lora_core.saving.train_state import latest_state

    return {"run_dir": str(started.folder.path),
            "resumable": latest_state(started.folder.path) is not None}


def _failure_event(exc: LoraError, profile, started, log_path: Path) -> RunFailed:
    """run_failed with what a UI needs to offer the fix: the kind of failure, and for an
    out-of-memory error the lighter settings to retry with (also put in the hint)."""
    overrides, description, hint = [], "", exc.hint
    if exc.kind == "out_of_memory" and profile is not None:
        from lora_core.lighter import lighter_setting

        lighter = lighter_setting(profile)
        if lighter is not None:
            overrides, description = lighter.overrides, lighter.description
            sets = " ".join(f"--set {o}" for o in overrides)
            exc.hint = hint = f"{hint}; to retry with {description}, run again with {sets}"
    return RunFailed(exc.message, hint, str(log_path), kind=exc.kind,
                     retry_overrides=overrides, retry_description=description,
                     **_resume_fields(started))


def cmd_rerun_last(events_arg: str | None) -> int:
    from lora_core.runs.folders import last_run

    try:
        record = last_run()
    except LoraError as exc:
        print_error(exc)
        return exc.exit_code
    print(f"running the profile of {record['run_dir']} again", file=sys.stderr)
    return cmd_run(Path(record["profile"]), [], events_arg)


def _process_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-processes", type=int, metavar="N",
                        help="train in N processes, one per GPU, through accelerate's "
                        "launcher (default: the profile's [training] num_processes)")
    parser.add_argument("--gpu-ids", metavar="IDS", help="the GPUs for them, like 0,1 "
                        "(default: the profile's [training] gpu_ids)")


def _launch_if_asked(args: argparse.Namespace) -> int | None:
    """``run`` / ``resume`` with more than one process wanted and no launcher yet: start
    them (lora_core.launch) and return the exit code; None to run in this process."""
    from lora_core.session import process_count

    if process_count() > 1:
        return None  # already one of the launched processes
    if args.num_processes is not None and args.num_processes < 1:
        raise ProfileError(f"--num-processes {args.num_processes} must be at least 1",
                           "give the number of GPUs to train on, like --num-processes 2")
    from lora_core.profile_load import load_profile
    from lora_core.runs.folders import PROFILE_FILE

    path = args.profile if args.command == "run" else Path(args.run_dir) / PROFILE_FILE
    try:
        profile = load_profile(path, args.overrides)
    except LoraError:
        return None  # the run reports it, with its events
    training = profile.training
    if args.num_processes is not None:
        training.num_processes = args.num_processes
    if args.gpu_ids is not None:
        training.gpu_ids = args.gpu_ids
    wanted, gpu_ids = training.num_processes, training.gpu_ids
    if wanted <= 1:
        return None
    # What only this process can see (the ranks see their GPUs renumbered): enough GPUs,
    # the named ones there; before anything is started.
    from lora_core.checks.machine import ProbedMachine, machine_problems
    from lora_core.checks.problem import errors_of, raise_for_errors
    from lora_core.checks.rules import profile_rules

    problems = [p for p in [*profile_rules(profile), *machine_problems(profile,
                                                                      ProbedMachine())]
                if p.section == "training" and p.key in ("num_processes", "gpu_ids")]
    if errors_of(problems):
        raise_for_errors(problems, "the processes asked for have", "change --num-processes / "
                         "--gpu-ids or [training] num_processes / gpu_ids", ProfileError)
    from lora_core.launch import relaunch

    target = str(args.profile if args.command == "run" else args.run_dir)
    cli_args = [args.command, target]
    for override in [*args.overrides, f"training.num_processes={wanted}"]:
        cli_args += ["--set", override]
    if args.events:
        cli_args += ["--events", args.events]
    if args.no_progress:
        cli_args.append("--no-progress")
    return relaunch(wanted, gpu_ids, cli_args)


def _run_or_launch(args: argparse.Namespace) -> int:
    launched = _launch_if_asked(args)
    if launched is not None:
        return launched
    if args.command == "run":
        return cmd_run(args.profile, args.overrides, args.events, not args.no_progress)
    return cmd_resume(args.run_dir, args.overrides, args.events, not args.no_progress)


def _queue(args: argparse.Namespace) -> int:
    from lora_core.queue import run_queue

    return run_queue(args.profiles, args.continue_on_error)


def cmd_calibrate(profile_path: Path, overrides: list[str], budget_text: str | None,
                  steps: int, as_json: bool, again: bool, timeout_s: float | None = None,
                  compare_compile: bool = False) -> int:
    """Measure the run's time and memory before it (``lora_core.calibrate``). Exit code 1
    when there is a budget and neither the profile nor any proposal fits it."""
    import json

    from lora_core.calibrate import calibrate, parse_size, render

    budget = parse_size(budget_text) if budget_text is not None else None
    import signal

    def stop(signum, frame):  # the wizard closed the dialog: the measurement stops with it
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)

    def progress(text: str) -> None:  # on stderr: --json's stdout stays one object
        print(f"{text} ...", file=sys.stderr, flush=True)

    result = calibrate(profile_path, overrides, budget=budget, steps=steps, again=again,
                       timeout_s=timeout_s, compare_compile=compare_compile,
                       progress=progress)
    print(json.dumps(result.as_json(), indent=1) if as_json else render(result))
    if result.budget_bytes is None:
        return 0
    return 0 if result.fits or any(p.fits for p in result.proposals) else 1


def add_parsers(sub) -> None:
    calibrate = sub.add_parser(
        "calibrate", help="measure a run's time and memory before it (a few real steps, "
        "nothing saved) and the settings that make it fit a memory budget")
    calibrate.add_argument("profile", type=Path)
    calibrate.add_argument("--set", dest="overrides", action="append", default=[],
                           metavar="SECTION.KEY=VALUE", help="override a profile field")
    calibrate.add_argument("--memory-budget", metavar="SIZE",
                           help="the memory the run may use: bytes, or 12GB / 11.5GiB / "
                           "900MiB (default on a GPU: its free memory; on a CPU: none)")
    calibrate.add_argument("--steps", type=int, default=6,
                           help="training steps to measure after 2 warm-up steps (6)")
    calibrate.add_argument("--json", action="store_true", help="print one JSON object")
    calibrate.add_argument("--again", action="store_true",
                           help="measure anew instead of showing a remembered result")
    calibrate.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                           help="the longest one measurement may take (1800)")
    calibrate.add_argument("--compare-compile", action="store_true",
                           help="also measure with torch_compile (a profile that compiles is "
                           "always measured without it too) and say whether it pays off")
    calibrate.set_defaults(handler=lambda args: cmd_calibrate(
        args.profile, args.overrides, args.memory_budget, args.steps, args.json, args.again,
        args.timeout, args.compare_compile))
    run = sub.add_parser("run", help="train from a profile")
    run.add_argument("profile", type=Path)
    resume = sub.add_parser("resume", help="continue a stopped, failed or crashed run from "
                            "its last saved state")
    resume.add_argument("run_dir", type=Path, metavar="RUN_FOLDER")
    for training in (run, resume):
        training.add_argument("--set", dest="overrides", action="append", default=[],
                              metavar="SECTION.KEY=VALUE", help="override a profile field")
        training.add_argument("--events", metavar="FILE|-",
                              help="also write the JSON event stream")
        training.add_argument("--no-progress", action="store_true", help="print no progress")
        _process_options(training)
        training.set_defaults(handler=_run_or_launch)
    rerun = sub.add_parser("rerun-last", help="run the most recent run's profile again")
    rerun.add_argument("--events", metavar="FILE|-")
    rerun.set_defaults(handler=lambda args: cmd_rerun_last(args.events))
    queue = sub.add_parser("queue", help="run several profiles one after another")
    queue.add_argument("profiles", type=Path, nargs="+")
    queue.add_argument("--continue-on-error", action="store_true",
                       help="go on with the next profile when one fails")
    queue.set_defaults(handler=_queue)
