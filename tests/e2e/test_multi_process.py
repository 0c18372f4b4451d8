"""Several processes through `lora-train run --num-processes 2`: two CPU processes talking
over gloo stand in for two GPUs. The steps are sd-scripts' (total batch = batch x processes x
accumulation), only the main process writes files and events, and a run stopped with Ctrl+C
and resumed with two processes continues exactly (every process's random state is saved)."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.e2e.conftest import events, run_cli, start, write_profile

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo runs on POSIX here")

STEPS = 10  # 2 images x 5 repeats x 2 epochs = 20 batches of 1, over 2 processes

# write_profile's arguments: the resume tests' profile (caption shuffling and dropout:
# random numbers on every process), trained by two processes.
PROFILE = {"training": {"num_processes": 2}, "saving": {"save_every_n_steps": None}}


def losses(path: Path) -> dict[int, float]:
    """The losses per step, each step reported once (conftest's ``losses`` does not check)."""
    found: dict[int, float] = {}
    for event in events(path):
        if event["type"] == "step_ended":
            assert event["step"] not in found, f"step {event['step']} reported twice"
            found[event["step"]] = event["loss"]
    return found


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("multi")


@pytest.fixture(scope="module")
def reference(workdir) -> dict:
    result = run_cli("run", str(write_profile(workdir, "ref", **PROFILE)), "--events",
                     str(workdir / "ref.jsonl"), "--no-progress",
                     env={"LORA_TUI_STATE_DIR": str(workdir / "state")})
    assert result.returncode == 0, result.stderr
    return {"losses": losses(workdir / "ref.jsonl"), "events": events(workdir / "ref.jsonl"),
            "final": load_file(str(workdir / "out-ref" / "ref.safetensors"))}


def test_two_processes_train_the_steps_one_process_would_with_the_same_total_batch(
        workdir, reference):
    assert sorted(reference["losses"]) == list(range(1, STEPS + 1))  # once each, in order
    (started,) = [e for e in reference["events"] if e["type"] == "run_started"]
    assert started["plan"]["num_processes"] == 2
    assert started["plan"]["max_train_steps"] == STEPS
    # One process with twice the batch: the same steps (sd-scripts' maths), as check says.
    one = run_cli("check", str(workdir / "ref.toml"), "--set", "training.num_processes=1",
                  "--set", "training.train_batch_size=2",
                  env={"LORA_TUI_STATE_DIR": str(workdir / "state")})
    assert one.returncode == 0, one.stdout + one.stderr
    assert f"total steps:              {STEPS}" in one.stdout
    two = run_cli("check", str(workdir / "ref.toml"),
                  env={"LORA_TUI_STATE_DIR": str(workdir / "state")})
    assert "processes 2" in two.stdout and f"total steps:              {STEPS}" in two.stdout
    # The main process alone writes: one file, one run folder, one stream.
    out = workdir / "out-ref"
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["ref.safetensors"]
    (folder,) = (out / "runs").iterdir()
    kinds = [e["type"] for e in events(folder / "events.jsonl")]
    assert kinds.count("run_started") == 1 and kinds.count("run_finished") == 1
    assert json.loads((folder / "run.json").read_text())["status"] == "finished"


def test_ctrl_c_then_resume_with_two_processes_continues_exactly(workdir, reference):
    state = workdir / "state-stop"
    first = workdir / "stop.jsonl"
    child = start(write_profile(workdir, "stop", **PROFILE), first, state)
    deadline = time.time() + 300
    while not (first.exists() and 4 in losses(first)):
        assert child.poll() is None, child.stderr.read().decode()
        assert time.time() < deadline, "step 4 never came"
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)  # as Ctrl+C in its terminal, or the wizard's Stop
    assert child.wait(timeout=180) == 130, child.stderr.read().decode()
    stopped = events(first)
    (finished,) = [e for e in stopped if e["type"] == "run_finished"]
    assert finished["interrupted"] and finished["steps"] < STEPS
    (folder,) = (workdir / "out-stop" / "runs").iterdir()
    import torch

    from lora_core.saving.train_state import RNG_FILE, latest_state

    rng = torch.load(latest_state(folder) / RNG_FILE, weights_only=True)
    assert len(rng["ranks"]) == 2  # each process's own random state
    second = workdir / "stop-resumed.jsonl"
    # The run folder's profile says two processes: resume launches them again.
    result = run_cli("resume", str(folder), "--events", str(second), "--no-progress",
                     env={"LORA_TUI_STATE_DIR": str(state)})
    assert result.returncode == 0, result.stderr
    resumed = losses(second)
    assert sorted(resumed) == list(range(finished["steps"] + 1, STEPS + 1))
    assert resumed == {step: reference["losses"][step] for step in resumed}
    final = load_file(str(workdir / "out-stop" / "stop.safetensors"))
    for key, tensor in reference["final"].items():
        assert (final[key] == tensor).all(), key


def test_processes_the_machine_cannot_give_stop_before_anything_starts(workdir):
    profile = write_profile(workdir, "bad-ids", **PROFILE)
    result = run_cli("run", str(profile), "--num-processes", "3", "--gpu-ids", "0,1",
                     env={"LORA_TUI_STATE_DIR": str(workdir / "state-bad")})
    assert result.returncode == 2
    assert "`[training] gpu_ids` = \"0,1\" names 2 GPU(s) for num_processes = 3" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "out-bad-ids").exists()  # nothing was launched
