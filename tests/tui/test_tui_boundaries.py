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
            # The engine's remembered calibration, looked up as the review opens (issue 28).
            while not app.screen.measured_known:
                await pilot.pause(0.05)
    asyncio.run(main())
    bad = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
    print("IMPORTED:", bad)
""")


def test_wizard_to_review_imports_no_torch():
    result = subprocess.run([sys.executable, "-c", _DRIVE, "examples/quickstart.toml"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "IMPORTED: []" in result.stdout


_DRIVE_OPTIMIZER = textwrap.dedent("""
    import asyncio, sys
    from lora_tui.app import make_app
    from lora_tui.runner import FakeRunner
    from lora_tui.screens.review import ReviewScreen
    from lora_tui.steps import STEPS
    from tests.tui.helpers import type_into, wait_for

    OPTIMIZER = next(i for i, s in enumerate(STEPS) if ("optimizer", "optimizer_type") in s.fields)

    async def main():
        app = make_app(sys.argv[1], runner_factory=lambda: FakeRunner([]))
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
            await pilot.press(str(OPTIMIZER + 1))  # the review's shortcut to that step
            await pilot.pause()
            await type_into(pilot, "optimizer", "optimizer_args", "momentum=0.9")
            editor = app.screen.editor("optimizer", "optimizer_args")
            await wait_for(pilot, lambda: editor.has_class("has-error"), timeout_s=30)
            print("FIELD:", editor.query_one(".field-error").content)
            await type_into(pilot, "optimizer", "optimizer_args", "weight_decay=0.01")
            await wait_for(pilot, lambda: not editor.has_class("has-error"), timeout_s=30)
            for _ in range(len(STEPS)):
                if isinstance(app.screen, ReviewScreen):
                    break
                await pilot.press("ctrl+n")
                await pilot.pause()
            assert isinstance(app.screen, ReviewScreen), app.screen
            await wait_for(pilot, lambda: app.screen.check is not None, timeout_s=30)
            print("PROBLEMS:", [p.message for p in app.screen.check.report.errors])
    asyncio.run(main())
    bad = [m for m in ("torch", "diffusers", "transformers", "accelerate") if m in sys.modules]
    print("IMPORTED:", bad)
""")


def test_an_optimizer_named_by_import_path_is_checked_without_torch(tmp_path):
    """optimizer_type = "torch.optim.RAdam": the wizard's live check reads RAdam's
    signature from its source (so "momentum" is refused, as the run would refuse it) and
    never imports torch (issue 26: the check used to import the class)."""
    profile = (ROOT / "examples" / "quickstart.toml").read_text(encoding="utf-8")
    profile = profile.replace('"dataset/', f'"{ROOT / "examples" / "dataset"}/')
    profile = profile.replace("[optimizer]\n",
                              '[optimizer]\noptimizer_type = "torch.optim.RAdam"\n'
                              'lr_scheduler = "constant"\n')
    path = tmp_path / "radam.toml"
    path.write_text(profile, encoding="utf-8")
    result = subprocess.run([sys.executable, "-c", _DRIVE_OPTIMIZER, str(path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch.optim.RAdam takes no argument 'momentum'" in result.stdout, result.stdout
    assert "PROBLEMS: []" in result.stdout, result.stdout  # weight_decay: RAdam takes it
    assert "IMPORTED: []" in result.stdout


def test_lora_core_never_imports_textual():
    pattern = re.compile(r"^\s*(import textual|from textual)\b", re.MULTILINE)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "lora_core").rglob("*.py")
                 if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
