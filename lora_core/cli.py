"""`lora-train`: the headless command line for scripts, queues and the wizard.

    lora-train run PROFILE [--set section.key=value ...] [--events FILE|-]
    lora-train resume RUN_FOLDER [--set ...] [--events FILE|-]
    lora-train status [RUN_FOLDER] [--json]
    lora-train stop RUN_FOLDER [--force]
    lora-train check PROFILE [--set ...]
    lora-train rerun-last [--events FILE|-]
    lora-train queue PROFILE... [--continue-on-error]
    lora-train fields
    lora-train inspect LORA [--json]
    lora-train edit LORA [--title ...] [--description ...] [--cover IMG] [--clear FIELD]
    lora-train resize LORA (--rank N | --dynamic sv_fro|sv_ratio|sv_cumulative --param X) -o OUT
    lora-train merge A.safetensors:0.7 B.safetensors:0.5 --rank N -o OUT
    lora-train caption DIR --tagger MODEL [--overwrite|--append] [--dry-run] | --undo
    lora-train tags DIR [--add T] [--remove T] [--replace a=b] [--list] | --undo
    lora-train prepare SRC --name NAME (--repeats N | --target-steps S) -o DIR
    lora-train import SOURCE|- [-o PROFILE.toml]
    lora-train export PROFILE --sd-scripts DIR

Argument parsing lives here and nowhere else. Errors print a message and a hint, never a
traceback (that goes to the log file), and exit with code 2 for bad input, 1 for a failed
run and 130 for a run stopped with Ctrl+C (what was trained is saved).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from lora_core.durations import format_age
from lora_core.errors import LoraError, ProfileError
from lora_core.events import EventBus, JsonLinesSink, LogLine, RunFailed, WarningIssued
from lora_core.paths import state_dir

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a Unix tool killed by a closed pipe returns
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
    """Ctrl+C (or SIGTERM) once: stop after the current step and save. Twice: abort.

    A second Ctrl+C that arrives while a file is being written (inside :meth:`saving`)
    waits for the write to finish, then aborts: a save is never cut in half."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._saving = 0
        self._abort_after_save = False
        self.on_first = None  # called once on the first stop request (run.json: stopping)
        self.done = False

    def __call__(self) -> bool:
        return self.event.is_set()

    @contextlib.contextmanager
    def saving(self):
        self._saving += 1
        try:
            yield
        finally:
            self._saving -= 1
            if self._saving == 0 and self._abort_after_save:
                self._abort_after_save = False
                raise KeyboardInterrupt

    def handle(self, signum=None, frame=None) -> None:
        if self.done:
            return  # the run is over and its files are written: a late Ctrl+C changes nothing
        if not self.event.is_set():
            self.event.set()
            if self.on_first is not None:
                self.on_first()
            print("\nstopping after this step and saving what was trained; press Ctrl+C "
                  "again to abort without saving", file=sys.stderr, flush=True)
        elif self._saving:
            self._abort_after_save = True
            print("\nfinishing the file being written, then aborting", file=sys.stderr,
                  flush=True)
        else:
            raise KeyboardInterrupt

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)


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
    from lora_core.saving.run_status import StatusRecorder
    from lora_core.session import is_main_process, run_training

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
    profile = started = None
    try:
        profile, profile_path, started = start()
        if started.folder is not None:
            log_path = started.folder.log
            _add_log_file(log_path)
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
        _print_error(exc)
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
        stop.done = True
        logging.getLogger("lora_core").removeHandler(bridge)
        for sink in sinks:
            sink.close()


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


def cmd_status(run_dir: Path | None, as_json: bool) -> int:
    """Runs on this machine (or one run) under column headers: state, name, step, age,
    folder; a failed run's message, a crashed one's last log lines (tracebacks left out:
    they are in the log)."""
    import dataclasses
    import json
    import time

    from lora_core.saving.run_status import list_runs, log_tail, read_status

    runs = [read_status(run_dir)] if run_dir is not None else list_runs(limit=20)
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
        if r.resumable:
            print(f"{'':10}lora-train resume can continue it from step "
                  f"{r.last_state_step or r.step}")
        if r.status == "failed" and r.message:
            print(f"{'':10}{r.message}")
        elif r.status == "crashed":
            if r.message:
                print(f"{'':10}{r.message}")
            for line in log_tail(r.path, 5 if run_dir is None else 20, tracebacks=False):
                print(f"{'':10}| {line}")
    return 0


