"""`lora-train`: the headless command line for scripts, queues and the wizard.

    lora-train run PROFILE [--set section.key=value ...] [--events FILE|-]
    lora-train check PROFILE [--set ...]
    lora-train rerun-last [--events FILE|-]
    lora-train queue PROFILE... [--continue-on-error]
    lora-train fields

Argument parsing lives here and nowhere else. Errors print a message and a hint, never a
traceback (that goes to the log file), and exit with code 2 for bad input, 1 for a failed
run and 130 for a run stopped with Ctrl+C (what was trained is saved).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from lora_core.errors import LoraError
from lora_core.events import EventBus, JsonLinesSink, LogLine, RunFailed, WarningIssued
from lora_core.paths import state_dir

EXIT_INTERRUPTED = 130
log = logging.getLogger("lora_core")


def _setup_logging() -> Path:
    """Log everything to a file; the screen gets only events and messages."""
    path = state_dir() / "lora-train.log"
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _add_log_file(path)
    except OSError:
        root.addHandler(logging.NullHandler())  # an unwritable state folder must not stop us
    logging.captureWarnings(True)
    return path


def _add_log_file(path: Path) -> None:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


class LogToEvents(logging.Handler):
    """The engine's own log warnings become warning events, info lines log events, so a UI
    following the stream sees them (errors arrive as run_failed instead)."""

    def __init__(self, bus: EventBus) -> None:
        super().__init__(logging.INFO)
        self.bus = bus

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.WARNING:
            self.bus.emit(WarningIssued(record.getMessage()))
        elif record.levelno == logging.INFO:
            self.bus.emit(LogLine("info", record.getMessage()))


def _print_error(exc: LoraError) -> None:
    print(f"error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)


class StopFlag:
    """Ctrl+C (or SIGTERM) once: stop after the current step and save. Twice: abort."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self) -> bool:
        return self.event.is_set()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            if self.event.is_set():
                raise KeyboardInterrupt
            self.event.set()
            print("\nstopping after this step and saving what was trained; press Ctrl+C "
                  "again to abort without saving", file=sys.stderr, flush=True)

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def _open_event_sinks(bus: EventBus, events_arg: str | None) -> list[JsonLinesSink]:
    sinks = []
    if events_arg == "-":
        sinks.append(JsonLinesSink(sys.stdout))
    elif events_arg:
        stream = open(events_arg, "a", encoding="utf-8")  # noqa: SIM115 (closed by the sink)
        sinks.append(JsonLinesSink(stream, close=True))
    for sink in sinks:
        bus.add(sink)
    return sinks


