"""Runs that survive: kill -9 then resume, Ctrl+C then resume, a full disk, a NaN.

Every test compares with one uninterrupted reference run of the same profile (fixed seed):
a resumed run must produce the same loss at every step and the same final weights, bit for
bit on this CPU, with checkpoint names and step numbers continuing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w
import torch
from safetensors.torch import load_file

from tests.e2e.conftest import (
    ROOT,
    STEPS,
    assert_same_as_reference,
    events,
    kill_9_then_resume,
    losses,
    make_images,
    run_cli,
    run_folder,
    run_reference,
    start,
    stop_at_step_7_then_resume,
    wait_for_step,
    write_profile,
)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("resume")


@pytest.fixture(scope="module")
def reference(workdir) -> dict:
    ref = run_reference(workdir, write_profile(workdir, "ref"))
    # A finished run keeps no states (save_state_on_train_end is off).
    assert not (run_folder(ref["out"]) / "states").exists()
    return ref


def test_kill_9_at_a_random_step_then_resume_continues_exactly(workdir, reference):
    state = workdir / "state-kill"
    profile = write_profile(workdir, "kill")
    first = workdir / "kill.jsonl"
    child = start(profile, first, state)
    kill_at = random.Random().randint(4, STEPS - 3)
    wait_for_step(first, kill_at, child)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    out = workdir / "out-kill"
    folder = run_folder(out)
    before = {p.name: sha(p) for p in out.glob("*.safetensors")}
    assert before, "a checkpoint was written before the kill"
    weights_before = {p.name: load_file(str(p)) for p in out.glob("*.safetensors")}

    status = run_cli("status", str(folder), "--json",
                     env={"LORA_TUI_STATE_DIR": str(state)})
    (record,) = json.loads(status.stdout)
    assert record["status"] == "crashed" and record["resumable"], record

    second = workdir / "kill-resumed.jsonl"
    result = run_cli("resume", str(folder), "--events", str(second), "--no-progress",
                     env={"LORA_TUI_STATE_DIR": str(state)})
    assert result.returncode == 0, result.stderr
    resumed = events(second)
    (point,) = [e for e in resumed if e["type"] == "run_resumed"]
    # States go with every checkpoint (every 3 steps): the newest one before the kill.
    assert point["step"] == 3 * (kill_at // 3) or point["step"] == 3 * (kill_at // 3) - 3
    assert_same_as_reference(reference, second, out, "kill", point["step"] + 1)

    # Nothing written before the kill is lost; names continue where the run was. A kill
    # between a checkpoint file and its state resumes from the state before, and the steps
    # after it write that file again: the same weights (its metadata says when it was made).
    for name, digest in before.items():
        if int(name.rsplit("-step", 1)[1].split(".")[0]) <= point["step"]:
            assert sha(out / name) == digest, name
        else:
            again = load_file(str(out / name))
            assert again.keys() == weights_before[name].keys(), name
            for key, tensor in weights_before[name].items():
                assert torch.equal(again[key], tensor), (name, key)
    steps_saved = sorted(int(p.stem.split("step")[1]) for p in out.glob("kill-step*"))
    assert steps_saved == list(range(3, STEPS + 1, 3))
    # The run folder's own stream has both attempts; run.json says finished.
    assert [e["type"] for e in events(folder / "events.jsonl")].count("run_started") == 2
    assert json.loads((folder / "run.json").read_text())["status"] == "finished"
    assert json.loads((folder / "run.json").read_text())["resumes"] == 1


def test_ctrl_c_saves_a_state_and_resume_finishes_the_same_run(workdir, reference):
    profile = write_profile(workdir, "stop", saving={"save_every_n_steps": None})
    stopped, resumed, stopped_at = stop_at_step_7_then_resume(workdir, profile, "stop")
    out = workdir / "out-stop"
    assert [e for e in stopped if e["type"] == "run_finished"][-1]["interrupted"]
    states = [e for e in stopped if e["type"] == "state_saved"]
    assert states and states[-1]["step"] == stopped_at
    assert_same_as_reference(reference, resumed, out, "stop", stopped_at + 1)
    # The -interrupted file of the first attempt is still there, untouched.
    assert (out / "stop-interrupted.safetensors").is_file()


def test_resume_refuses_a_changed_dataset_and_a_live_run(workdir, tmp_path):
    state = tmp_path / "state"
    root = tmp_path / "changed"
    root.mkdir()
    # Long enough that it is still running while the first resume is refused.
    profile = write_profile(root, "changed", training={"max_train_epochs": 40},
                            saving={"save_every_n_steps": None})
    child = start(profile, root / "e.jsonl", state)
    wait_for_step(root / "e.jsonl", 2, child)
    folder = run_folder(root / "out-changed")
    live = run_cli("resume", str(folder), env={"LORA_TUI_STATE_DIR": str(state)})
    assert live.returncode == 2 and "still running" in live.stderr
    child.send_signal(signal.SIGINT)
    assert child.wait(timeout=120) == 130

    make_images(root / "data" / "5_tok thing", 3)  # one more image than the state knew
    changed = run_cli("resume", str(folder), env={"LORA_TUI_STATE_DIR": str(state)})
    assert changed.returncode == 2
    assert "dataset" in changed.stderr and "hint:" in changed.stderr
    assert "Traceback" not in changed.stderr


def test_nan_loss_stops_with_the_step_and_never_writes_a_nan_lora(tmp_path):
    # A learning rate this large blows the weights up within a few steps: a real NaN/inf.
    profile = write_profile(tmp_path, "nan", saving={"save_every_n_steps": 1})
    text = profile.read_text().replace("learning_rate = 0.001", "learning_rate = 1e12")
    profile.write_text(text)
    result = run_cli("run", str(profile), "--events", str(tmp_path / "nan.jsonl"),
                     "--no-progress", env={"LORA_TUI_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (failed,) = [e for e in events(tmp_path / "nan.jsonl") if e["type"] == "run_failed"]
    assert failed["kind"] == "non_finite_loss"
    assert "step" in failed["message"] and "learning rate" in failed["hint"]
    written = list((tmp_path / "out-nan").glob("*.safetensors"))
    import torch

    for path in written:  # every file that was written is whole and finite
        for key, tensor in load_file(str(path)).items():
            assert torch.isfinite(tensor).all(), (path.name, key)
    assert not (tmp_path / "out-nan" / "nan.safetensors").exists()


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            "mkdir -p /tmp/.lora-probe && mount -t tmpfs -o size=64k tmpfs "
                            "/tmp/.lora-probe"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a tmpfs here (needs unshare "
                    "with user namespaces); the simulated full disk test still runs")
def test_disk_full_on_a_real_small_tmpfs_then_resume_on_another_disk(tmp_path):
    """The output folder is a 1.5 MiB tmpfs: a few checkpoints and states fit, then a save
    fails with ENOSPC. The error is clear, the files before it are whole, and the run
    resumes with its output on another disk."""
    small = tmp_path / "small"
    small.mkdir()
    profile = write_profile(tmp_path, "full", saving={"save_every_n_steps": 2})
    profile.write_text(profile.read_text().replace(str(tmp_path / "out-full"), str(small)))
    copy = tmp_path / "copy"
    elsewhere = tmp_path / "elsewhere"
    py = sys.executable
    script = f"""