def cmd_stop(run_dir: Path, force: bool) -> int:
    from lora_core.saving.run_status import read_status, request_stop

    status = read_status(run_dir)
    if not request_stop(status, force=force):
        raise LoraError(f"the run in {run_dir} is not running here (it is {status.status})",
                        "`lora-train status` lists the runs on this machine")
    print("killed" if force else "asked to stop: it finishes its step, saves and exits")
    return 0


def cmd_signal(run_dir: Path, save_now: bool, sample_now: bool) -> int:
    """Save now / sample now: the run acts after its current step."""
    from lora_core.saving.run_requests import SAMPLE_NOW, SAVE_NOW, request_action
    from lora_core.saving.run_status import read_status

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


def cmd_check(profile_path: Path, overrides: list[str]) -> int:
    """Every check `run` makes before its first step, as a report on stdout; the problems
    that stop a run go last, to stderr, and make the exit code 2."""
    from lora_core.checks import check_profile
    from lora_core.checks.problem import errors_of
    from lora_core.checks.report import render_check_report, render_errors, render_notes
    from lora_core.profile_load import read_profile_file

    profile, problems = read_profile_file(profile_path, overrides)
    if errors_of(problems):
        notes = render_notes(problems) if len(errors_of(problems)) < len(problems) else []
        print("\n".join([f"Profile: {profile_path}", "", *notes, "" if notes else "",
                         "(the dataset and the model are checked once the problems below "
                         "are fixed)"]).replace("\n\n\n", "\n\n"))
    else:
        report = check_profile(profile)
        problems = problems + report.problems
        print(render_check_report(report.scan, report.plan, profile, problems,
                                  with_errors=not errors_of(problems)), end="")
    errors = errors_of(problems)
    if not errors:
        return 0
    sys.stdout.flush()
    print("\n" + "\n".join(render_errors(errors)) + "\n", file=sys.stderr)
    count = len(errors)
    print(f"error: {count} problem{'s' * (count != 1)} must be fixed before training "
          "(listed under Problems above)", file=sys.stderr)
    print("hint: fix the files or fields named there (lora-train never changes the "
          "dataset), then run `lora-train check` again", file=sys.stderr)
    return 2


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
    from lora_core.values import format_value

    if markdown:
        from lora_core.profile_reference import reference_markdown

        sys.stdout.write(reference_markdown())
        return 0

    current = None
    for section, key, type_text, default, doc in field_docs():
        if section != current:
            print(f"\n[{section}]")
            current = section
        shown = "(unset)" if default is None else format_value(default)
        print(f"  {key} = {shown}    # {type_text}\n      {doc}")
    return 0


def cmd_inspect(path: Path, as_json: bool) -> int:
    import json

    from lora_core.lora_tools.inspect import inspect_lora, render_inspect

    report = inspect_lora(path)
    print(json.dumps(report, indent=2) if as_json else render_inspect(report),
          end="\n" if as_json else "")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from lora_core.lora_tools.edit import edit_lora

    fields = {name: getattr(args, name) for name in ("title", "description", "author",
                                                     "keywords", "tags")
              if getattr(args, name) is not None}
    if not fields and not args.clear and args.cover is None:
        raise LoraError("nothing to change", "give --title, --description, --author, "
                        "--keywords, --tags, --cover or --clear FIELD")
    for line in edit_lora(args.lora, fields, args.clear, args.cover):
        print(line)
    return 0


def _merge_input(text: str) -> tuple[Path, float]:
    """``FILE[:WEIGHT]`` (a Windows drive letter's colon is not a weight)."""
    name, sep, weight = text.rpartition(":")
    if sep and name and not (len(name) == 1 and weight.startswith(("\\", "/"))):
        try:
            return Path(name), float(weight)
        except ValueError:
            raise LoraError(f"the weight in {text!r} is not a number",
                            "write FILE:WEIGHT, e.g. style.safetensors:0.7") from None
    return Path(text), 1.0


