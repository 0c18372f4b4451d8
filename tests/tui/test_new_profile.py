"""A new profile in the wizard (issue 24): its mixed_precision written for this machine with
the reason on its step, the short path (model, images, output, then the review), and Ctrl+G
asking before it drops answers that are not saved."""

from __future__ import annotations

import shutil

from rich.text import Text
from textual.widgets import Static

from lora_core.checks.machine import Gpu
from lora_core.profile import Profile
from lora_tui import draft as draft_module
from lora_tui.app import make_app
from lora_tui.dialogs.confirm import ConfirmDialog
from lora_tui.runner import FakeRunner
from lora_tui.screens.review import ReviewScreen
from lora_tui.screens.start import StartScreen
from lora_tui.screens.step import StepScreen
from lora_tui.steps import STEPS
from tests.tui.helpers import ROOT, SIZE, type_into, wait_for

MIXED = next(i for i, step in enumerate(STEPS) if step.title == "Mixed precision")


def plain(widget: Static) -> str:
    content = widget.content
    return Text.from_markup(content).plain if isinstance(content, str) else str(content)


def new_app():
    return make_app(runner_factory=lambda: FakeRunner([]))


class _Ampere:
    cpu_bf16 = None
    has_cuda = True
    gpus = [Gpu(0, "NVIDIA RTX A4000", 16 * 2**30, (8, 6))]


async def test_a_new_profile_gets_the_mixed_precision_of_this_machine(monkeypatch):
    """On this CPU (the tests hide every GPU) "no", written as an answer, with the reason
    on the step; fp16, the engine's default, was refused only at step 15 of 17."""
    draft_module.machine_precision.cache_clear()
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        assert app.draft.text("training", "mixed_precision") == "no"
        assert not app.draft.dirty  # chosen for the user, not typed: nothing to lose yet
        app.open_step(MIXED)
        await pilot.pause()
        editor = app.screen.editor("training", "mixed_precision")
        assert editor.text == "no" and not editor.has_class("has-error")
        note = plain(editor.query_one(".field-note"))
        assert "no CUDA GPU was found here" in note and 'starts with "no"' in note
    assert Profile().training.mixed_precision == "fp16"  # the engine's default is unchanged

    monkeypatch.setattr(draft_module, "ProbedMachine", _Ampere)
    draft_module.machine_precision.cache_clear()
    try:
        app = new_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("n")
            assert app.draft.text("training", "mixed_precision") == "bf16"
            app.open_step(MIXED)
            await pilot.pause()
            note = plain(app.screen.editor("training", "mixed_precision")
                         .query_one(".field-note"))
            assert "NVIDIA RTX A4000 (compute 8.6) can compute in bf16" in note
    finally:
        draft_module.machine_precision.cache_clear()


async def test_the_short_path_asks_three_steps_then_reviews(dataset, tmp_path):
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s")  # on the start screen: the short path
        screen = app.screen
        assert isinstance(screen, StepScreen) and screen.index == 0
        assert "Step 1 of 3: Base model" in plain(screen.query_one(".step-title"))
        await type_into(pilot, "model", "pretrained_model_name_or_path", "builtin:tiny-sd1")
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: getattr(app.screen, "index", None) == 1)
        assert "Step 2 of 3: Training images" in plain(app.screen.query_one(".step-title"))
        await type_into(pilot, "dataset", "train_data_dir", str(dataset))
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: getattr(app.screen, "index", None) == 2)
        await type_into(pilot, "saving", "output_dir", str(tmp_path / "out"))
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
        review = app.screen
        await wait_for(pilot, lambda: review.check is not None)
        assert review.check.report is not None and not review.check.report.errors
        assert "total steps:" in plain(review.query_one("#review-plan"))
        # the defaults for the rest: only the three answers and this machine's precision
        changed = {(section, key) for section, key, _, _ in app.draft.differences()}
        assert changed == {("model", "pretrained_model_name_or_path"),
                           ("dataset", "train_data_dir"), ("saving", "output_dir"),
                           ("training", "mixed_precision")}
        await pilot.press("9")  # every other step one key away
        assert isinstance(app.screen, StepScreen) and app.screen.from_review
        assert app.screen.index == 8
        assert "Step 9 of 17" in plain(app.screen.query_one(".step-title"))
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: app.screen is review)
        # N still walks every step
        app.new_profile()
        await pilot.pause()
        assert f"Step 1 of {len(STEPS)}" in plain(app.screen.query_one(".step-title"))


async def test_ctrl_g_asks_before_dropping_a_new_profiles_answers():
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await pilot.press("ctrl+g")  # nothing answered yet: home at once
        assert isinstance(app.screen, StartScreen)
        await pilot.press("n")
        step = app.screen
        await type_into(pilot, "model", "pretrained_model_name_or_path", "builtin:tiny-sd1")
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        assert "not saved" in app.screen.question
        await pilot.press("n")  # stay: the answers are still there
        await wait_for(pilot, lambda: app.screen is step)
        assert step.editor("model", "pretrained_model_name_or_path").text == "builtin:tiny-sd1"
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        await wait_for(pilot, lambda: isinstance(app.screen, StartScreen))


async def test_ctrl_g_asks_for_an_edited_profile_not_for_a_saved_one(tmp_path):
    profile = tmp_path / "quickstart.toml"
    shutil.copy(ROOT / "examples" / "quickstart.toml", profile)
    (tmp_path / "dataset").symlink_to(ROOT / "examples" / "dataset")
    app = make_app(profile, runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await pilot.press("ctrl+g")  # as opened: nothing to lose
        await wait_for(pilot, lambda: isinstance(app.screen, StartScreen))
        app.open_profile(profile)
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await pilot.press("6")
        await type_into(pilot, "network", "network_dim", "32")
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, StepScreen))
        await pilot.press("ctrl+s")  # saved to its file: Ctrl+G goes home without a word
        await wait_for(pilot, lambda: "network_dim = 32" in profile.read_text())
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: isinstance(app.screen, StartScreen))
