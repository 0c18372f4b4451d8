"""`lora-tui [PROFILE]`: open the wizard, with PROFILE loaded when given.

Argument parsing lives here only. A profile that cannot be read prints the engine's message
and hint and exits with its code, before the terminal is taken over.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lora_core.errors import LoraError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lora-tui",
                                     description="The terminal wizard for lora-train.")
    parser.add_argument("profile", nargs="?", type=Path, help="a profile (.toml) to open")
    args = parser.parse_args(argv)
    from lora_tui.app import make_app

    try:
        app = make_app(args.profile)
    except LoraError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    app.run()
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