set -u
mount -t tmpfs -o size=1536k tmpfs '{small}'
cd '{ROOT}'
'{py}' -m lora_core.cli run '{profile}' --events '{tmp_path}/full.jsonl' --no-progress \
    2> '{tmp_path}/full.err'
echo $? > '{tmp_path}/full.rc'
'{py}' -c "import sys; from safetensors.torch import load_file; from pathlib import Path
[load_file(str(p)) for p in Path('{small}').glob('*.safetensors')]" \
    2> '{tmp_path}/load.err'; echo $? > '{tmp_path}/load.rc'
run=$(ls -d '{small}'/runs/*)
'{py}' -m lora_core.cli resume "$run" --set saving.output_dir='{elsewhere}' \
    --events '{tmp_path}/resumed.jsonl' --no-progress 2> '{tmp_path}/resumed.err'
echo $? > '{tmp_path}/resumed.rc'
cp -a '{small}' '{copy}'
"""
    subprocess.run(["unshare", "-rm", "sh", "-c", script], timeout=600,
                   env={**os.environ, "LORA_TUI_STATE_DIR": str(tmp_path / "state")})
    err = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "2", err
    assert "disk is full" in err and "hint:" in err and "Traceback" not in err
    (failed,) = [e for e in events(tmp_path / "full.jsonl") if e["type"] == "run_failed"]
    assert failed["kind"] == "disk_full" and failed["resumable"]
    # Every LoRA file left on the full disk loads: none is torn, no temporary file is left.
    assert (tmp_path / "load.rc").read_text().strip() == "0", (tmp_path / "load.err").read_text()
    assert list(copy.glob("*.safetensors"))
    assert not [p for p in copy.rglob(".*") if p.name.endswith(".tmp")]
    # Resumed on another disk: a new run folder there continues it to the end.
    assert (tmp_path / "resumed.rc").read_text().strip() == "0", \
        (tmp_path / "resumed.err").read_text()
    assert (elsewhere / "full.safetensors").is_file()
    resumed = losses(tmp_path / "resumed.jsonl")
    assert max(resumed) == STEPS and min(resumed) > 1
    (new_run,) = (elsewhere / "runs").iterdir()
    assert json.loads((new_run / "run.json").read_text())["resumed_from"]


def lrs(path: Path) -> dict[int, float]:
    return {e["step"]: e["lrs"]["lr/unet"] for e in events(path) if e["type"] == "step_ended"}


def test_resume_with_a_new_learning_rate_applies_and_records_it(workdir, reference):
    """The usual answer to a NaN: resume from the last state with a lower rate. Settings the
    saved weights depend on cannot change."""
    state = workdir / "state-lr"
    profile = write_profile(workdir, "lr", saving={"save_every_n_steps": None})
    first = workdir / "lr.jsonl"
    child = start(profile, first, state)
    wait_for_step(first, 4, child)
    child.send_signal(signal.SIGINT)
    assert child.wait(timeout=120) == 130
    folder = run_folder(workdir / "out-lr")
    env = {"LORA_TUI_STATE_DIR": str(state)}

    refused = run_cli("resume", str(folder), "--set", "network.network_dim=8", env=env)
    assert refused.returncode == 2 and "`[network] network_dim` (4 -> 8)" in refused.stderr
    assert "Traceback" not in refused.stderr

    second = workdir / "lr-resumed.jsonl"
    result = run_cli("resume", str(folder), "--set", "optimizer.learning_rate=1e-4",
                     "--events", str(second), "--no-progress", env=env)
    assert result.returncode == 0, result.stderr
    ref_lrs = lrs(workdir / "ref.jsonl")
    for step, lr in lrs(second).items():  # the same point of the schedule, a tenth the rate
        assert lr == pytest.approx(ref_lrs[step] / 10, rel=1e-6), step
    assert any(e["type"] == "warning" and "learning rate" in e["message"]
               for e in events(second))
    assert "learning_rate = 0.0001" in (folder / "profile.toml").read_text()


def test_ctrl_c_twice_while_files_are_written_never_leaves_a_broken_file(tmp_path):
    """A file and a state at every step, and Ctrl+C twice in quick succession: the abort
    waits for the write in progress, so every file and state on disk is whole."""
    from lora_core.saving.train_state import list_states, load_state

    state = tmp_path / "state"
    profile = write_profile(tmp_path, "twice", saving={"save_every_n_steps": 1})
    stream = tmp_path / "twice.jsonl"
    child = start(profile, stream, state)
    wait_for_step(stream, 3, child)
    child.send_signal(signal.SIGINT)
    time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    assert child.wait(timeout=120) == 130
    out = tmp_path / "out-twice"
    loras = list(out.glob("*.safetensors"))
    assert loras
    for path in loras:
        load_file(str(path))
    assert not list(out.glob(".*.tmp"))
    folder = run_folder(out)
    assert not list((folder / "states").glob(".*"))
    for path in list_states(folder):
        assert load_state(path).position.step >= 1


def test_ctrl_c_then_resume_finishes_with_every_file_beside_the_lora(workdir, tmp_path):
    """Issue 12: a stopped run that wrote a tag summary, preview images, numbered files and
    states beside its LoRA continues to "finished" (its own tag summary, once refused as
    an existing file, is rewritten), with the final file named in run.json. The event
    stream says "training" again after every mid-run save and preview (the phase line once
    froze on "making sample images")."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cube --w 64 --h 64 --s 1 --d 2\n", encoding="utf-8")
    profile = write_profile(tmp_path, "files", saving={"tag_summary": True})
    data = tomllib.loads(profile.read_text(encoding="utf-8"))
    data["sample"] = {"sample_prompts": str(prompts), "sample_every_n_steps": 4}
    profile.write_text(tomli_w.dumps(data), encoding="utf-8")
    state, first = tmp_path / "state", tmp_path / "first.jsonl"
    child = start(profile, first, state)
    wait_for_step(first, 9, child)
    child.send_signal(signal.SIGINT)
    assert child.wait(timeout=120) == 130
    out = tmp_path / "out-files"
    assert (out / "files.txt").is_file() and (out / "files-interrupted.safetensors").is_file()
    stopped_at = [e for e in events(first) if e["type"] == "run_finished"][-1]["steps"]

    second = tmp_path / "second.jsonl"
    result = run_cli("resume", str(run_folder(out)), "--events", str(second), "--no-progress",
                     env={"LORA_TUI_STATE_DIR": str(state)})
    assert result.returncode == 0, result.stderr
    status = json.loads((run_folder(out) / "run.json").read_text(encoding="utf-8"))
    assert status["status"] == "finished"
    assert status["final_file"] == str(out / "files.safetensors")
    finished = [e for e in events(second) if e["type"] == "run_finished"][-1]
    assert not finished["interrupted"] and finished["final_file"] == status["final_file"]
    assert str(out / "files.txt") in finished["files"]
    samples = sorted(p.name for p in (out / "sample").iterdir() if p.name != "files_grid.png")
    assert len(samples) == len([s for s in range(4, STEPS + 1, 4)])  # both parts' samples
    assert (out / "sample" / "files_grid.png").is_file()  # the grid of the whole run
    step_files = sorted(p.name for p in out.glob("files-step*.safetensors"))
    assert step_files == [f"files-step{s:08d}.safetensors" for s in range(3, STEPS + 1, 3)]
    assert stopped_at < STEPS
    for stream in (first, second):
        said = [e for e in events(stream) if e["type"] in ("phase_changed", "step_ended")]
        for before, after in zip(said, said[1:], strict=False):
            if before["type"] == "phase_changed" and after["type"] == "step_ended":
                assert before["phase"] == "training", (before, after)


def test_a_full_bf16_run_stopped_then_resumed_continues_exactly(tiny_profile, state_dir):
    """Issue 28: full_bf16's state holds the bf16 weights (written as float32, exactly) and
    AdamW's bf16 moments: a run stopped after step 3 and resumed (in this process) takes the
    same steps as one that never stopped, bit for bit, and stays bf16."""
    from safetensors.torch import load_file

    from lora_core.events import EventBus, StateSaved, StepEnded
    from lora_core.profile_load import load_profile
    from lora_core.runs.status import StatusRecorder
    from lora_core.session import run_training, start_resume, start_run

    def run(name: str, stop_after: int | None = None, run_dir: Path | None = None):
        seen: list = []
        if run_dir is None:
            path = tiny_profile(name, repeats=3, training={
                "mixed_precision": "bf16", "full_bf16": True, "train_batch_size": 1},
                saving={"save_precision": "float"})
            profile = load_profile(path)
            started = start_run(profile, path)
        else:
            path = None
            profile, started = start_resume(run_dir, [])
        bus = EventBus([seen.append, StatusRecorder(started.status)])  # as `lora-train run`
        result = run_training(profile, path, started, bus,
                              lambda: stop_after is not None and any(
                                  isinstance(e, StepEnded) and e.step >= stop_after
                                  for e in seen))
        started.lock.close()  # one process runs both here: the resume takes the lock
        return seen, result, started.folder.path

    reference, done, _ = run("ref")
    assert not done.interrupted
    stopped, result, folder = run("stop", stop_after=3)
    assert result.interrupted and result.steps == 3
    (state,) = [Path(e.path) for e in stopped if isinstance(e, StateSaved)]
    moments = torch.load(state / "optimizer.pt", weights_only=True)["state"]
    assert {t.dtype for s in moments.values() for k, t in s.items() if k != "step"} == \
        {torch.bfloat16}
    resumed, result, _ = run("stop", run_dir=folder)
    assert not result.interrupted

    def losses_of(seen):
        return {e.step: e.loss for e in seen if isinstance(e, StepEnded)}

    want = losses_of(reference)
    assert sorted(want) == list(range(1, 7))
    assert losses_of(resumed) == {step: want[step] for step in range(4, 7)}
    out = done.files[0].parent
    final, ref_final = load_file(str(out / "stop.safetensors")), \
        load_file(str(out / "ref.safetensors"))
    assert final.keys() == ref_final.keys()
    for key, tensor in ref_final.items():
        assert torch.equal(final[key], tensor), key
        assert key.endswith(".alpha") or torch.equal(tensor.to(torch.bfloat16).float(), tensor)


def test_every_cpu_lever_together_trains_records_and_resumes_after_kill_9(tmp_path,
                                                                           monkeypatch):
    """Issue 28: fp8 base weights (U-Net Linears and Conv2ds, text encoder Linears), the LoRA
    and its optimizer state in bf16 (full_bf16, under bf16), gradient checkpointing, cached
    latents, the 8-bit optimizer and torch_compile with inductor (the blocks compiled to C++
    on a CPU), in one tiny run: it trains, the file records each lever that sd-scripts
    records, the compiled kernels land in the kept cache (which the second and third
    processes read), and a run killed with -9 and resumed gives the uninterrupted run's
    losses and file, bit for bit."""
    cache = tmp_path / "compile-cache"
    monkeypatch.setenv("LORA_TUI_COMPILE_CACHE_DIR", str(cache))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    levers = {"training": {"fp8_base": True, "full_bf16": True, "mixed_precision": "bf16",
                           "gradient_checkpointing": True, "torch_compile": True},
              "dataset": {"cache_latents": True},
              "optimizer": {"optimizer_type": "AdamW8bit"},
              "saving": {"save_precision": "float"}}
    reference = run_reference(tmp_path, write_profile(tmp_path, "ref", **levers))
    from safetensors import safe_open

    with safe_open(str(reference["out"] / "ref.safetensors"), "pt") as handle:
        meta = handle.metadata()
    assert (meta["ss_fp8_base"], meta["ss_full_bf16"], meta["ss_gradient_checkpointing"],
            meta["ss_cache_latents"], meta["ss_mixed_precision"]) == \
        ("True", "True", "True", "True", "bf16")
    assert "AdamW8bit" in meta["ss_optimizer"]
    said = [e["message"] for e in reference["events"] if e["type"] == "log"]
    assert any(m.startswith("torch_compile: ") and "compile with inductor" in m for m in said)
    assert len(list((cache / "inductor").rglob("*"))) > 10  # FX graphs and compiled C++
    kill_9_then_resume(tmp_path, reference, **levers)

