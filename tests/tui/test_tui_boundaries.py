"""The two boundaries: lora_tui never imports torch & co; lora_core never imports textual."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

from tests.tui.helpers import ROOT

_DRIVE = textwrap.dedent("""
    import asyncio, sys
    from lora_tui.app import make_app
    from lora_tui.runner import FakeRunner
    from lora_tui.screens.review import ReviewScreen
    from lora_tui.steps import STEPS

    async def main():
        app = make_app(sys.argv[1], runner_factory=lambda: FakeRunner([]))
        async with app.run_test(size=(80, 24)) as pilot:
            for _ in range(len(STEPS)):
                await pilot.press("ctrl+n")
                await pilot.pause()
            assert isinstance(app.screen, ReviewScreen), app.screen
            while app.screen.check is None:
                await pilot.pause(0.05)
            assert app.screen.check.report is not None
    asyncio.run(main())
    bad = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
    print("IMPORTED:", bad)
""")


def test_wizard_to_review_imports_no_torch():
    result = subprocess.run([sys.executable, "-c", _DRIVE, "examples/quickstart.toml"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "IMPORTED: []" in result.stdout


def test_lora_core_never_imports_textual():
    pattern = re.compile(r"^\s*(import textual|from textual)\b", re.MULTILINE)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "lora_core").rglob("*.py")
                 if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
