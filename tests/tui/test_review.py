"""The review at 80x24 (issue 24): every part reachable by keyboard (PageDown/End/Home
scroll it, whichever list has the focus), and an opened profile changed in the wizard is
said to train a copy, with the offer to save it to its file first."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from lora_tui.app import make_app
from lora_tui.dialogs.import_report import ImportReportDialog
from lora_tui.dialogs.save_first import SaveFirstDialog
from lora_tui.runner import FakeRunner
from lora_tui.screens.review import ReviewScreen
from lora_tui.screens.training import TrainingScreen
from lora_tui.steps import STEPS
from tests.tui.helpers import EVENTS_FILE, ROOT, SIZE, type_into, wait_for


def plain(widget: Static) -> str:
    content = widget.content
    return Text.from_markup(content).plain if isinstance(content, str) else str(content)


def opened(tmp_path: Path) -> Path:
    """A copy of the quickstart profile, beside the example dataset."""
    profile = tmp_path / "quickstart.toml"
    shutil.copy(ROOT / "examples" / "quickstart.toml", profile)
    (tmp_path / "dataset").symlink_to(ROOT / "examples" / "dataset")
    return profile


def in_sight(widget) -> bool:
    """Whether ``widget``'s first line is inside the scrolled review's window."""
    body = widget.screen.query_one(".step-body", VerticalScroll)
    top = widget.region.y
    return body.region.y <= top < body.region.bottom


async def test_page_down_and_end_reach_the_changes_and_the_last_step(tmp_path):
    app = make_app(opened(tmp_path), runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen)
                       and app.screen.check is not None)
        review = app.screen
        await pilot.pause(0.1)  # the plan laid out
        body = review.query_one(".step-body", VerticalScroll)
        changes = review.query_one("#review-changes", Static)
        assert "Changed from the defaults" in plain(changes)
        assert body.max_scroll_y > 0 and not in_sight(changes)
        assert review.focused.id == "review-actions"  # Enter trains: the list has the keys
        for _ in range(6):
            if in_sight(changes):
                break
            await pilot.press("pagedown")
        assert in_sight(changes) and body.scroll_y > 0
        await pilot.press("end")
        await pilot.pause()
        assert body.scroll_y == body.max_scroll_y
        await pilot.press("home")
        await pilot.pause()
        assert body.scroll_y == 0
        steps = review.query_one("#review-steps")
        steps.focus()  # from the steps list too, where End also picks the last step
        await pilot.press("home", "pagedown")
        await pilot.pause()
        assert body.scroll_y > 0
        await pilot.press("end")
        await pilot.pause()
        assert body.scroll_y == body.max_scroll_y and steps.highlighted == len(STEPS) - 1


async def changed_on_the_review(pilot, profile: Path) -> ReviewScreen:
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
    review = app.screen
    assert not review.query_one("#review-unsaved").display  # as opened: nothing to say
    await pilot.press("6")
    await type_into(pilot, "network", "network_dim", "32")
    await pilot.press("ctrl+n")
    await wait_for(pilot, lambda: app.screen is review)
    await wait_for(pilot, lambda: review.check is not None)
    return review


async def test_an_opened_profile_changed_says_it_trains_a_copy_and_can_train_it(tmp_path,
                                                                                state_dir):
    profile = opened(tmp_path)
    before = profile.read_bytes()
    fake = FakeRunner.from_file(EVENTS_FILE)
    app = make_app(profile, runner_factory=lambda: fake)
    async with app.run_test(size=SIZE) as pilot:
        review = await changed_on_the_review(pilot, profile)
        unsaved = review.query_one("#review-unsaved", Static)
        assert unsaved.display and in_sight(unsaved)
        assert "quickstart.toml stays as it was unless you press S" in plain(unsaved)
        copy = state_dir / "wizard" / "quickstart.toml"
        assert f"Enter trains a copy, {copy}" in plain(review.query_one("#review-command"))
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, SaveFirstDialog))
        await pilot.press("escape")  # neither: back to the review, nothing started
        await wait_for(pilot, lambda: app.screen is review)
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, SaveFirstDialog))
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, TrainingScreen))
        assert fake.profile_path == copy
        assert tomllib.loads(copy.read_text())["network"]["network_dim"] == 32
        assert profile.read_bytes() == before  # the user's file as it was


async def test_save_first_writes_the_file_then_trains_it(tmp_path, state_dir):
    profile = opened(tmp_path)
    fake = FakeRunner.from_file(EVENTS_FILE)
    app = make_app(profile, runner_factory=lambda: fake)
    async with app.run_test(size=SIZE) as pilot:
        await changed_on_the_review(pilot, profile)
        await pilot.press("enter")  # Train now, the focused action
        await wait_for(pilot, lambda: isinstance(app.screen, SaveFirstDialog))
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, TrainingScreen))
        assert fake.profile_path == profile
        saved = tomllib.loads(profile.read_text())
        assert saved["network"]["network_dim"] == 32
        assert saved["dataset"]["train_data_dir"] == "dataset/train"  # kept as written


async def test_a_profile_with_problems_still_shows_what_it_changed(tmp_path):
    """An imported command with another machine's paths is refused until they are fixed;
    the review once showed only the problems there, hiding what the import set (dim 4 from
    sd-scripts' default where the command said --net_dim=128)."""
    command = ('accelerate launch train_network.py '
               '--pretrained_model_name_or_path="C:\\sd\\model.safetensors" '
               f'--train_data_dir={tmp_path} --output_dir={tmp_path / "out"} --net_dim=128')
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.screen.query("#start-menu"))
        app.open_profile(command)
        await wait_for(pilot, lambda: isinstance(app.screen, ImportReportDialog))
        await pilot.press("escape")  # the import's report
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
        text = plain(app.screen.query_one("#review-changes", Static))
        assert "Windows drive path" in text
        assert "Changed from the defaults" in text
        assert "[network] network_dim = 4  (default 32)" in text


