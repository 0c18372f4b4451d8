"""The question sequence step by step (Pilot, 80x24): defaults accepted with Enter, fields
shown only where they apply, defaults that follow other answers, advanced options, Ctrl+S
from any step, typed sample prompts, and the review's plan and schedule."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.widgets import Static

from lora_core.checks import check_profile
from lora_core.profile import profile_to_dict
from lora_core.profile_load import load_profile, profile_from_dict
from lora_core.training.sample_prompts import read_sample_prompts, sample_points
from lora_tui.app import make_app
from lora_tui.runner import FakeRunner
from lora_tui.screens.review import ReviewScreen
from lora_tui.screens.step import StepScreen
from lora_tui.steps import STEPS, unreachable_fields
from tests.tui.helpers import SIZE, type_into, wait_for


def index_of(title: str) -> int:
    return next(i for i, step in enumerate(STEPS) if step.title == title)


def plain(widget: Static) -> str:
    content = widget.content
    return Text.from_markup(content).plain if isinstance(content, str) else str(content)


def shown(screen: StepScreen, section: str, key: str) -> bool:
    """Whether the step shows that field (advanced ones are only built when first shown)."""
    found = screen.query(f"#field-{section}-{key}")
    return bool(found) and found.first().display


def new_app():
    return make_app(runner_factory=lambda: FakeRunner([]))


async def open_step_with_basics(pilot, title: str, dataset: Path, out: Path) -> StepScreen:
    """A new profile with the three required answers, then the step called ``title``."""
    app = pilot.app
    await pilot.press("n")
    app.draft.set_text("model", "pretrained_model_name_or_path", "builtin:tiny-sd1")
    app.draft.set_text("dataset", "train_data_dir", str(dataset))
    app.draft.set_text("saving", "output_dir", str(out))
    app.open_step(index_of(title))
    await pilot.pause()
    return app.screen


def test_every_profile_field_is_asked_somewhere():
    assert unreachable_fields() == []
    asked = [key for step in STEPS for key in (*step.fields, *step.advanced)]
    assert len(asked) == len(set(asked))  # and on one step only


async def test_enter_through_every_step_lands_on_review_with_the_core_plan(dataset, tmp_path):
    app = new_app()
    answers = {0: ("model", "pretrained_model_name_or_path", "builtin:tiny-sd1"),
               1: ("dataset", "train_data_dir", str(dataset)),
               2: ("saving", "output_dir", str(tmp_path / "out")),
               # fp16, the default, needs a CUDA GPU: the step refuses it on this CPU
               index_of("Mixed precision"): ("training", "mixed_precision", "no")}
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        for index, step in enumerate(STEPS):
            screen = app.screen
            assert isinstance(screen, StepScreen) and screen.index == index, step.title
            assert f"Step {index + 1} of {len(STEPS)}" in plain(screen.query_one(".step-title"))
            if index in answers:
                await type_into(pilot, *answers[index])
                screen.shown_editors[0].input_widget.focus()
            for _ in range(len(screen.shown_editors)):
                await pilot.press("enter")  # accept every shown field as it is
            await wait_for(pilot, lambda s=screen: app.screen is not s)
        assert isinstance(app.screen, ReviewScreen)
        review = app.screen
        await wait_for(pilot, lambda: review.check is not None)

        # Enter wrote nothing: only the typed answers differ from the defaults.
        changed = {(section, key) for section, key, _, _ in app.draft.differences()}
        assert changed == {(s, k) for s, k, _ in answers.values()}
        profile = app.draft.profile()
        assert profile_from_dict(profile_to_dict(profile), base_dir=tmp_path) == profile

        expected = check_profile(profile).plan
        assert review.check.report.plan.max_train_steps == expected.max_train_steps
        text = plain(review.query_one("#review-plan"))
        assert f"steps per epoch: {expected.steps_per_epoch}" in text
        assert f"total steps: {expected.max_train_steps}" in text
        assert f"warmup steps: {expected.warmup_steps}" in text
        for (width, height), count in expected.bucket_counts.items():
            assert f"{width}x{height}: {count}" in text
        assert f"step {expected.max_train_steps} {expected.final_file_name}" in text
        assert "samples: none" in text


async def test_network_type_shows_conv_fields_only_where_they_apply(dataset, tmp_path):
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_step_with_basics(pilot, "Network", dataset, tmp_path / "out")
        conv = screen.editor("network", "conv_dim")
        assert not conv.display and not screen.editor("network", "conv_alpha").display
        select = screen.editor("network", "network_module").input_widget
        select.focus()
        await pilot.press("space", "down", "enter")  # open the list, LoRA -> LoCon
        assert app.draft.text("network", "network_module") == "LoCon"
        assert conv.display and screen.editor("network", "conv_alpha").display
        await type_into(pilot, "network", "conv_dim", "8")
        assert app.draft.profile().network.conv_dim == 8

        select.value = "LoRA"
        await pilot.pause()
        assert not conv.display
        # The LoCon answer is kept but is no part of a LoRA profile (which would refuse it).
        assert app.draft.profile().network.conv_dim is None
        select.value = "LoHa"
        await pilot.pause()
        assert conv.display and app.draft.profile().network.conv_dim == 8


async def test_adaptive_optimizer_makes_the_learning_rate_default_one(dataset, tmp_path):
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_step_with_basics(pilot, "Optimizer", dataset, tmp_path / "out")
        screen.editor("optimizer", "optimizer_type").input_widget.value = "Prodigy"
        await pilot.pause()
        assert "d_coef" in plain(screen.query_one("#field-optimizer-optimizer_args .field-note"))
        await pilot.press("ctrl+n", "ctrl+n")  # the network step comes between
        lr_step = app.screen
        assert lr_step.step.title == "Learning rates"
        label = plain(lr_step.query_one("#field-optimizer-learning_rate .field-label"))
        assert "default: 1.0" in label
        await pilot.press("enter", "enter", "enter")  # accept the defaults
        await wait_for(pilot, lambda: app.screen is not lr_step)
        assert app.draft.profile().optimizer.learning_rate == 1.0
        assert app.draft.text("optimizer", "learning_rate") == ""  # a default, not an answer

        app.draft.set_text("optimizer", "learning_rate", "0.5")  # typed: kept
        assert app.draft.profile().optimizer.learning_rate == 0.5
        app.draft.set_text("optimizer", "learning_rate", "")
        app.draft.set_text("optimizer", "optimizer_type", "AdamW")
        assert app.draft.profile().optimizer.learning_rate == 1e-4


async def test_an_optimizer_by_import_path_is_kept_and_schedule_free_is_offered(dataset,
                                                                              tmp_path):
    """A profile's optimizer_type beyond the list ("torch.optim.RAdam") shows as its own
    choice and is saved as it was; the list offers the Schedule-Free optimizers."""
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await open_step_with_basics(pilot, "Scheduler", dataset, tmp_path / "out")
        app.draft.set_text("optimizer", "optimizer_type", "torch.optim.RAdam")
        app.open_step(index_of("Optimizer"))
        await pilot.pause()
        screen = app.screen
        select = screen.editor("optimizer", "optimizer_type").input_widget
        assert select.value == "torch.optim.RAdam"
        offered = [value for _, value in select._options]
        assert {"AdamWScheduleFree", "RAdamScheduleFree", "SGDScheduleFree"} <= set(offered)
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: app.screen is not screen)
        assert app.draft.profile().optimizer.optimizer_type == "torch.optim.RAdam"
        screen.editor("optimizer", "optimizer_type").set_text("SGDScheduleFree")
        assert screen.editor("optimizer", "optimizer_type").input_widget.value \
            == "SGDScheduleFree"


async def test_scheduler_options_follow_the_schedule(dataset, tmp_path):
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_step_with_basics(pilot, "Scheduler", dataset, tmp_path / "out")
        cycles = screen.editor("optimizer", "lr_scheduler_num_cycles")
        power = screen.editor("optimizer", "lr_scheduler_power")
        select = screen.editor("optimizer", "lr_scheduler").input_widget
        select.value = "constant"
        await pilot.pause()
        assert not cycles.display and not power.display
        select.value = "cosine_with_restarts"
        await pilot.pause()
        assert cycles.display and not power.display
        await type_into(pilot, "optimizer", "lr_scheduler_num_cycles", "3")
        assert app.draft.profile().optimizer.lr_scheduler_num_cycles == 3
        select.value = "polynomial"
        await pilot.pause()
        assert power.display and not cycles.display


async def test_model_step_detects_the_family_and_the_style_sets_clip_skip(dataset, tmp_path):
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_step_with_basics(pilot, "Base model", dataset, tmp_path / "out")
        note = screen.query_one("#field-model-pretrained_model_name_or_path .field-note")
        await type_into(pilot, "model", "pretrained_model_name_or_path", "builtin:tiny-sdxl")
        assert "detected: SDXL" in plain(note)
        assert not screen.editor("model", "v2").display  # detected, so not asked
        assert screen.editor("model", "v_parameterization").display  # weights cannot tell

        await type_into(pilot, "model", "pretrained_model_name_or_path",
                        str(tmp_path / "missing model.safetensors"))
        assert "unusable" in plain(note) and "does not exist" in plain(note)
        assert screen.editor("model", "v2").display  # cannot be detected: asked

        assert not shown(screen, "model", "clip_skip")  # an advanced option
        screen.editor("wizard", "model_style").input_widget.value = "anime"
        await pilot.pause()
        app.draft.set_text("model", "pretrained_model_name_or_path", "builtin:tiny-sd1")
        assert app.draft.profile().model.clip_skip == 2
        await pilot.press("ctrl+o")
        clip_skip = screen.editor("model", "clip_skip")
        assert clip_skip.display and clip_skip.input_widget.value == "2"
        await type_into(pilot, "model", "clip_skip", "1")
        assert screen.editor("wizard", "model_style").input_widget.value == "realistic"


async def test_advanced_key_reveals_fields_not_asked_by_default(dataset, tmp_path):
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_step_with_basics(pilot, "Captions", dataset, tmp_path / "out")
        assert not shown(screen, "dataset", "caption_dropout_rate")
        assert "13 more option" in plain(screen.query_one("#advanced-hint"))
        await pilot.press("ctrl+o")
        dropout = screen.editor("dataset", "caption_dropout_rate")
        assert dropout.display and screen.focused is not None
        # In the step's order, after the fields asked by default.
        keys = [(e.spec.section, e.spec.key) for e in screen.editors]
        assert keys == [*screen.step.fields, *screen.step.advanced]
        await type_into(pilot, "dataset", "caption_dropout_rate", "0.1")
        assert app.draft.profile().dataset.caption_dropout_rate == 0.1
        await pilot.press("ctrl+o")  # hide again: an answered field stays in sight
        assert dropout.display
        assert not shown(screen, "dataset", "caption_tag_dropout_rate")


async def test_ctrl_s_saves_from_a_middle_step_then_reuses_the_path(dataset, tmp_path):
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await open_step_with_basics(pilot, "Network", dataset, tmp_path / "out")
        await type_into(pilot, "network", "network_dim", "12")
        saved = tmp_path / "profiles ü" / "mine.toml"
        await pilot.press("ctrl+s")
        app.screen.query_one("#path").value = str(saved)
        await pilot.press("enter")
        await wait_for(pilot, saved.is_file)
        assert load_profile(saved).network.network_dim == 12
        assert isinstance(app.screen, StepScreen)  # still on the step
        await type_into(pilot, "network", "network_dim", "20")
        await pilot.press("ctrl+s")  # the second time: no question
        assert isinstance(app.screen, StepScreen)
        assert load_profile(saved).network.network_dim == 20
        assert load_profile(saved).dataset.train_data_dir == str(dataset)


async def test_typed_prompts_are_saved_next_to_the_profile(dataset, tmp_path):
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_step_with_basics(pilot, "Sample prompts", dataset, tmp_path / "out")
        app.draft.set_text("saving", "output_name", "cube")
        area = screen.editor("wizard", "typed_prompts").input_widget
        area.focus()
        area.insert("a red cube --w 64 --h 64 --s 4\na blue cube --d 7")
        await pilot.pause()
        await type_into(pilot, "sample", "sample_every_n_epochs", "1")
        saved = tmp_path / "saved" / "cube.toml"
        await pilot.press("ctrl+s")
        app.screen.query_one("#path").value = str(saved)
        await pilot.press("enter")
        await wait_for(pilot, saved.is_file)

        prompts_file = saved.parent / "cube-prompts.txt"
        profile = load_profile(saved)
        assert profile.path("sample", "sample_prompts") == prompts_file
        prompts = read_sample_prompts(prompts_file, "ddim")
        assert [p.prompt for p in prompts] == ["a red cube", "a blue cube"]
        assert prompts[0].width == 64 and prompts[1].seed == 7
        assert [e for e in check_profile(profile).errors if e.section == "sample"] == []


async def test_review_shows_when_checkpoints_and_samples_happen(dataset, tmp_path):
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await open_step_with_basics(pilot, "Saving", dataset, tmp_path / "out")
        draft = app.draft
        for section, key, text in (("training", "max_train_epochs", "3"),
                                   ("saving", "save_every_n_epochs", "1"),
                                   ("optimizer", "lr_warmup_steps", "0.1"),
                                   ("sample", "sample_every_n_epochs", "2"),
                                   ("sample", "sample_at_first", "true")):
            draft.set_text(section, key, text)
        draft.typed_prompts = "a cube"
        app.push_screen(ReviewScreen())
        await pilot.pause()
        review = app.screen
        await wait_for(pilot, lambda: review.check is not None)
        profile = draft.profile()
        plan = check_profile(profile).plan
        text = plain(review.query_one("#review-plan"))
        assert f"warmup steps: {plan.warmup_steps}" in text and plan.warmup_steps > 0
        for step, name in plan.checkpoint_schedule():
            assert f"step {step} {name}" in text
        assert len(plan.checkpoint_schedule()) == 2  # epochs 1 and 2; 3 is the final file
        profile.sample.sample_prompts = "typed.txt"
        points = sample_points(profile.sample, plan.max_train_steps, plan.steps_per_epoch,
                               plan.num_epochs)
        assert points[0] == 0 and len(points) == 2
        assert f"samples after step: {', '.join(map(str, points))}" in text
        assert "1 typed sample prompt" in plain(review.query_one("#review-changes"))
        await pilot.press("8")  # reopen the scheduler step (keys 1-9)
        assert isinstance(app.screen, StepScreen) and app.screen.from_review
        assert app.screen.step.title == "Scheduler"


async def test_the_full_check_shows_each_problem_at_its_field(dataset, tmp_path):
    """What `lora-train check` finds beyond the profile's rules (files on disk, the machine)
    appears under the field it names, and Next stays on the step while it is there."""
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_step_with_basics(pilot, "Output", dataset, tmp_path / "out")
        await type_into(pilot, "saving", "output_dir", str(blocker))
        editor = screen.editor("saving", "output_dir")
        await wait_for(pilot, lambda: editor.has_class("has-error"), timeout_s=10)
        assert "is a file, not a folder" in plain(editor.query_one(".field-error"))
        await pilot.press("ctrl+n")
        assert app.screen is screen  # refused: run would stop on it
        await type_into(pilot, "saving", "output_dir", str(tmp_path / "out"))
        await wait_for(pilot, lambda: not editor.has_class("has-error"), timeout_s=10)

        # fp16 (the engine's default; a new profile starts with "no" here) on this CPU
        app.draft.set_text("training", "mixed_precision", "fp16")
        app.open_step(index_of("Mixed precision"))
        await pilot.pause()
        mixed = app.screen
        field = mixed.editor("training", "mixed_precision")
        await wait_for(pilot, lambda: field.has_class("has-error"), timeout_s=10)
        assert "needs a CUDA GPU" in plain(field.query_one(".field-error"))


async def test_a_problem_at_an_answered_advanced_field_is_shown_there(dataset, tmp_path):
    from tests.helpers.bad_inputs import safetensors_bytes

    xl = tmp_path / "xl.safetensors"
    xl.write_bytes(safetensors_bytes(
        {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 8)}))
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        for section, key, text in (("model", "pretrained_model_name_or_path", "builtin:tiny-sd1"),
                                   ("dataset", "train_data_dir", str(dataset)),
                                   ("saving", "output_dir", str(tmp_path / "out")),
                                   ("network", "network_weights", str(xl))):
            app.draft.set_text(section, key, text)
        app.open_step(index_of("Network"))
        await pilot.pause()
        shown = app.screen.editor("network", "network_weights")  # answered: always shown
        await wait_for(pilot, lambda: shown.has_class("has-error"), timeout_s=10)
        assert "for SDXL models, but the base model is SD 1.x" in plain(
            shown.query_one(".field-error"))


async def test_a_problem_at_a_hidden_advanced_field_is_listed_under_the_step(dataset, tmp_path):
    """A checkpoint without its tokenizer on this machine: the fix is the advanced
    tokenizer_cache_dir, which the step lists until it is answered."""
    from tests.helpers.ldm_export import write_single_file

    model = write_single_file("builtin:tiny-sd1", tmp_path / "model.safetensors", "sd1")
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_step_with_basics(pilot, "Base model", dataset, tmp_path / "out")
        await type_into(pilot, "model", "pretrained_model_name_or_path", str(model))
        errors = screen.query_one("#step-errors", Static)
        await wait_for(pilot, lambda: "tokenizer" in plain(errors), timeout_s=10)
        assert "hf download" in plain(errors)
        await pilot.press("ctrl+n")
        assert app.screen is screen


async def test_the_process_count_lists_the_gpus_this_machine_has(dataset, tmp_path,
                                                                 monkeypatch):
    from lora_core.checks import machine
    from lora_tui.screens import step

    gpus = [machine.Gpu(0, "NVIDIA GeForce RTX 4090", 24 * 2**30),
            machine.Gpu(1, "NVIDIA GeForce RTX 3090", 24 * 2**30)]
    monkeypatch.setattr(machine.ProbedMachine, "gpus", gpus)
    step.gpus_note.cache_clear()
    app = new_app()
    try:
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_step_with_basics(pilot, "Batch size", dataset, tmp_path / "o")
            await pilot.press("ctrl+o")
            note = screen.query_one("#field-training-num_processes .field-note")
            assert note.display
            assert plain(note) == ("2 GPU(s) here: 0: NVIDIA GeForce RTX 4090 (24 GB); "
                                   "1: NVIDIA GeForce RTX 3090 (24 GB)")
            assert not shown(screen, "training", "gpu_ids")  # one process: no GPU to pick
            await type_into(pilot, "training", "num_processes", "2")
            assert shown(screen, "training", "gpu_ids")
    finally:
        step.gpus_note.cache_clear()
