"""Datasets' captions: ``caption`` (a WD14 tagger's tags, or a captioner's sentences),
``tags`` (bulk edits and the tag table), ``prepare`` (a flat folder laid out as
``<repeats>_<name>``); the first two share one undo stack."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from lora_core.cli.common import EXIT_INTERRUPTED, tool_events
from lora_core.errors import LoraError
from lora_core.events import CaptionsTagged, ImagesTagged


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


# Options only one kind of model reads, with their defaults: given to the other kind they
# are refused by name rather than ignored.
_TAGGER_ONLY = {"general_threshold": 0.35, "character_threshold": 0.85,
                "keep_underscores": False, "no_escape": False, "use_rating_tags": False,
                "character_tags_first": False, "undesired_tags": ""}
_CAPTIONER_ONLY = {"prompt": None, "max_length": 75, "raw": False, "replace": []}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _caption_model(args: argparse.Namespace) -> str:
    """'tagger' or 'captioner', with the options of the other kind refused by name."""
    if bool(args.tagger) == bool(args.captioner):
        raise LoraError("caption needs --tagger MODEL or --captioner MODEL (one of them)",
                        "--tagger: a WD14 tagger folder (model.onnx + selected_tags.csv), tags; "
                        "--captioner: a vision-language model in transformers' format "
                        "(Florence-2, BLIP, GIT, LLaVA), sentences")
    kind, others = ("tagger", _CAPTIONER_ONLY) if args.tagger else ("captioner", _TAGGER_ONLY)
    given = [_flag(name) for name, default in others.items() if getattr(args, name) != default]
    if given:
        raise LoraError(f"{', '.join(given)} do(es) not apply to --{kind}",
                        "leave it out; --prompt, --max-length, --raw and --replace are the "
                        "captioner's, the thresholds and tag options the tagger's")
    return kind


def cmd_caption(args: argparse.Namespace) -> int:
    if args.undo:
        return _undo(args.folder)
    kind = _caption_model(args)
    mode = "overwrite" if args.overwrite else "append" if args.append else "missing"
    if kind == "tagger":
        from lora_core.captioning.tagger import TaggerOptions
        from lora_core.captioning.tagger import caption_folder as tag_folder

        options = TaggerOptions(
            general_threshold=args.general_threshold,
            character_threshold=args.character_threshold,
            remove_underscore=not args.keep_underscores, escape_brackets=not args.no_escape,
            use_rating_tags=args.use_rating_tags, character_tags_first=args.character_tags_first,
            undesired_tags=[t.strip() for t in args.undesired_tags.split(",") if t.strip()],
            prefix=[t.strip() for t in args.prefix.split(",") if t.strip()],
            caption_extension=args.caption_extension, batch_size=args.batch_size, mode=mode)

        def run(progress, cancelled):
            return tag_folder(args.folder, args.tagger, options, args.dry_run, progress,
                              cancelled, args.limit)
    else:
        from lora_core.captioning.captioner import CaptionerOptions
        from lora_core.captioning.captioner import caption_folder as describe_folder

        sentence_options = CaptionerOptions(
            prompt=args.prompt, max_length=args.max_length, prefix=args.prefix,
            raw=args.raw, replace=args.replace, caption_extension=args.caption_extension,
            batch_size=args.batch_size, mode=mode)

        def run(progress, cancelled):
            return describe_folder(args.folder, args.captioner, sentence_options,
                                   args.dry_run, progress, cancelled, args.limit)

    # Ctrl+C (or the wizard's cancel) stops between batches: the finished ones are written,
    # no caption half-way.
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    verb = "tagged" if kind == "tagger" else "captioned"
    with tool_events(args.events) as bus:

        def progress(done: int, total: int) -> None:
            bus.emit(ImagesTagged(done, total))
            if args.events is None:
                print(f"{verb} {done}/{total}", file=sys.stderr, flush=True)

        changes = run(progress, stop.is_set)
        bus.emit(CaptionsTagged([str(c.path) for c in changes], [c.after for c in changes],
                                args.dry_run, stop.is_set()))
    if args.events != "-":  # standard output carries the events
        _print_changes(changes, args.dry_run)
    if stop.is_set():
        print("stopped: the pictures not reached have no caption yet (run it again to "
              "caption them)", file=sys.stderr)
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


def add_parsers(sub) -> None:
    caption = sub.add_parser("caption", help="tag pictures with a WD14 tagger, or caption "
                             "them in sentences with a vision-language model (only those "
                             "without a caption, unless --overwrite or --append)")
    caption.add_argument("folder", type=Path, metavar="DIR")
    caption.add_argument("--tagger", metavar="MODEL", help="a folder with model.onnx and "
                         "selected_tags.csv, or a Hugging Face repo id in the local cache")
    caption.add_argument("--captioner", metavar="MODEL", help="sentences: a vision-language "
                         "model in transformers' format (Florence-2, BLIP, GIT, LLaVA), a "
                         "folder or a Hugging Face repo id in the local cache")
    caption.add_argument("--prompt", metavar="TEXT", help="captioner: a Florence-2 task "
                         "(<CAPTION>, <DETAILED_CAPTION> (default), <MORE_DETAILED_CAPTION>), "
                         "a chat model's question, or the start of a BLIP/GIT sentence")
    caption.add_argument("--max-length", type=int, default=75, metavar="N",
                         help="captioner: new tokens at most (default 75)")
    caption.add_argument("--raw", action="store_true", help="captioner: no clean-up (keep "
                         "openings such as 'The image shows', words repeated back to back)")
    caption.add_argument("--replace", action="append", default=[], metavar="OLD=NEW",
                         help='captioner: replace whole words, e.g. "a woman=ohwx woman"')
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
    caption.add_argument("--events", metavar="FILE|-", help="also write the JSON event "
                         "stream (- : standard output, instead of the text)")
    caption.add_argument("--limit", type=int, metavar="N",
                         help="caption at most N pictures (with --dry-run: a preview)")
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
    caption.set_defaults(handler=cmd_caption)
    tags.set_defaults(handler=cmd_tags)
    prepare.set_defaults(handler=cmd_prepare)