async def test_the_review_says_where_notifications_go_without_the_urls_secret(tmp_path):
    profile = opened(tmp_path)
    profile.write_text(profile.read_text(encoding="utf-8") + '\n[notify]\ncommand = "true"\n'
                       'webhook = "https://hooks.example.com/T00/B11/s3cret"\n'
                       'on = ["finished", "failed"]\n', encoding="utf-8")
    app = make_app(profile, runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen)
                       and app.screen.check is not None)
        review = app.screen
        command = " ".join(plain(review.query_one("#review-command", Static)).split())
        assert "when it ends, notifies: command `true` (on finished, failed); webhook " \
            "https://hooks.example.com/… (on finished, failed)" in command
        changes = plain(review.query_one("#review-changes", Static))
        assert "[notify] webhook = https://hooks.example.com/…" in changes
        assert "s3cret" not in changes + command


CALIBRATED = {
    "seconds_per_step": 0.42, "first_step_seconds": 9.5, "peak_memory_bytes": 3 * 2**30,
    "eta_seconds": 120.0, "eta_parts": {"load_and_caches": 9.0, "steps": 110.0},
    "total_steps": 80, "device": "cpu", "torch_version": "2.13.0", "measured_steps": 6,
    "budget_bytes": 2 * 2**30, "free_memory_bytes": None, "remembered": False,
    "proposals": [
        {"set": ["dataset.cache_latents=true"], "seconds_per_step": 0.4,
         "peak_memory_bytes": int(2.8 * 2**30), "fits": False, "note": ""},
        {"set": ["dataset.cache_latents=true", "training.gradient_checkpointing=true"],
         "seconds_per_step": 0.5, "peak_memory_bytes": int(1.7 * 2**30), "fits": True,
         "note": ""}]}


