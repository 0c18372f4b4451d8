"""The wizard for a Flux.1 base model (issue 27): the model step tells dev / schnell / Chroma,
asks for ``[flux] ae``, ``clip_l`` and ``t5xxl`` (offering the files of the usual names
beside the transformer, never writing them by itself), shows the Flux settings on Ctrl+O,
and hides all of that for SD models; the review lists the files the run will load."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from lora_core.families.flux.builtin import AE_FILE, CHROMA_FILE, CLIP_L_FILE, DIT_FILE, T5_FILE
from lora_tui.app import make_app
from lora_tui.draft import Draft
from lora_tui.runner import FakeRunner
from lora_tui.screens.review import ReviewScreen, save_draft
from lora_tui.screens.step import StepScreen
from lora_tui.steps import STEPS
from tests.tui.helpers import ROOT, SIZE, type_into, wait_for

MODEL = ("model", "pretrained_model_name_or_path")
FLUX_FILES = (("flux", "ae"), ("flux", "clip_l"), ("flux", "t5xxl"))


@pytest.fixture(scope="module")
def tiny_flux() -> Path:
    """The built-in tiny Flux's folder (built once per session; the test process may import
    torch, the wizard never does)."""
    from lora_core.families.flux.builtin import ensure_tiny_flux

    return ensure_tiny_flux()


def models_folder(target: Path, tiny_flux: Path, dit: str = DIT_FILE) -> Path:
    """A folder as a Flux user has it: the transformer with ae, clip_l and t5xxl_fp16 beside."""
    target.mkdir(parents=True)
    shutil.copy(tiny_flux / dit, target / dit)
    shutil.copy(tiny_flux / AE_FILE, target / "ae.safetensors")
    shutil.copy(tiny_flux / CLIP_L_FILE, target / "clip_l.safetensors")
    shutil.copy(tiny_flux / T5_FILE, target / "t5xxl_fp16.safetensors")
    return target / dit


def new_app():
    return make_app(runner_factory=lambda: FakeRunner([]))


async def model_step(pilot, model: str) -> StepScreen:
    await pilot.press("n")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, StepScreen))
    await type_into(pilot, *MODEL, model)
    return pilot.app.screen


def note(screen: StepScreen, section: str, key: str) -> str:
    return str(screen.editor(section, key).query_one(".field-note").content)


async def test_a_flux_file_asks_for_its_files_and_offers_those_beside_it(tmp_path, tiny_flux):
    dit = models_folder(tmp_path / "models", tiny_flux)
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await model_step(pilot, str(dit))
        await wait_for(pilot, lambda: screen.editor(*FLUX_FILES[0]).display)
        assert "detected: Flux.1 dev" in note(screen, *MODEL)
        for key in FLUX_FILES:
            assert screen.editor(*key).display
        # SD's questions are not asked for Flux.
        assert not screen.editor("wizard", "model_style").display
        assert not screen.editor("model", "v_parameterization").display
        # Offered (placeholder and note), never written.
        ae = screen.editor("flux", "ae")
        offered = str(tmp_path / "models" / "ae.safetensors")
        assert ae.input_widget.placeholder.startswith(f"Tab: {offered}")
        assert "found beside the model" in note(screen, "flux", "ae")
        assert "t5xxl_fp16.safetensors" in screen.editor("flux", "t5xxl").input_widget.placeholder
        assert app.draft.text("flux", "ae") == ""
        assert "flux" not in app.draft.data() or "ae" not in app.draft.data()["flux"]
        # Enter on the model moves to ae; Enter there, empty, is refused and says Tab.
        await pilot.press("enter")
        assert app.screen.focused is ae.input_widget
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen.focused is ae.input_widget  # the run needs the file
        assert ae.has_class("has-error")
        # Tab takes the offer, Right too; then Enter moves on.
        await pilot.press("tab")
        assert app.draft.text("flux", "ae") == offered
        await pilot.press("enter", "right", "enter", "tab", "enter")
        await pilot.pause()
        assert app.draft.text("flux", "clip_l") == str(tmp_path / "models" / "clip_l.safetensors")
        assert app.draft.text("flux", "t5xxl") == str(tmp_path / "models"
                                                      / "t5xxl_fp16.safetensors")
        # The files are right; what the run would still stop on is said on this step: no
        # CLIP-L tokenizer here (the HF cache of the tests is empty), an advanced field.
        assert app.screen is screen
        assert "tokenizer" in str(screen.query_one("#step-errors").content)


async def test_an_offer_keeps_the_models_relative_folder(tmp_path, tiny_flux):
    models_folder(tmp_path / "models", tiny_flux)
    draft = Draft(tmp_path)
    draft.set_text(*MODEL, f"models/{DIT_FILE}")
    from lora_tui.flux_files import offered_text

    model = draft.flux_model()
    assert model is not None and not model.builtin
    assert offered_text(draft.text(*MODEL), model, "ae") == "models/ae.safetensors"
    (tmp_path / "models" / "t5xxl_fp16.safetensors").rename(
        tmp_path / "models" / "t5xxl_fp8_e4m3fn.safetensors")
    assert offered_text(draft.text(*MODEL), model, "t5xxl") == \
        "models/t5xxl_fp8_e4m3fn.safetensors"
    (tmp_path / "models" / "t5xxl_fp8_e4m3fn.safetensors").rename(
        tmp_path / "models" / "t5xxl_v1_1.safetensors")
    assert offered_text(draft.text(*MODEL), model, "t5xxl") == "models/t5xxl_v1_1.safetensors"
    (tmp_path / "models" / "ae.safetensors").unlink()
    assert offered_text(draft.text(*MODEL), model, "ae") is None


async def test_chroma_is_told_and_asks_no_clip_l(tmp_path, tiny_flux):
    dit = models_folder(tmp_path / "models", tiny_flux, CHROMA_FILE)
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await model_step(pilot, str(dit))
        await wait_for(pilot, lambda: screen.editor("flux", "ae").display)
        assert "detected: Chroma" in note(screen, *MODEL)
        assert not screen.editor("flux", "clip_l").display
        assert screen.editor("flux", "t5xxl").display


async def test_builtin_tiny_chroma_asks_for_the_t5_mask_before_moving_on():
    """Chroma trains only with apply_t5_attn_mask = true (the run refuses it otherwise):
    the model step says so, and Next stays with the problem listed under the step until
    the advanced option is set."""
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await model_step(pilot, "builtin:tiny-chroma")
        await wait_for(pilot, lambda: "detected: Chroma" in note(screen, *MODEL))
        assert "T5 attention mask" in note(screen, *MODEL)
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert app.screen is screen
        assert "apply_t5_attn_mask" in str(screen.query_one("#step-errors").content)
        await pilot.press("ctrl+o")
        await pilot.pause()
        mask = screen.editor("flux", "apply_t5_attn_mask")
        assert mask.display
        mask.input_widget.value = True
        await pilot.pause()
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: app.screen is not screen)
        assert app.draft.text("flux", "apply_t5_attn_mask") == "true"


async def test_builtin_tiny_flux_needs_no_files_and_shows_flux_settings(tmp_path):
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await model_step(pilot, "builtin:tiny-flux")
        await wait_for(pilot, lambda: "detected: Flux.1 dev" in note(screen, *MODEL))
        assert "its own ae, clip_l and t5xxl" in note(screen, *MODEL)
        for key in FLUX_FILES:  # empty: the built-in's own files
            assert not screen.editor(*key).display
        await pilot.press("ctrl+o")
        await pilot.pause()
        shown = {(e.spec.section, e.spec.key) for e in screen.shown_editors}
        assert {("flux", "t5xxl_max_token_length"), ("flux", "guidance_scale"),
                ("flux", "timestep_sampling"), ("flux", "discrete_flow_shift"),
                ("flux", "model_prediction_type"), ("model", "tokenizer_cache_dir")} <= shown
        assert ("model", "clip_skip") not in shown and ("model", "vae") not in shown
        # sigmoid_scale only for the sigmoid / shift draws
        assert ("flux", "sigmoid_scale") not in shown
        app.draft.set_text("flux", "timestep_sampling", "shift")
        screen.refresh_fields()
        assert screen.editor("flux", "sigmoid_scale").display


async def test_sd_models_show_no_flux_field():
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await model_step(pilot, "builtin:tiny-sd1")
        await wait_for(pilot, lambda: "detected:" in note(screen, *MODEL))
        for key in FLUX_FILES:
            assert not screen.editor(*key).display
        assert screen.editor("wizard", "model_style").display
        await pilot.press("ctrl+o")
        await pilot.pause()
        shown = [(e.spec.section, e.spec.key) for e in screen.shown_editors]
        assert not [key for key in shown if key[0] == "flux"]
        assert shown[-4:] == [("model", "clip_skip"), ("model", "vae"),
                              ("model", "no_half_vae"), ("model", "tokenizer_cache_dir")]
        # A [flux] answer left from a Flux model is not part of an SD profile.
        app.draft.set_text("flux", "ae", "ae.safetensors")
        assert "flux" not in app.draft.data()


async def test_review_lists_the_flux_files_and_settings(tmp_path, tiny_flux, dataset):
    dit = models_folder(tmp_path / "models", tiny_flux)
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, StepScreen))
        draft = app.draft
        fill_flux_draft(draft, dit, tmp_path, dataset)
        app.push_screen(ReviewScreen())
        await pilot.pause()
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
        changes = str(app.screen.query_one("#review-changes").content).replace("\\[", "[")
        assert "[flux] guidance_scale = 1.0" in changes
        assert "Flux.1 dev files" in changes
        assert f"t5xxl: {tmp_path / 'models' / 't5xxl_fp16.safetensors'}" in changes
        assert "T5 tokens per caption: 512" in changes
    saved = save_draft(draft, tmp_path / "flux.toml")
    data = tomllib.loads(saved.read_text(encoding="utf-8"))
    assert data["flux"]["ae"] == str(tmp_path / "models" / "ae.safetensors")
    assert data["flux"]["guidance_scale"] == 1.0


def fill_flux_draft(draft: Draft, dit: Path, tmp_path: Path, dataset: Path) -> None:
    draft.set_text(*MODEL, str(dit))
    for key, name in (("ae", "ae"), ("clip_l", "clip_l"), ("t5xxl", "t5xxl_fp16")):
        draft.set_text("flux", key, str(tmp_path / "models" / f"{name}.safetensors"))
    draft.set_text("flux", "guidance_scale", "1.0")
    draft.set_text("dataset", "train_data_dir", str(dataset))
    draft.set_text("saving", "output_dir", str(tmp_path / "out"))


async def test_the_flux_example_opens_on_the_review():
    """A profile with a [flux] table once could not be opened (the draft compared it with
    an all-default profile, which has no [flux] table)."""
    app = make_app(ROOT / "examples" / "flux-quickstart.toml",
                   runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
        changes = str(app.screen.query_one("#review-changes").content).replace("\\[", "[")
        assert "[flux] t5xxl_max_token_length = 32" in changes
        assert "Flux.1 dev files" in changes
        assert "(the built-in's own)" in changes


async def test_lora_flux_arguments_are_asked_on_the_network_step_for_flux_only(dataset,
                                                                               tmp_path):
    """networks.lora_flux's arguments ([flux] train_blocks, the per-type ranks, in_dims...)
    are advanced options of the network step for a Flux model; an opened profile's in_dims
    (a tuple) keeps its value through the draft (its text once read "(4, 0, ...)", which
    the profile refused)."""
    from lora_core.profile_load import profile_from_dict

    profile = profile_from_dict(
        {"model": {"pretrained_model_name_or_path": "builtin:tiny-flux"},
         "dataset": {"train_data_dir": str(dataset)},
         "saving": {"output_dir": str(tmp_path / "out")},
         "flux": {"in_dims": [4, 0, 0, 0, 4], "train_blocks": "single"}}, base_dir=tmp_path)
    draft = Draft.from_profile(profile)
    assert [p for p in draft.validate().problems if p.field == ("flux", "in_dims")] == []
    assert draft.data()["flux"] == {"in_dims": [4, 0, 0, 0, 4], "train_blocks": "single"}
    network = next(i for i, step in enumerate(STEPS) if step.title == "Network")
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        for model, shown in (("builtin:tiny-flux", True), ("builtin:tiny-sd1", False)):
            app.draft = Draft.new()
            app.draft.set_text(*MODEL, model)
            app.open_step(network)
            await wait_for(pilot, lambda: isinstance(app.screen, StepScreen)
                           and app.screen.index == network)
            await pilot.press("ctrl+o")
            await pilot.pause()
            keys = {(e.spec.section, e.spec.key) for e in app.screen.shown_editors}
            assert (("flux", "train_blocks") in keys) is shown
            assert (("flux", "single_dim") in keys) is shown
            assert (("network", "block_dims") in keys) is not shown  # SD's U-Net blocks
            app.pop_screen()
            await pilot.pause()


async def test_a_field_whose_change_waits_behind_another_keeps_what_was_typed(tmp_path,
                                                                                tiny_flux):
    """The race a burst made (``... Enter C-u <clip_l> Enter C-u <t5xxl>``, seen under tmux):
    t5xxl's own Changed message still queued when another field's refreshed the step, which
    wrote the draft's older (empty) text over the path typed, and the keys after it. Here
    the queued message is made by hand: the field's text is in, its message not yet taken."""
    dit = models_folder(tmp_path / "models", tiny_flux)
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await model_step(pilot, str(dit))
        await wait_for(pilot, lambda: screen.editor("flux", "t5xxl").display)
        t5 = screen.editor("flux", "t5xxl")
        path = str(tmp_path / "models" / "t5xxl_fp16.safetensors")
        with t5.input_widget.prevent(type(t5.input_widget).Changed):
            t5.input_widget.value = path
        t5._changed(path)  # posted, not yet taken into the draft
        screen.refresh_fields()  # as another field's message does before it is taken
        assert t5.text == path
        await pilot.pause()
        assert app.draft.text("flux", "t5xxl") == path  # then taken, as typed


async def test_ctrl_s_saves_the_keys_typed_just_before_it(tmp_path, tiny_flux):
    """Ctrl+S read before the messages of the keys typed just before it saved the draft
    without them (``... ZZ C-s`` in one burst)."""
    dit = models_folder(tmp_path / "models", tiny_flux)
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await model_step(pilot, str(dit))
        await wait_for(pilot, lambda: screen.editor("flux", "ae").display)
        ae = screen.editor("flux", "ae")
        path = str(tmp_path / "models" / "ae.safetensors")
        with ae.input_widget.prevent(type(ae.input_widget).Changed):
            ae.input_widget.value = path  # typed; no message has reached the screen
        assert app.draft.text("flux", "ae") == ""
        screen.action_save()
        await wait_for(pilot, lambda: app.draft.text("flux", "ae") == path)
