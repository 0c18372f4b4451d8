"""The wizard driven with Pilot at 80x24: steps, validation, Back, review, save, train."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.widgets import Static

from lora_core.checks import check_profile
from lora_core.events import read_events
from lora_core.profile_load import load_profile
from lora_tui.app import make_app
from lora_tui.runner import FakeRunner
from lora_tui.screens.review import ReviewScreen
from lora_tui.screens.step import StepScreen
from lora_tui.screens.training import TrainingScreen
from lora_tui.steps import STEPS
from tests.tui.helpers import EVENTS_FILE, ROOT, SIZE, type_into, wait_for


def text_of(app, selector: str) -> str:
    content = app.screen.query_one(selector, Static).content
    return Text.from_markup(content).plain if isinstance(content, str) else str(content)


def index_of(title: str) -> int:
    return next(i for i, step in enumerate(STEPS) if step.title == title)


# Answers typed on the way (step title -> (section, key, text)); other steps keep defaults.
ANSWERS = {
    "Network": [("network", "network_dim", "16"),
                ("network", "network_alpha", "0")],  # explicit 0 is a value
    "Learning rates": [("optimizer", "learning_rate", "2e-4")],
    "Batch size": [("training", "train_batch_size", "3")],
    "Epochs or steps": [("training", "max_train_epochs", "3")],
    "Mixed precision": [("training", "mixed_precision", "no")],  # no CUDA GPU here
}


async def fill_to_review(pilot, dataset: Path, out: Path) -> None:
    """New profile → every step answered → review."""
    await pilot.press("n")
    assert isinstance(pilot.app.screen, StepScreen) and pilot.app.screen.index == 0
    await type_into(pilot, "model", "pretrained_model_name_or_path", "builtin:tiny-sd1")
    await pilot.press("enter", "enter")  # model, realistic/anime default
    await wait_for(pilot, lambda: pilot.app.screen.focused is not None and
                   "v_parameterization" in str(pilot.app.screen.focused.parent.id))
    await pilot.press("enter")  # v-pred default: next step
    await wait_for(pilot, lambda: pilot.app.screen.index == 1)
    await type_into(pilot, "dataset", "train_data_dir", str(dataset))
    await pilot.press("ctrl+n")
    await wait_for(pilot, lambda: pilot.app.screen.index == 2)
    await type_into(pilot, "saving", "output_dir", str(out))
    await type_into(pilot, "saving", "output_name", "my lora")
    await pilot.press("ctrl+n")
    for index in range(3, len(STEPS)):
        await wait_for(pilot, lambda i=index: getattr(pilot.app.screen, "index", None) == i)
        for section, key, text in ANSWERS.get(STEPS[index].title, []):
            await type_into(pilot, section, key, text)
        await pilot.press("ctrl+n")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, ReviewScreen))
    await wait_for(pilot, lambda: pilot.app.screen.check is not None)


async def test_new_profile_to_review_save_and_train(dataset, tmp_path):
    fake = FakeRunner.from_file(EVENTS_FILE)
    app = make_app(runner_factory=lambda: fake)
    async with app.run_test(size=SIZE) as pilot:
        await fill_to_review(pilot, dataset, tmp_path / "out")
        # The review's plan is lora_core's plan for the same answers.
        expected = check_profile(app.draft.profile()).plan
        plan = text_of(app, "#review-plan")
        assert f"total steps: {expected.max_train_steps}" in plan
        assert f"steps per epoch: {expected.steps_per_epoch}" in plan
        assert expected.max_train_steps == 3 * expected.steps_per_epoch
        changes = text_of(app, "#review-changes")
        assert "[network] network_dim = 16" in changes
        assert "[network] network_alpha = 0.0" in changes
        assert "clip_skip" not in changes  # defaults accepted with Enter are not changes

        saved = tmp_path / "saved profile é.toml"
        await pilot.press("s")
        app.screen.query_one("#path").value = str(saved)
        await pilot.press("enter")
        await wait_for(pilot, saved.is_file)
        profile = load_profile(saved)
        assert profile.network.network_dim == 16
        assert profile.network.network_alpha == 0.0
        assert profile.optimizer.learning_rate == 2e-4
        assert profile.training.max_train_epochs == 3
        assert profile.training.train_batch_size == 3
        assert profile.saving.output_name == "my lora"
        assert Path(profile.dataset.train_data_dir) == dataset
        assert "lora-train run" in text_of(app, "#review-command")
        assert str(saved) in text_of(app, "#review-command")

        await pilot.press("t")
        assert isinstance(app.screen, TrainingScreen)
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "finished")
        assert fake.profile_path == saved
        final = [e for e in read_events(EVENTS_FILE) if e.type == "run_finished"][0]
        files = text_of(app, "#train-files")
        for path in final.files:  # each named whole, its folder shortened to fit
            assert Path(path).name in files
        final_path = Path(final.final_file)
        assert f"{final_path.name} in {final_path.parent}/" in text_of(app, "#train-result")
        progress = screen.query_one("#train-progress")
        assert progress.progress == progress.total == final.steps
        assert len(screen.losses) == final.steps


async def test_back_keeps_answers_and_review_reopens_a_step(dataset, tmp_path):
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await fill_to_review(pilot, dataset, tmp_path / "out")
        await pilot.press("escape")  # back to the last step, answers kept
        assert app.screen.index == len(STEPS) - 1
        epochs = index_of("Epochs or steps")
        for _ in range(len(STEPS) - 1 - epochs):
            await pilot.press("escape")
        assert app.screen.index == epochs
        assert app.screen.editor("training", "max_train_epochs").input_widget.value == "3"
        for _ in range(len(STEPS) - epochs):
            await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
        steps_list = app.screen.query_one("#review-steps")
        steps_list.focus()  # the review opens on its Train/Save actions
        steps_list.highlighted = epochs
        await pilot.press("enter")  # reopen the epochs step from review
        assert app.screen.from_review and app.screen.index == epochs
        await type_into(pilot, "training", "max_train_epochs", "5")
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
        review = app.screen
        await wait_for(pilot, lambda: "total steps" in text_of(app, "#review-plan")
                       and review.check.report.plan.num_epochs == 5)
        expected = check_profile(app.draft.profile()).plan
        assert f"total steps: {expected.max_train_steps}" in text_of(app, "#review-plan")
        # The step screen under review was refreshed from the draft.
        for _ in range(len(STEPS) - epochs):
            await pilot.press("escape")
        assert app.screen.index == epochs
        assert app.screen.editor("training", "max_train_epochs").input_widget.value == "5"


async def test_bad_value_shows_the_profiles_message(tmp_path):
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        app.draft.set_text("model", "pretrained_model_name_or_path", "builtin:tiny-sd1")
        app.open_step(index_of("Network"))
        await pilot.pause()
        await type_into(pilot, "network", "network_dim", "0")
        editor = app.screen.editor("network", "network_dim")
        assert editor.has_class("has-error")
        message = text_of(app, "#field-network-network_dim .field-error")
        assert "`[network] network_dim` = 0 is out of range: it must be between 1 and 1024" \
            in message
        await pilot.press("ctrl+n")
        assert app.screen.index == index_of("Network")  # Next refuses while the value is bad
        await type_into(pilot, "network", "network_dim", "abc")
        assert "has the wrong type" in text_of(app, "#field-network-network_dim .field-error")
        await type_into(pilot, "network", "network_dim", "8")
        assert not editor.has_class("has-error")


async def test_required_field_is_asked_before_next(tmp_path):
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        editor = app.screen.editor("model", "pretrained_model_name_or_path")
        assert not editor.has_class("has-error")  # not nagged before trying
        await pilot.press("ctrl+n")
        assert app.screen.index == 0
        assert "is required" in text_of(
            app, "#field-model-pretrained_model_name_or_path .field-error")


async def test_concept_folder_fix_sets_the_parent(dataset, tmp_path):
    concept = dataset / "10_ohwx cube"
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await type_into(pilot, "model", "pretrained_model_name_or_path", "builtin:tiny-sd1")
        await pilot.press("ctrl+n")
        screen = app.screen
        await type_into(pilot, "dataset", "train_data_dir", str(concept))
        await wait_for(pilot, lambda: screen.last_check is not None
                       and screen.last_check.concept_parent is not None)
        assert screen.last_check.concept_parent == dataset
        assert "Ctrl+R" in text_of(app, "#check-problems")
        await pilot.press("ctrl+r")
        assert app.draft.text("dataset", "train_data_dir") == str(dataset)
        assert screen.editor("dataset", "train_data_dir").input_widget.value == str(dataset)
        await wait_for(pilot, lambda: screen.last_check.report is not None
                       and screen.last_check.report.scan is not None)
        table = screen.query_one("#check-folders")
        assert table.row_count == 1
        row = table.get_row_at(0)
        assert row[0] == "10_ohwx cube" and row[2] == 10
        assert row[1] == len(list(concept.glob("*.png")))


async def test_loaded_profile_opens_on_the_review_one_key_from_each_step(tmp_path):
    app = make_app(Path("examples/quickstart.toml"), runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, ReviewScreen)
        await pilot.press("1")  # a step's number reopens it
        assert isinstance(app.screen, StepScreen) and app.screen.index == 0
        value = app.screen.editor("model", "pretrained_model_name_or_path").input_widget.value
        assert value == "builtin:tiny-sd1"
        assert app.draft.text("dataset", "train_data_dir") == "dataset/train"  # as written
        assert app.draft.text("network", "network_dim") == "8"
        # Untouched fields of the file are carried through.
        assert app.draft.profile().dataset.shuffle_caption is True


async def test_pressing_enter_through_a_loaded_profile_trains_it():
    """The README's promise: open the example, press Enter until training starts."""
    fake = FakeRunner.from_file(EVENTS_FILE)
    app = make_app(ROOT / "examples" / "quickstart.toml", runner_factory=lambda: fake)
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(200):
            if isinstance(app.screen, TrainingScreen):
                break
            if isinstance(app.screen, ReviewScreen):
                # Enter trains once the plan is there (it refuses while problems are listed)
                await wait_for(pilot, lambda: app.screen.check is not None, timeout_s=30)
            await pilot.press("enter")
            await pilot.pause()
        assert isinstance(app.screen, TrainingScreen), type(app.screen).__name__
        await wait_for(pilot, lambda: app.screen.state == "finished")
        assert fake.profile_path is not None
        trained = load_profile(fake.profile_path)
        assert trained.training.max_train_epochs == 2  # the example's own answers
        assert trained.network.network_dim == 8
