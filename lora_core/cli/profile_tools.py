"""Profiles without training: ``check`` (every problem ``run`` would stop on before its
first step, and the plan) and ``fields`` (every field with its default and meaning)."""

from __future__ import annotations

import sys
from pathlib import Path


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


def add_parsers(sub) -> None:
    check = sub.add_parser("check", help="check the dataset and show the plan; loads no model")
    check.add_argument("profile", type=Path)
    check.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="SECTION.KEY=VALUE")
    check.set_defaults(handler=lambda args: cmd_check(args.profile, args.overrides))
    fields = sub.add_parser("fields", help="list every profile field with its default and "
                            "meaning")
    fields.add_argument("--markdown", action="store_true",
                        help="print the reference page (docs/profile-reference.md)")
    fields.set_defaults(handler=lambda args: cmd_fields(args.markdown))