async def test_c_calibrates_and_a_proposal_is_taken_with_its_key(tmp_path, monkeypatch):
    """Issue 28: C on the review measures the run (the engine's `lora-train calibrate
    --json`, faked here: its own test is tests/e2e/test_calibrate_runs.py), shows the figures
    and the budget asked with B, and 2 puts the second proposal's settings into the answers,
    which the review then lists as changes."""
    import json
    import sys

    from lora_tui.dialogs import calibrate as dialog

    asked: list[list[str]] = []

    def fake_argv(profile, budget, overrides=()):
        asked.append([str(profile), budget or ""])
        return [sys.executable, "-c", f"print({json.dumps(json.dumps(CALIBRATED))})"]

    monkeypatch.setattr(dialog, "calibrate_argv", fake_argv)
    app = make_app(opened(tmp_path), runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen)
                       and app.screen.check is not None)
        review = app.screen
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, dialog.CalibrateDialog))
        shown = app.screen.query_one("#calibrate-result", Static)
        await wait_for(pilot, lambda: "seconds per step" in plain(shown))
        text = plain(shown)
        assert "0.42 s" in text and "3.00 GiB" in text and "does not fit" in text
        assert asked[0][0].endswith("calibrate-quickstart.toml")  # a snapshot, not the file
        await pilot.press("b")
        await pilot.press(*"2GiB", "enter")
        await wait_for(pilot, lambda: len(asked) == 2)
        assert asked[1][1] == "2GiB"
        await wait_for(pilot, lambda: "seconds per step" in plain(shown))
        await pilot.press("2")
        await wait_for(pilot, lambda: app.screen is review)
        assert app.draft.text("training", "gradient_checkpointing") == "true"
        assert app.draft.text("dataset", "cache_latents") == "true"
        await wait_for(pilot, lambda: "gradient_checkpointing" in
                       plain(review.query_one("#review-changes", Static)))
        # Beside the plan: the proposal's own figures, not those of the answers before it.
        await wait_for(pilot, lambda: "s/step" in measured_text(review))
        await pilot.pause(0.3)  # the engine's recall for the new answers (none) changes nothing
        text = measured_text(review)
        assert "0.50 s/step · peak memory 1.70 GiB" in text and "0.42" not in text
        assert "as proposed (dataset.cache_latents=true training.gradient_checkpointing=true)" \
            in text and "budget 2.00 GiB: fits" in text


async def test_escape_on_an_opened_profiles_review_asks_before_dropping_changes(tmp_path):
    """Escape on the review of an opened profile went to the start menu and dropped the
    answers changed there without a word; it asks now, as Ctrl+G does, and an unchanged
    profile leaves at once."""
    from lora_tui.dialogs.confirm import ConfirmDialog
    from lora_tui.screens.start import StartScreen

    profile = opened(tmp_path)
    app = make_app(profile, runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        review = await changed_on_the_review(pilot, profile)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("n")  # stay
        await wait_for(pilot, lambda: app.screen is review)
        assert app.draft.text("network", "network_dim") == "32"
    app = make_app(profile, runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, StartScreen))


def measured_text(review: ReviewScreen) -> str:
    measured = review.query_one("#review-measured", Static)
    return " ".join(plain(measured).split()) if measured.display else ""


async def test_after_c_measures_the_review_shows_the_figures_beside_the_plan(
        tmp_path, monkeypatch, state_dir):
    """Issue 28: the figures C measured stay on the review when the dialog closes (here the
    engine is faked and remembers nothing: the review keeps what the dialog measured), with
    the device they were measured on; answers changed since do not show them."""
    import json
    import sys

    from lora_tui.dialogs import calibrate as dialog

    monkeypatch.setattr(dialog, "calibrate_argv", lambda profile, budget, overrides=(): [
        sys.executable, "-c", f"print({json.dumps(json.dumps(CALIBRATED))})"])
    profile = opened(tmp_path)
    app = make_app(profile, runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen)
                       and app.screen.check is not None)
        review = app.screen
        await wait_for(pilot, lambda: review.measured_known)
        assert measured_text(review) == ""  # nothing measured yet: nothing shown
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, dialog.CalibrateDialog))
        shown = app.screen.query_one("#calibrate-result", Static)
        await wait_for(pilot, lambda: "seconds per step" in plain(shown))
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is review)
        await wait_for(pilot, lambda: "0.42 s/step" in measured_text(review))
        text = measured_text(review)
        assert "Measured on this machine: cpu (torch 2.13.0)" in text
        assert "peak memory 3.00 GiB" in text and "first step after 9.5 s" in text
        assert "whole run of 80 steps: about 2.0 min (load and caches 9 s, steps 110 s)" \
            in text
        assert "budget 2.00 GiB: does not fit; C shows 1 setting that fits" in text
        await pilot.pause(0.3)  # the engine's own recall (nothing remembered) changes nothing
        assert "0.42 s/step" in measured_text(review)
        await pilot.press("6")
        await type_into(pilot, "network", "network_dim", "32")
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: app.screen is review)
        await wait_for(pilot, lambda: review.measured_known and not measured_text(review))


