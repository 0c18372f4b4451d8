"""Validation loss through the whole engine: the same numbers in two runs of one profile and
in a run killed with -9 and resumed, sd-scripts' metadata in the file, and the events the
training screen and the trackers read."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

from lora_core.saving.lora_file import read_metadata
from tests.e2e.conftest import events, run_cli, run_folder, start, wait_for_step, write_profile

STEPS = 18  # 5 images, 2 held out: 3 x 2 repeats = 6 steps per epoch, 3 epochs

# write_profile's arguments. Shuffling, flips and dropout draw random numbers in training;
# validation must not depend on them (nor change them).
PROFILE = {"images": 5, "repeats": 2,
           "dataset": {"flip_aug": True},
           "optimizer": {"learning_rate": 1e-2, "lr_scheduler": None},
           "training": {"max_train_epochs": 3, "train_batch_size": None, "seed": 11,
                        "validation_split": 0.4, "validate_every_n_steps": 4},
           "saving": {"save_every_n_epochs": 1}}


def measured(path: Path) -> dict[tuple[str, int], float]:
    return {(e["kind"], e["step"]): e["loss"] for e in events(path)
            if e["type"] == "validation_measured"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("validation")


@pytest.fixture(scope="module")
def reference(workdir) -> dict[tuple[str, int], float]:
    result = run_cli("run", str(write_profile(workdir, "ref", **PROFILE)), "--events",
                     str(workdir / "ref.jsonl"), "--no-progress",
                     env={"LORA_TUI_STATE_DIR": str(workdir / "state")})
    assert result.returncode == 0, result.stderr
    return measured(workdir / "ref.jsonl")


def test_validation_runs_when_asked_and_is_recorded(workdir, reference):
    # Every 4 steps, at each of the 3 epoch ends (steps 6, 12, 18), and at every saved
    # file (every 3 steps) for the best file (issue 29).
    assert sorted(reference) == sorted([("step", s) for s in (3, 4, 6, 8, 9, 12, 15, 16, 18)]
                                       + [("epoch", s) for s in (6, 12, 18)])
    assert reference[("step", 12)] == reference[("epoch", 12)]  # one measurement, two names
    # The network learns from the other images of the same thing: the loss moves.
    assert len(set(reference.values())) > 3
    found = [e for e in events(workdir / "ref.jsonl") if e["type"] == "validation_measured"]
    assert {e["images"] for e in found} == {2}
    assert [e["epoch"] for e in found if e["kind"] == "epoch"] == [1, 2, 3]
    metadata = read_metadata(workdir / "out-ref" / "ref.safetensors")
    assert metadata["ss_num_validation_images"] == "2"
    assert metadata["ss_validation_split"] == "0.4"
    assert metadata["ss_validate_every_n_steps"] == "4"
    assert metadata["ss_num_train_images"] == "6"  # 3 trained images x 2 repeats


def test_kill_9_then_resume_measures_the_same_values(workdir, reference):
    state = workdir / "state-kill"
    first = workdir / "kill.jsonl"
    child = start(write_profile(workdir, "kill", **PROFILE), first, state)
    kill_at = random.Random().randint(7, STEPS - 3)
    wait_for_step(first, kill_at, child)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    # A second run of the profile: up to the kill, exactly the reference's values.
    before = measured(first)
    assert before and all(before[key] == reference[key] for key in before)
    second = workdir / "kill-resumed.jsonl"
    result = run_cli("resume", str(run_folder(workdir / "out-kill")), "--events", str(second),
                     "--no-progress", env={"LORA_TUI_STATE_DIR": str(state)})
    assert result.returncode == 0, result.stderr
    (point,) = [e for e in events(second) if e["type"] == "run_resumed"]
    after = measured(second)
    # Everything after the state it resumed from (a state saved at an epoch's last step
    # comes before that epoch's end, so its validation is measured again: the same value).
    assert {key for key in reference if key[1] > point["step"]} <= set(after)
    assert all(reference[key] == value for key, value in after.items())
