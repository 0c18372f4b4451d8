"""LoRA files: ``inspect`` (what a file is and how it was trained), ``edit`` (title, cover
and the other user fields), ``resize`` and ``merge`` (SVD)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lora_core.cli.common import tool_events
from lora_core.errors import LoraError


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

    from lora_core.events import LoraFactored
    from lora_core.lora_tools.factor import merge_loras, resize_lora

    with tool_events(args.events) as bus:
        if args.command == "resize":
            report = resize_lora(args.lora, args.output, args.rank, args.conv_rank,
                                 args.dynamic, args.param, args.save_precision)
        else:
            report = merge_loras([_merge_input(text) for text in args.inputs], args.output,
                                 args.rank, args.conv_rank, args.alpha, args.save_precision)
        retained = [m.retained for m in report.modules]
        ranks: dict[str, int] = {}
        for m in sorted(report.modules, key=lambda m: m.new_rank):
            ranks[str(m.new_rank)] = ranks.get(str(m.new_rank), 0) + 1
        bus.emit(LoraFactored(args.command, str(report.output), len(report.modules), ranks,
                              min(retained) if retained else None,
                              sum(retained) / len(retained) if retained else None,
                              list(report.notes)))
    if args.events != "-":  # standard output carries the events
        print(json.dumps(report.as_json(), indent=2) if args.json else report.render(),
              end="\n" if args.json else "")
    return 0


def add_parsers(sub) -> None:
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
        tool.add_argument("--events", metavar="FILE|-", help="also write the JSON event "
                          "stream (- : standard output, instead of the report)")
    resize.add_argument("--dynamic", choices=("sv_fro", "sv_ratio", "sv_cumulative"),
                        help="pick each module's rank by its singular values")
    resize.add_argument("--param", type=float, metavar="X",
                        help="sv_fro/sv_cumulative: the share to keep (0-1); sv_ratio: keep "
                        "values within X times the largest")
    inspect.set_defaults(handler=lambda args: cmd_inspect(args.lora, args.json))
    edit.set_defaults(handler=cmd_edit)
    resize.set_defaults(handler=cmd_factor)
    merge.set_defaults(handler=cmd_factor)