def cmd_factor(args: argparse.Namespace) -> int:
    import json

    from lora_core.lora_tools.factor import merge_loras, resize_lora

    if args.command == "resize":
        report = resize_lora(args.lora, args.output, args.rank, args.conv_rank, args.dynamic,
                             args.param, args.save_precision)
    else:
        report = merge_loras([_merge_input(text) for text in args.inputs], args.output,
                             args.rank, args.conv_rank, args.alpha, args.save_precision)
    print(json.dumps(report.as_json(), indent=2) if args.json else report.render(),
          end="\n" if args.json else "")
    return 0


def cmd_import(source: str, output: Path | None) -> int:
    from lora_core.importing import import_source
    from lora_core.profile_io import save_profile_data

    if source == "-":
        result = import_source("standard input", sys.stdin.read())
    else:
        result = import_source(Path(source))
    report = result.render()
    if output is None:
        import tomli_w

        sys.stdout.write(tomli_w.dumps(result.data))
        sys.stderr.write("\n" + report)
        return 0
    if Path(output).exists():
        raise LoraError(f"{output} exists already", "choose another name; an import never "
                        "replaces a file")
    save_profile_data(result.data, Path(output))
    print(report + f"\nWrote {output}; `lora-train check {output}` checks it, `lora-tui "
          f"{output}` opens it.")
    return 0


def cmd_export(profile_path: Path, folder: Path) -> int:
    from lora_core.importing.export import export_sd_scripts
    from lora_core.profile_load import load_profile

    written = export_sd_scripts(load_profile(profile_path), folder)
    print("Wrote:\n" + "".join(f"  {path}\n" for path in written)
          + f"Run it with: bash {folder / 'command.sh'} (or command.bat on Windows) in "
          "sd-scripts' folder, or: accelerate launch train_network.py --config_file "
          f"{folder / 'config.toml'}")
    return 0


def _undo(folder: Path) -> int:
    from lora_core.captioning.files import UNDO

    command, restored, skipped = UNDO.undo(folder)
    print(f"undid the last `{command}` on {folder}: {restored} caption file(s) put back")
    for path in skipped:
        print(f"  left alone (changed since): {path}")
    return 0


def _print_changes(changes, dry_run: bool, limit: int = 20) -> None:
    verb = "would write" if dry_run else "wrote"
    for change in changes[:limit]:
        print(f"{change.path}: {change.after}")
    if len(changes) > limit:
        print(f"... and {len(changes) - limit} more")
    print(f"{verb} {len(changes)} caption file(s)" + ("; undo with --undo" if changes
                                                      and not dry_run else ""))


