"""The wizard's Open imports other tools' settings (issue 14): a kohya_ss JSON opened as a
file, a command pasted into the Open prompt; both land on the review, tied to no file, so
Save asks where to write the profile."""

from __future__ import annotations

import json

from textual.widgets import Input

from lora_tui.app import make_app
from lora_tui.runner import FakeRunner
from lora_tui.screens.review import ReviewScreen
from tests.tui.helpers import EXAMPLE_TRAIN, SIZE, wait_for


async def test_open_imports_a_kohya_ss_json(tmp_path):
    source = tmp_path / "kohya.json"
    source.write_text(json.dumps({
        "LoRA_type": "Kohya LoCon", "pretrained_model_name_or_path": "builtin:tiny-sd1",
        "train_data_dir": str(EXAMPLE_TRAIN), "output_dir": str(tmp_path / "out"),
        "max_resolution": "64,64", "epoch": 3, "network_dim": 8, "network_alpha": 4,
        "conv_dim": 4, "conv_alpha": 2, "mixed_precision": "no", "xformers": True}))
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.screen.query("#start-menu"))
        app.open_profile(source)
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen)
                       and app.screen.check is not None)  # mounted, and its plan made
        draft = app.draft
        assert draft.source_path is None and draft.dirty  # Save asks where
        assert draft.text("network", "network_module") == "LoCon"
        assert draft.text("training", "max_train_epochs") == "3"
        assert draft.text("dataset", "resolution") == "64"  # square, as the profile writes it
        assert source.read_text().startswith("{")  # the source is never written


async def test_a_command_pasted_into_open_is_imported(tmp_path):
    command = ("accelerate launch --num_cpu_threads_per_process 1 train_network.py "
               "--pretrained_model_name_or_path=builtin:tiny-sd1 --network_module=networks.lora "
               f"--train_data_dir={EXAMPLE_TRAIN} --output_dir={tmp_path / 'out'} "
               "--network_dim=16 --max_train_epochs=5 --xformers")
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("o")
        await wait_for(pilot, lambda: bool(app.screen.query(Input)))
        app.screen.query_one(Input).value = command
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
        assert app.draft.text("network", "network_dim") == "16"
        assert app.draft.text("training", "max_train_epochs") == "5"
        # what the command left out runs with sd-scripts' defaults
        assert app.draft.text("optimizer", "optimizer_type") == "AdamW"