def cmd_run(profile_path: Path, overrides: list[str], events_arg: str | None,
            progress: bool = True) -> int:
    """Run one profile. Every failure, early or late, ends the event stream with run_failed."""
    from lora_core.profile_io import load_profile
    from lora_core.progress import ProgressPrinter
    from lora_core.training.session import is_main_process, run_training, start_run

    bus = EventBus()
    main = is_main_process()  # under accelerate launch, only rank 0 talks and writes
    if progress and main:
        bus.add(ProgressPrinter(use_bar=None))
    sinks = _open_event_sinks(bus, events_arg if main else None)
    stop = StopFlag()
    stop.install()
    log_path = state_dir() / "lora-train.log"
    bridge = LogToEvents(bus)
    logging.getLogger("lora_core").addHandler(bridge)
    try:
        profile = load_profile(profile_path, overrides)
        started = start_run(profile, profile_path)
        if started.folder is not None:
            log_path = started.folder.log
            _add_log_file(log_path)
            events_file = open(started.folder.events, "a", encoding="utf-8")  # noqa: SIM115
            sinks.append(JsonLinesSink(events_file, close=True))
            bus.add(sinks[-1])
        result = run_training(profile, profile_path, started, bus, stop)
        return EXIT_INTERRUPTED if result.interrupted else 0
    except LoraError as exc:
        log.exception("run failed")
        bus.emit(RunFailed(exc.message, exc.hint, str(log_path)))
        _print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.warning("aborted with a second Ctrl+C")
        bus.emit(RunFailed("aborted with a second Ctrl+C; nothing more was saved", "",
                           str(log_path)))
        print("aborted; nothing more was saved", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug, not bad input: short message, traceback in the log
        log.exception("internal error")
        bus.emit(RunFailed(f"internal error: {type(exc).__name__}: {exc}",
                           f"the full traceback is in {log_path}", str(log_path)))
        print(f"error: internal error: {type(exc).__name__}: {exc}\n"
              f"the full traceback is in {log_path}", file=sys.stderr)
        return 1
    finally:
        logging.getLogger("lora_core").removeHandler(bridge)
        for sink in sinks:
            sink.close()


def cmd_check(profile_path: Path, overrides: list[str]) -> int:
    from lora_core.dataset.preflight import run_preflight
    from lora_core.dataset.report import render_check_report
    from lora_core.profile_io import load_profile

    try:
        profile = load_profile(profile_path, overrides)
        preflight = run_preflight(profile, strict=False)
    except LoraError as exc:
        log.exception("check failed")
        _print_error(exc)
        return exc.exit_code
    print(render_check_report(preflight.scan, preflight.plan, profile, preflight.problems,
                              preflight.advisories))
    return 2 if preflight.problems else 0


def cmd_rerun_last(events_arg: str | None) -> int:
    from lora_core.saving.runs import last_run

    try:
        record = last_run()
    except LoraError as exc:
        _print_error(exc)
        return exc.exit_code
    print(f"running the profile of {record['run_dir']} again", file=sys.stderr)
    return cmd_run(Path(record["profile"]), [], events_arg)


def cmd_fields(markdown: bool = False) -> int:
    from lora_core.profile import field_docs

    if markdown:
        from lora_core.profile_reference import reference_markdown

        sys.stdout.write(reference_markdown())
        return 0

    current = None
    for section, key, type_text, default, doc in field_docs():
        if section != current:
            print(f"\n[{section}]")
            current = section
        shown = "(unset)" if default is None else repr(default)
        print(f"  {key} = {shown}    # {type_text}\n      {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-train",
                                     description="Train LoRA adapters for Stable Diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train from a profile")
    run.add_argument("profile", type=Path)
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="SECTION.KEY=VALUE", help="override a profile field")
    run.add_argument("--events", metavar="FILE|-", help="also write the JSON event stream")
    run.add_argument("--no-progress", action="store_true", help="print no progress")
    check = sub.add_parser("check", help="check the dataset and show the plan; loads no model")
    check.add_argument("profile", type=Path)
    check.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="SECTION.KEY=VALUE")
    rerun = sub.add_parser("rerun-last", help="run the most recent run's profile again")
    rerun.add_argument("--events", metavar="FILE|-")
    queue = sub.add_parser("queue", help="run several profiles one after another")
    queue.add_argument("profiles", type=Path, nargs="+")
    queue.add_argument("--continue-on-error", action="store_true",
                       help="go on with the next profile when one fails")
    fields = sub.add_parser("fields", help="list every profile field with its default and "
                            "meaning")
    fields.add_argument("--markdown", action="store_true",
                        help="print the reference page (docs/profile-reference.md)")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Base models are always local: never let a library reach for the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    log_path = _setup_logging()
    try:
        return _dispatch(args)
    except LoraError as exc:
        log.exception("failed")
        _print_error(exc)
        return exc.exit_code
    except Exception as exc:  # a bug, not bad input: short message, traceback in the log
        log.exception("internal error")
        print(f"error: internal error: {type(exc).__name__}: {exc}\n"
              f"the full traceback is in {log_path}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return cmd_run(args.profile, args.overrides, args.events, not args.no_progress)
    if args.command == "check":
        return cmd_check(args.profile, args.overrides)
    if args.command == "rerun-last":
        return cmd_rerun_last(args.events)
    if args.command == "queue":
        from lora_core.queue import run_queue

        return run_queue(args.profiles, args.continue_on_error)
    return cmd_fields(args.markdown)


if __name__ == "__main__":
    sys.exit(main())