def cmd_caption(args: argparse.Namespace) -> int:
    from lora_core.captioning.tagger import TaggerOptions, caption_folder

    if args.undo:
        return _undo(args.folder)
    if not args.tagger:
        raise LoraError("caption needs --tagger MODEL", "a folder holding model.onnx and "
                        "selected_tags.csv, or a Hugging Face repo id in the local cache")
    options = TaggerOptions(
        general_threshold=args.general_threshold, character_threshold=args.character_threshold,
        remove_underscore=not args.keep_underscores, escape_brackets=not args.no_escape,
        use_rating_tags=args.use_rating_tags, character_tags_first=args.character_tags_first,
        undesired_tags=[t.strip() for t in args.undesired_tags.split(",") if t.strip()],
        prefix=[t.strip() for t in args.prefix.split(",") if t.strip()],
        caption_extension=args.caption_extension, batch_size=args.batch_size,
        mode="overwrite" if args.overwrite else "append" if args.append else "missing")

    def progress(done: int, total: int) -> None:
        print(f"tagged {done}/{total}", file=sys.stderr, flush=True)

    # Ctrl+C (or the wizard's cancel) stops between batches: the finished ones are written,
    # no caption half-way.
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    changes = caption_folder(args.folder, args.tagger, options, args.dry_run, progress,
                             stop.is_set, args.limit)
    _print_changes(changes, args.dry_run)
    if stop.is_set():
        print("stopped: the pictures not reached have no caption yet (run it again to "
              "tag them)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def cmd_tags(args: argparse.Namespace) -> int:
    from lora_core.captioning.files import split_tags
    from lora_core.captioning.tags import TagEdit, edit_tags, parse_replace, tag_table

    if args.undo:
        return _undo(args.folder)
    edit = TagEdit(add=[t for item in args.add for t in split_tags(item)], first=args.first,
                   remove=[t for item in args.remove for t in split_tags(item)],
                   replace=parse_replace(args.replace),
                   move_first=[t for item in args.move_first for t in split_tags(item)],
                   dedupe=args.dedupe)
    if edit.empty and not args.list:
        raise LoraError("nothing to do", "give --add, --remove, --replace, --move-first, "
                        "--dedupe or --list")
    if not edit.empty:
        changes, missing = edit_tags(args.folder, edit, args.caption_extension, args.dry_run)
        _print_changes(changes, args.dry_run)
        if missing:
            print(f"{missing} picture(s) have no caption file and were left alone "
                  "(`lora-train caption` tags them)")
    if args.list:
        for tag, count in tag_table(args.folder, args.caption_extension):
            print(f"{count:>6}  {tag}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from lora_core.captioning.prepare import prepare_folder, steps_of

    folder, repeats, images, placed = prepare_folder(
        args.source, args.name, args.output, args.repeats, args.target_steps, args.epochs,
        args.batch_size)
    print(f"{folder}: {images} picture(s) x {repeats} repeats = "
          f"{steps_of(images, repeats, args.epochs, args.batch_size)} steps over "
          f"{args.epochs} epoch(s) at batch {args.batch_size} ({placed} files linked or "
          f"copied; the source is unchanged)\nset [dataset] train_data_dir = "
          f"\"{args.output}\"")
    return 0


def _add_caption_parsers(sub) -> None:
    caption = sub.add_parser("caption", help="tag pictures with a WD14 tagger (only those "
                             "without a caption, unless --overwrite or --append)")
    caption.add_argument("folder", type=Path, metavar="DIR")
    caption.add_argument("--tagger", metavar="MODEL", help="a folder with model.onnx and "
                         "selected_tags.csv, or a Hugging Face repo id in the local cache")
    caption.add_argument("--general-threshold", "--thresh", type=float, default=0.35)
    caption.add_argument("--character-threshold", type=float, default=0.85)
    caption.add_argument("--keep-underscores", action="store_true",
                         help="keep tag underscores (default: spaces)")
    caption.add_argument("--no-escape", action="store_true",
                         help="leave ( and ) unescaped (default: \\( \\))")
    caption.add_argument("--use-rating-tags", action="store_true")
    caption.add_argument("--character-tags-first", action="store_true")
    caption.add_argument("--undesired-tags", default="", metavar="T1,T2")
    caption.add_argument("--prefix", default="", metavar="TRIGGER",
                         help="trigger words put first in every caption")
    caption.add_argument("--batch-size", type=int, default=4)
    caption.add_argument("--limit", type=int, metavar="N",
                         help="tag at most N pictures (with --dry-run: a preview)")
    mode = caption.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace existing captions")
    mode.add_argument("--append", action="store_true", help="add new tags to existing ones")
    tags = sub.add_parser("tags", help="edit the tags of every caption in a folder, or list "
                          "them by count")
    tags.add_argument("folder", type=Path, metavar="DIR")
    tags.add_argument("--add", action="append", default=[], metavar="TAGS")
    tags.add_argument("--first", action="store_true", help="put added tags first (triggers)")
    tags.add_argument("--remove", action="append", default=[], metavar="TAGS")
    tags.add_argument("--replace", action="append", default=[], metavar="OLD=NEW")
    tags.add_argument("--move-first", action="append", default=[], metavar="TAGS")
    tags.add_argument("--dedupe", action="store_true")
    tags.add_argument("--list", action="store_true", help="the tag table, most used first")
    for tool in (caption, tags):
        tool.add_argument("--caption-extension", default=".txt")
        tool.add_argument("--dry-run", action="store_true", help="print, write nothing")
        tool.add_argument("--undo", action="store_true",
                          help="undo the last caption or tags command on DIR")
    prepare = sub.add_parser("prepare", help="lay a flat folder of pictures out as "
                             "<repeats>_<name> (links or copies; never moves)")
    prepare.add_argument("source", type=Path, metavar="SRC")
    prepare.add_argument("--name", required=True, help="the trigger words")
    prepare.add_argument("--repeats", type=int)
    prepare.add_argument("--target-steps", type=int)
    prepare.add_argument("--epochs", type=int, default=1)
    prepare.add_argument("--batch-size", type=int, default=1)
    prepare.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")


def _add_lora_tool_parsers(sub) -> None:
    inspect = sub.add_parser("inspect", help="what a LoRA file is and how it was trained")
    inspect.add_argument("lora", type=Path, metavar="LORA")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    edit = sub.add_parser("edit", help="set a LoRA's title, description, author, keywords, "
                          "tags or cover (the original is kept as LORA.backup)")
    edit.add_argument("lora", type=Path, metavar="LORA")
    for name, what in (("title", "the name shown in the web UIs"),
                       ("description", "what it does and how to use it"),
                       ("author", "who made it"), ("keywords", "trigger words, comma-separated"),
                       ("tags", "tags, comma-separated")):
        edit.add_argument(f"--{name}", help=what)
    edit.add_argument("--cover", type=Path, metavar="IMAGE", help="a cover picture")
    edit.add_argument("--clear", action="append", default=[], metavar="FIELD",
                      help="remove a user field (title, description, author, keywords, "
                      "tags, cover)")
    resize = sub.add_parser("resize", help="a LoRA at a smaller rank (SVD)")
    resize.add_argument("lora", type=Path, metavar="LORA")
    merge = sub.add_parser("merge", help="several LoRAs as one (weighted sum, SVD)")
    merge.add_argument("inputs", nargs="+", metavar="LORA[:WEIGHT]")
    merge.add_argument("--alpha", type=float, help="alpha of the merged file (default: rank)")
    for tool in (resize, merge):
        tool.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                          help="the new .safetensors file (never an existing one)")
        tool.add_argument("--rank", type=int, required=tool is merge, metavar="N",
                          help="the rank to keep" + (" (with --dynamic: the most)"
                                                     if tool is resize else ""))
        tool.add_argument("--conv-rank", type=int, metavar="N",
                          help="the rank of 3x3 convolutions (default: --rank)")
        tool.add_argument("--save-precision", choices=("float", "fp16", "bf16"),
                          help="tensor precision of the new file (default: the input's)")
        tool.add_argument("--json", action="store_true", help="print the report as JSON")
    resize.add_argument("--dynamic", choices=("sv_fro", "sv_ratio", "sv_cumulative"),
                        help="pick each module's rank by its singular values")
    resize.add_argument("--param", type=float, metavar="X",
                        help="sv_fro/sv_cumulative: the share to keep (0-1); sv_ratio: keep "
                        "values within X times the largest")


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
    from lora_core.saving.runs import PROFILE_FILE

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
    _process_options(run)
    check = sub.add_parser("check", help="check the dataset and show the plan; loads no model")
    check.add_argument("profile", type=Path)
    check.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="SECTION.KEY=VALUE")
    resume = sub.add_parser("resume", help="continue a stopped, failed or crashed run from "
                            "its last saved state")
    resume.add_argument("run_dir", type=Path, metavar="RUN_FOLDER")
    resume.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override a profile field")
    resume.add_argument("--events", metavar="FILE|-", help="also write the JSON event stream")
    resume.add_argument("--no-progress", action="store_true", help="print no progress")
    _process_options(resume)
    status = sub.add_parser("status", help="list runs on this machine: running, finished, "
                            "stopped, failed or crashed")
    status.add_argument("run_dir", type=Path, nargs="?", metavar="RUN_FOLDER")
    status.add_argument("--json", action="store_true", help="print JSON")
    stop = sub.add_parser("stop", help="ask a running run to stop (it saves first)")
    stop.add_argument("run_dir", type=Path, metavar="RUN_FOLDER")
    stop.add_argument("--force", action="store_true", help="kill it at once (SIGKILL)")
    signal_ = sub.add_parser("signal", help="ask a running run to save a LoRA file or make "
                             "sample images after its current step")
    signal_.add_argument("run_dir", type=Path, metavar="RUN_FOLDER")
    signal_.add_argument("--save-now", action="store_true",
                         help="save a LoRA file of this step (NAME-stepNNNNNNNN.safetensors)")
    signal_.add_argument("--sample-now", action="store_true",
                         help="make the sample images of [sample] sample_prompts now")
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
    _add_lora_tool_parsers(sub)
    _add_caption_parsers(sub)
    imported = sub.add_parser("import", help="make a profile from an sd-scripts command line "
                              "or TOML, a LoRA Easy Training Scripts or kohya_ss file, or a "
                              "LoRA's metadata")
    imported.add_argument("source", metavar="SOURCE", help="a file, or - for standard input "
                          "(a pasted command)")
    imported.add_argument("-o", "--output", type=Path, metavar="PROFILE.toml",
                          help="write the profile here (default: print it)")
    export = sub.add_parser("export", help="write what sd-scripts runs for a profile: config "
                            "and dataset TOMLs and the command line")
    export.add_argument("profile", type=Path)
    export.add_argument("--sd-scripts", dest="folder", type=Path, required=True,
                        metavar="DIR", help="the folder to write into")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Base models are always local: never let a library reach for the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    command_line = argv is None  # a real process, not a call from a test or a queue
    args = build_parser().parse_args(argv)
    log_path = _setup_logging()
    # A log file on a full disk must not print a traceback of its own.
    logging.raiseExceptions = False
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        # `lora-train fields | head`: the reader has gone. Quiet, as Unix tools are; stdout
        # is pointed at /dev/null so the interpreter's own flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:  # Ctrl+C outside a run (a status listing, a check)
        return EXIT_INTERRUPTED
    except LoraError as exc:
        log.exception("failed")
        _print_error(exc)
        return exc.exit_code
    except Exception as exc:  # a bug, not bad input: short message, traceback in the log
        log.exception("internal error")
        print(f"error: internal error: {type(exc).__name__}: {exc}\n"
              f"the full traceback is in {log_path}", file=sys.stderr)
        return 1
    finally:
        if command_line:
            # The work is done and its files are written. The interpreter puts back the
            # default Ctrl+C handler while it shuts down, so a late second Ctrl+C would kill
            # the process by signal (exit -2 instead of 130): ignore it from here on.
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("run", "resume"):
        launched = _launch_if_asked(args)
        if launched is not None:
            return launched
    if args.command == "run":
        return cmd_run(args.profile, args.overrides, args.events, not args.no_progress)
    if args.command == "resume":
        return cmd_resume(args.run_dir, args.overrides, args.events, not args.no_progress)
    if args.command == "status":
        return cmd_status(args.run_dir, args.json)
    if args.command == "stop":
        return cmd_stop(args.run_dir, args.force)
    if args.command == "signal":
        return cmd_signal(args.run_dir, args.save_now, args.sample_now)
    if args.command == "check":
        return cmd_check(args.profile, args.overrides)
    if args.command == "rerun-last":
        return cmd_rerun_last(args.events)
    if args.command == "queue":
        from lora_core.queue import run_queue

        return run_queue(args.profiles, args.continue_on_error)
    if args.command == "inspect":
        return cmd_inspect(args.lora, args.json)
    if args.command == "edit":
        return cmd_edit(args)
    if args.command in ("resize", "merge"):
        return cmd_factor(args)
    if args.command == "caption":
        return cmd_caption(args)
    if args.command == "tags":
        return cmd_tags(args)
    if args.command == "prepare":
        return cmd_prepare(args)
    if args.command == "import":
        return cmd_import(args.source, args.output)
    if args.command == "export":
        return cmd_export(args.profile, args.folder)
    return cmd_fields(args.markdown)


if __name__ == "__main__":
    sys.exit(main())
