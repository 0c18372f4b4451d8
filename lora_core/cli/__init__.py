"""`lora-train`: the headless command line for scripts, queues and the wizard.

    lora-train run PROFILE [--set section.key=value ...] [--events FILE|-]
    lora-train resume RUN_FOLDER [--set ...] [--events FILE|-]
    lora-train status [RUN_FOLDER] [--json]
    lora-train stop RUN_FOLDER [--force]
    lora-train check PROFILE [--set ...]
    lora-train calibrate PROFILE [--set ...] [--memory-budget SIZE] [--steps N] [--json]
    lora-train rerun-last [--events FILE|-]
    lora-train queue PROFILE... [--continue-on-error]
    lora-train fields
    lora-train inspect LORA [--json]
    lora-train edit LORA [--title ...] [--description ...] [--cover IMG] [--clear FIELD]
    lora-train resize LORA (--rank N | --dynamic sv_fro|sv_ratio|sv_cumulative --param X) -o OUT
                      [--events FILE|-]
    lora-train merge A.safetensors:0.7 B.safetensors:0.5 --rank N -o OUT
    lora-train caption DIR --tagger MODEL [--overwrite|--append] [--dry-run] [--events FILE|-]
                       | --undo
    lora-train tags DIR [--add T] [--remove T] [--replace a=b] [--list] | --undo
    lora-train prepare SRC --name NAME (--repeats N | --target-steps S) -o DIR
    lora-train import SOURCE|- [-o PROFILE.toml]
    lora-train export PROFILE --sd-scripts DIR

Argument parsing lives here and nowhere else. Errors print a message and a hint, never a
traceback (that goes to the log file), and exit with code 2 for bad input, 1 for a failed
run and 130 for a run stopped with Ctrl+C (what was trained is saved).

Each command group is a module of this package that owns its arguments and handlers
(``add_parsers``); this module only assembles them and runs the chosen one.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from lora_core.cli import (
    captions,
    import_export,
    lora_files,
    profile_tools,
    run_control,
    training_runs,
)
from lora_core.cli.common import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    LogToEvents,
    StopFlag,
    log,
    print_error,
    setup_logging,
)
from lora_core.errors import LoraError

__all__ = ["LogToEvents", "StopFlag", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-train",
                                     description="Train LoRA adapters for Stable Diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (training_runs, profile_tools, run_control, lora_files, captions,
                  import_export):
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Base models are always local: never let a library reach for the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    command_line = argv is None  # a real process, not a call from a test or a queue
    args = build_parser().parse_args(argv)
    log_path = setup_logging()
    # A log file on a full disk must not print a traceback of its own.
    logging.raiseExceptions = False
    try:
        code = args.handler(args)
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
        print_error(exc)
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