async def test_a_remembered_calibration_shows_at_once_for_the_same_answers_only(
        tmp_path, monkeypatch, state_dir):
    """Issue 28: a result the engine remembers (same profile content, dataset, device and
    torch version) is on the review as soon as it opens, without a key, its ETA made for
    today's plan; a changed profile does not show it. The engine's calibrate() remembers
    it here, its measurement faked; the wizard reads it without importing torch
    (test_tui_boundaries)."""
    from lora_core import calibrate as cal

    profile = opened(tmp_path)
    app = make_app(profile, runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:  # the review writes C's snapshot
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen)
                       and app.screen.measured_known)
        assert measured_text(app.screen) == ""
    snapshot = state_dir / "wizard" / "calibrate-quickstart.toml"
    measured = cal.Measurement(first_step_seconds=8.0, load_seconds=7.5, seconds_per_step=0.5,
                               step_seconds=[0.5] * 6, peak_memory_bytes=3 * 2**30,
                               device="cpu", torch_version="2.13.0")
    monkeypatch.setattr(cal, "measure_in_child", lambda *args, **kwargs: measured)
    cal.calibrate(snapshot, [])  # measures (faked) and remembers

    app = make_app(profile, runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen)
                       and "s/step" in measured_text(app.screen))
        review = app.screen
        text = measured_text(review)
        assert "Measured on this machine: cpu (torch 2.13.0; remembered)" in text
        assert "0.50 s/step · peak memory 3.00 GiB · first step after 8.0 s" in text
        await wait_for(pilot, lambda: review.check is not None)
        steps = review.check.report.plan.max_train_steps
        eta = 7.5 + steps * 0.5  # no previews, saves take no time: load + steps
        assert f"whole run of {steps} steps: about {eta / 60:.1f} min" in text
        await pilot.press("6")
        await type_into(pilot, "network", "network_dim", "32")
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: app.screen is review)
        await wait_for(pilot, lambda: review.measured_known and not measured_text(review))
        await pilot.press("6")  # back as it was: the remembered figures again
        await type_into(pilot, "network", "network_dim", "8")
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: app.screen is review)
        await wait_for(pilot, lambda: "0.50 s/step" in measured_text(review))


def test_the_torch_compile_verdict_shows_beside_the_figures():
    from lora_tui.dialogs.calibrate import result_text, review_text

    verdict = {"compile_seconds": 120.0, "compiled_seconds_per_step": 0.3,
               "eager_seconds_per_step": 0.42, "break_even_steps": 1000, "planned_steps": 80,
               "pays_off": False, "cache_was_warm": False, "bucket_sizes": 1}
    for render in (review_text, result_text):
        assert "torch_compile" not in render(CALIBRATED)
        text = render({**CALIBRATED, "torch_compile": verdict})
        assert "torch_compile: [yellow]pays off after 1000 steps[/yellow], the run has 80\n" \
               "    0.30 s/step compiled, 0.42 without, 120 s to compile" in text
        paying = render({**CALIBRATED, "torch_compile": {**verdict, "pays_off": True,
                                                         "break_even_steps": 40}})
        assert "[green]pays off[/green] after 40 of 80 steps" in paying
        never = render({**CALIBRATED, "torch_compile": {**verdict, "break_even_steps": None}})
        assert "never pays off here" in never
        refused = render({**CALIBRATED, "torch_compile_note": "not for this profile: no g++"})
        assert "torch_compile: not compared: not for this profile: no g++" in refused


def test_a_calibration_of_the_users_file_is_the_wizards_for_the_same_answers(tmp_path,
                                                                             monkeypatch):
    """`lora-train calibrate my.toml` then `lora-tui my.toml`: the review's snapshot of the
    same answers (written elsewhere, relative paths made absolute, 0 written as 0.0) has the
    same key, so its figures show; another answer has another key."""
    from lora_core.calibrate import _memory_key
    from lora_core.profile_load import load_profile
    from lora_tui.screens.review import calibration_snapshot

    monkeypatch.setenv("LORA_TUI_STATE_DIR", str(tmp_path / "state"))
    users = ROOT / "examples" / "quickstart.toml"
    profile = load_profile(users, [])
    path, text = calibration_snapshot(profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    assert path.parent != users.parent and text != users.read_text(encoding="utf-8")
    assert _memory_key(load_profile(path, []), path, [], 6) == _memory_key(profile, users, [], 6)
    other = load_profile(users, ["network.network_dim=16"])
    assert _memory_key(other, users, [], 6) != _memory_key(profile, users, [], 6)
