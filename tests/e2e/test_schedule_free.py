"""Schedule-Free optimizers through the whole engine: they train without a schedule, their
samples and LoRA files use the evaluation weights while the training state keeps the
training ones, and a stopped run resumes exactly (sampling and saving swap weights in and
out without changing training by a bit)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lora_core.saving.lora_file import read_metadata
from lora_core.saving.train_state import latest_state
from tests.e2e.conftest import (
    assert_same_as_reference,
    run_folder,
    run_reference,
    stop_at_step_7_then_resume,
    write_profile,
)

pytest.importorskip("schedulefree")


def schedule_free_profile(root, name: str, **saving):
    """The resume tests' profile with AdamWScheduleFree, a sample each epoch and the training
    state kept at the end."""
    import tomllib

    import tomli_w

    path = write_profile(root, name, saving=saving)
    profile = tomllib.loads(path.read_text(encoding="utf-8"))
    profile["optimizer"] = {"optimizer_type": "AdamWScheduleFree", "learning_rate": 1e-2,
                            "lr_scheduler": "constant",
                            "optimizer_args": ["warmup_steps=2", "weight_decay=0.01"]}
    prompts = root / "prompts.txt"
    prompts.write_text("tok thing --w 64 --h 64 --s 2 --d 5\n", encoding="utf-8")
    profile["sample"] = {"sample_prompts": str(prompts), "sample_every_n_epochs": 1}
    profile["saving"]["save_state_on_train_end"] = True
    path.write_text(tomli_w.dumps(profile), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("schedulefree")


@pytest.fixture(scope="module")
def reference(workdir) -> dict:
    return run_reference(workdir, schedule_free_profile(workdir, "ref"))


def test_schedule_free_trains_with_samples_and_saves_its_evaluation_weights(reference):
    ran = reference["events"]
    assert len([e for e in ran if e["type"] == "sample_saved"]) == 2  # one per epoch
    rates = {e["lrs"]["lr/unet"] for e in ran if e["type"] == "step_ended"}
    assert rates == {1e-2}  # no schedule: the rate stays learning_rate
    out = reference["out"]
    metadata = read_metadata(out / "ref.safetensors")
    assert metadata["ss_optimizer"].startswith("schedulefree.")
    assert "AdamWScheduleFree(warmup_steps=2,weight_decay=0.01)" in metadata["ss_optimizer"]
    # The state kept at the end holds the training weights; the file the evaluation ones.
    state = latest_state(run_folder(out))
    assert state.name == "ref-step00000020-state"
    training = load_file(str(state / "network.safetensors"))
    final = reference["final"]
    trained = [k for k in final if k.endswith(("lora_down.weight", "lora_up.weight"))]
    assert trained and any(not torch.equal(final[k], training[k]) for k in trained)


def test_schedule_free_stopped_then_resumed_is_the_same_run(workdir, reference):
    profile = schedule_free_profile(workdir, "stop", save_every_n_steps=None)
    _, resumed, stopped_at = stop_at_step_7_then_resume(workdir, profile, "stop")
    assert_same_as_reference(reference, resumed, workdir / "out-stop", "stop", stopped_at + 1)
