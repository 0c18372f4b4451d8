"""Resumable states, run status, the stop flag, and the faults around saving."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lora_core.atomic import atomic_write
from lora_core.cli import StopFlag
from lora_core.errors import NonFiniteError, OutputError, TrainingError
from lora_core.lighter import lighter_setting
from lora_core.profile_load import profile_from_dict
from lora_core.runs.status import (
    StatusRecorder,
    list_runs,
    new_status,
    read_status,
    register_run,
    write_status,
)
from lora_core.saving.train_state import (
    Position,
    capture_rng,
    latest_state,
    list_states,
    load_state,
    restore_rng,
    save_state,
)


def position(step: int, **kw) -> Position:
    return Position(step=step, epoch=0, batch_in_epoch=step, seed=1, output_name="x",
                    max_train_steps=10, num_epochs=1, plan_fingerprint="f", **kw)


def trained_optimizer(kind: str):
    net = torch.nn.Linear(4, 3)
    if kind == "AdamW":
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    elif kind == "AdamW8bit":
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(net.parameters(), lr=1e-3, min_8bit_size=1)
    elif kind == "Prodigy":
        import prodigyopt

        opt = prodigyopt.Prodigy(net.parameters(), lr=1.0)
    else:  # AdaFactor with its relative-step schedule
        from transformers.optimization import Adafactor

        opt = Adafactor(net.parameters(), lr=None, relative_step=True, warmup_init=True,
                        scale_parameter=True)
    if kind == "AdaFactor":
        from transformers.optimization import AdafactorSchedule

        sched = AdafactorSchedule(opt)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for _ in range(3):
        net(torch.randn(2, 4)).pow(2).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return net, opt, sched


@pytest.mark.parametrize("kind", ["AdamW", "AdamW8bit", "Prodigy", "AdaFactor"])
def test_state_round_trip_is_exact_and_loads_without_pickled_code(tmp_path, kind):
    net, opt, sched = trained_optimizer(kind)
    path = save_state(tmp_path, position(3, losses=[0.5, 0.25], written=["a.safetensors"]),
                      net.state_dict(), opt, sched, keep_last=2)
    assert path.name == "x-step00000003-state"
    loaded = load_state(tmp_path)  # a run folder: its newest state
    assert loaded.position.losses == [0.5, 0.25]
    assert loaded.position.written == ["a.safetensors"]
    # Same weights, and an optimizer restored from the file takes the same next step.
    net2, opt2, sched2 = trained_optimizer(kind)
    net2.load_state_dict(loaded.network)
    opt2.load_state_dict(loaded.optimizer)
    sched2.load_state_dict(loaded.scheduler)
    assert sched2.last_epoch == sched.last_epoch == 3
    x = torch.randn(2, 4)
    for n, o in ((net, opt), (net2, opt2)):
        n(x).pow(2).sum().backward()
        o.step()
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(a, b)
    # sd-scripts' names are there too, for its users.
    data = json.loads((path / "train_state.json").read_text())
    assert (data["current_step"], data["current_epoch"]) == (3, 0)


def test_states_rotate_and_half_written_ones_are_ignored(tmp_path):
    net, opt, sched = trained_optimizer("AdamW")
    for step in (2, 4, 6):
        save_state(tmp_path, position(step), net.state_dict(), opt, sched, keep_last=2)
    assert [p.name for p in list_states(tmp_path)] == ["x-step00000004-state",
                                                        "x-step00000006-state"]
    # A crash mid-write leaves a hidden temporary folder: never taken for a state.
    (tmp_path / "states" / ".tmp-abc").mkdir()
    (tmp_path / "states" / ".tmp-abc" / "train_state.json").write_text("{}")
    assert latest_state(tmp_path).name == "x-step00000006-state"


def test_a_state_with_nan_weights_is_never_written(tmp_path):
    net, opt, sched = trained_optimizer("AdamW")
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    weights["weight"][0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="step 5"):
        save_state(tmp_path, position(5), weights, opt, sched, keep_last=2)
    assert list_states(tmp_path) == []


def test_damaged_and_missing_states_are_clear_errors(tmp_path):
    with pytest.raises(TrainingError, match="holds no saved training state"):
        load_state(tmp_path)
    net, opt, sched = trained_optimizer("AdamW")
    path = save_state(tmp_path, position(2), net.state_dict(), opt, sched, keep_last=2)
    (path / "optimizer.pt").write_bytes(b"garbage")
    with pytest.raises(TrainingError, match="damaged") as info:
        load_state(tmp_path)
    assert "delete that folder" in info.value.hint
    (path / "optimizer.pt").write_bytes(b"")  # zero bytes: EOFError inside torch.load
    with pytest.raises(TrainingError, match="damaged"):
        load_state(tmp_path)
    path = save_state(tmp_path, position(4), net.state_dict(), opt, sched, keep_last=9)
    (path / "train_state.json").write_text("null")
    with pytest.raises(TrainingError, match="damaged"):
        load_state(path)
    path = save_state(tmp_path, position(6), net.state_dict(), opt, sched, keep_last=9)
    torch.save({"torch_cpu": torch.get_rng_state()}, path / "rng.pt")  # keys missing
    with pytest.raises(TrainingError, match="rng.pt lacks"):
        load_state(path)


def test_saving_the_same_step_again_replaces_it_whole(tmp_path):
    net, opt, sched = trained_optimizer("AdamW")
    first = save_state(tmp_path, position(3, losses=[1.0]), net.state_dict(), opt, sched, 2)
    again = save_state(tmp_path, position(3, losses=[2.0]), net.state_dict(), opt, sched, 2)
    assert first == again and load_state(again).position.losses == [2.0]
    assert [p.name for p in (tmp_path / "states").iterdir()] == [again.name]


def test_one_process_holds_a_run_folder(tmp_path):
    from lora_core.runs.status import lock_run

    held = lock_run(tmp_path)
    script = ("import sys; from pathlib import Path; from lora_core.runs.status import "
              "lock_run\ntry:\n    lock_run(Path(sys.argv[1]))\nexcept Exception as e:\n"
              "    print(type(e).__name__, e)")
    other = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                           text=True, cwd=Path(__file__).parents[2])
    assert "another process is training" in other.stdout
    held.close()
    free = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, cwd=Path(__file__).parents[2])
    assert free.stdout == "" and free.returncode == 0


def test_rng_states_restore_every_stream():
    state = capture_rng()
    drawn = (torch.rand(3), random.random(), np.random.rand(2))
    torch.rand(5), random.random(), np.random.rand(7)  # move every stream on
    restore_rng(state)
    again = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(drawn[0], again[0]) and drawn[1] == again[1]
    assert np.array_equal(drawn[2], again[2])


def test_second_ctrl_c_during_a_save_waits_for_the_write(tmp_path):
    flag = StopFlag()
    previous = signal.signal(signal.SIGINT, flag.handle)
    try:
        os.kill(os.getpid(), signal.SIGINT)  # first: stop after the step
        assert flag()
        target = tmp_path / "file.bin"
        target.write_bytes(b"old")
        wrote = []

        def write(tmp: Path) -> None:
            tmp.write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGINT)  # second Ctrl+C in the middle of a write
            tmp.write_bytes(b"new, complete")
            wrote.append(True)

        with pytest.raises(KeyboardInterrupt), flag.saving():
            atomic_write(target, write)
        assert wrote and target.read_bytes() == b"new, complete"
        # Outside a save, a second Ctrl+C aborts at once.
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_interrupted_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "lora.safetensors"
    target.write_bytes(b"previous")

    def torn(tmp: Path) -> None:
        tmp.write_bytes(b"par")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, torn)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["lora.safetensors"]


def test_a_full_disk_is_named_and_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "lora.safetensors"
    target.write_bytes(b"previous")

    def full(tmp: Path) -> None:
        tmp.write_bytes(b"par")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError) as info:
        atomic_write(target, full)
    assert info.value.kind == "disk_full" and "disk is full" in info.value.message
    assert "lora-train resume" in info.value.hint
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["lora.safetensors"]


def test_a_dead_process_marked_running_reads_as_crashed(tmp_path, state_dir):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    run = tmp_path / "runs" / "r-1"
    run.mkdir(parents=True)
    status = new_status(run, "r", run / "profile.toml", None, total_steps=10, total_epochs=1)
    status.status, status.pid, status.pid_started = "running", child.pid, ""
    write_status(status)
    register_run(run)
    (run / "train.log").write_text("line 1\nRuntimeError: boom\n")
    assert read_status(run).status == "crashed"
    (listed,) = list_runs()
    assert listed.status == "crashed" and listed.run_dir == str(run)
    # A run still going is listed whatever the limit; ended ones count against it.
    live = tmp_path / "runs" / "live"
    live.mkdir()
    alive = new_status(live, "live", live / "p.toml", None, total_steps=5, total_epochs=1)
    alive.status = "running"
    write_status(alive)
    register_run(live)
    for index in range(3):
        ended = tmp_path / "runs" / f"ended-{index}"
        ended.mkdir()
        done = new_status(ended, "e", ended / "p.toml", None, total_steps=5, total_epochs=1)
        done.status = "finished"
        write_status(done)
        register_run(ended)
    assert [Path(r.run_dir).name for r in list_runs(limit=2)] == ["ended-2", "ended-1", "live"]
    # This process is alive, but a recorded start time that differs means the pid was reused.
    status.pid, status.pid_started = os.getpid(), "1"
    write_status(status)
    assert read_status(run).status == "crashed"
    status.pid_started = ""
    write_status(status)
    assert read_status(run).status == "running"


def test_status_recorder_follows_the_events(tmp_path):
    from lora_core.events import RunFailed, RunStarted, StateSaved, StepEnded

    status = new_status(tmp_path, "r", tmp_path / "p.toml", None, total_steps=5, total_epochs=1)
    recorder = StatusRecorder(status)
    recorder(RunStarted(str(tmp_path), "", "r", "", {}))
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "running"
    (tmp_path / "states" / "s").mkdir(parents=True)
    recorder(StepEnded(2, 5, 1, 1, 0.5, 0.5, {}, 1.0, 3.0))
    recorder(StateSaved(str(tmp_path / "states" / "s"), 2, 0))
    recorder(RunFailed("boom", "", ""))
    data = read_status(tmp_path)
    assert (data.status, data.step, data.message) == ("failed", 2, "boom")
    assert data.resumable


def _profile(**sections):
    base = {"model": {"pretrained_model_name_or_path": "/m"}, "dataset": {"train_data_dir": "/d"},
            "saving": {"output_dir": "/o"}}
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return profile_from_dict(base)


def test_lighter_settings_go_in_order_and_keep_the_effective_batch():
    first = lighter_setting(_profile(training={"train_batch_size": 4}))
    assert first.overrides == ["training.gradient_checkpointing=true"]
    second = lighter_setting(_profile(training={"train_batch_size": 4,
                                                "gradient_checkpointing": True}))
    assert second.overrides == ["dataset.cache_latents=true"]
    third = lighter_setting(_profile(training={"train_batch_size": 4,
                                               "gradient_accumulation_steps": 3,
                                               "gradient_checkpointing": True},
                                     dataset={"cache_latents": True}))
    assert third.overrides == ["training.train_batch_size=2",
                               "training.gradient_accumulation_steps=6"]
    fourth = lighter_setting(_profile(training={"gradient_checkpointing": True},
                                      dataset={"color_aug": True},
                                      optimizer={"optimizer_type": "AdamW"}))
    assert fourth.overrides == ["optimizer.optimizer_type=AdamW8bit"]
    odd = lighter_setting(_profile(training={"train_batch_size": 5,
                                             "gradient_checkpointing": True},
                                   dataset={"cache_latents": True}))
    assert odd.overrides == ["training.train_batch_size=1",
                             "training.gradient_accumulation_steps=5"]
    assert lighter_setting(_profile(training={"gradient_checkpointing": True},
                                    dataset={"cache_latents": True},
                                    optimizer={"optimizer_type": "AdamW8bit"})) is None


def test_out_of_memory_in_a_step_becomes_a_retry_offer(tmp_path, state_dir, monkeypatch,
                                                       capsys):
    """CUDA OOM cannot happen on a CPU: raise it where a step would, and check what the
    user and the wizard get."""
    from lora_core import cli
    from tests.e2e.conftest import make_images

    make_images(tmp_path / "data" / "2_tok", 2)
    profile = tmp_path / "p.toml"
    profile.write_text(f"""
[model]
pretrained_model_name_or_path = "builtin:tiny-sd1"
[dataset]
train_data_dir = "{tmp_path / 'data'}"
resolution = 64
min_bucket_reso = 64
max_bucket_reso = 64
max_data_loader_n_workers = 0
[training]
mixed_precision = "no"
max_train_epochs = 1
[saving]
output_dir = "{tmp_path / 'out'}"
""")

    def no_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    from lora_core.families.sd import objective  # the SD family's objective draws the noise

    monkeypatch.setattr(objective, "make_noise", no_memory)
    events = tmp_path / "events.jsonl"
    code = cli.main(["run", str(profile), "--events", str(events), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "ran out of memory" in err and "Traceback" not in err
    assert "--set training.gradient_checkpointing=true" in err
    (failed,) = [json.loads(line) for line in events.read_text().splitlines()
                 if '"run_failed"' in line]
    assert failed["kind"] == "out_of_memory"
    assert failed["retry_overrides"] == ["training.gradient_checkpointing=true"]
    assert failed["run_dir"] and not failed["resumable"]
    run = read_status(Path(failed["run_dir"]))
    assert run.status == "failed" and "out of memory" in run.message


def test_a_state_is_due_every_n_minutes_without_a_checkpoint(tmp_path, monkeypatch):
    from dataclasses import dataclass, field

    from lora_core.events import EventBus, StateSaved
    from lora_core.profile import SavingSection
    from lora_core.training import checkpoints
    from lora_core.training.checkpoints import Checkpointer, Outputs

    @dataclass
    class State:
        step: int = 0
        epoch: int = 0
        batch_in_epoch: int = 0
        losses: list = field(default_factory=list)

    clock = [1000.0]
    monkeypatch.setattr(checkpoints.time, "monotonic", lambda: clock[0])
    net, opt, sched = trained_optimizer("AdamW")
    saved = []
    bus = EventBus([lambda e: saved.append(e) if isinstance(e, StateSaved) else None])
    outputs = Outputs(tmp_path, "x", {}, "fp16", run_dir=tmp_path)
    state = State()
    keeper = Checkpointer(outputs, SavingSection(output_dir="o", save_state_every_n_minutes=2.0),
                          lambda: position(state.step), net, opt, sched, bus)
    clock[0] += 119
    assert not keeper.state_due()
    clock[0] += 1
    assert keeper.state_due()
    state.step = 7
    keeper.save_state(state)
    assert [e.step for e in saved] == [7] and not keeper.state_due()
    assert latest_state(tmp_path).name == "x-step00000007-state"
    off = Checkpointer(outputs, SavingSection(output_dir="o", save_state=False),
                       lambda: position(1), net, opt, sched, bus)
    clock[0] += 10_000
    assert not off.state_due() and off.save_state(state) is None


def test_status_lists_runs_under_headers_with_a_failed_runs_message_only(state_dir, capsys,
                                                                          tmp_path):
    """A failed run shows its message, not the traceback lines of its log."""
    from lora_core.cli import main
    from lora_core.runs.status import new_status, register_run, write_status

    folder = tmp_path / "runs" / "x"
    folder.mkdir(parents=True)
    (folder / "train.log").write_text("Traceback (most recent call last):\n  File \"a.py\"\n"
                                      "ValueError: boom\n", encoding="utf-8")
    status = new_status(folder, "x", folder / "profile.toml", None, total_steps=10,
                        total_epochs=1)
    status.status, status.message = "failed", "the model file is damaged"
    write_status(status)
    register_run(folder)
    assert main(["status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["STATE", "RUN", "STEP", "AGE", "FOLDER"]
    assert out[1].split()[:3] == ["failed", "x", "0/10"]
    assert any("the model file is damaged" in line for line in out)
    assert not any("Traceback" in line or "File" in line for line in out)


def test_schedule_free_files_hold_the_evaluation_weights_and_states_the_training_ones(tmp_path):
    """With a Schedule-Free optimizer a LoRA file gets the weights it evaluates with (what
    eval() gives), the training state the weights it trains (so a resume goes on from
    them), and the parameters are left exactly as they were."""
    from dataclasses import dataclass, field

    import schedulefree
    from safetensors.torch import load_file

    from lora_core.events import EventBus
    from lora_core.profile import OptimizerSection, SavingSection
    from lora_core.training.checkpoints import Checkpointer, Outputs
    from lora_core.training.optim import evaluation_switch

    @dataclass
    class State:
        step: int = 3
        epoch: int = 0
        batch_in_epoch: int = 3
        losses: list = field(default_factory=list)

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    opt = schedulefree.AdamWScheduleFree(net.parameters(), lr=1e-2)
    switch = evaluation_switch(opt, OptimizerSection(optimizer_type="AdamWScheduleFree"))
    for _ in range(3):
        net(torch.randn(2, 4)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    training = {k: v.clone() for k, v in net.state_dict().items()}
    outputs = Outputs(tmp_path, "x", {}, "float", run_dir=tmp_path)
    keeper = Checkpointer(outputs, SavingSection(output_dir="o"), lambda: position(3), net, opt,
                          sched, EventBus([]), eval_weights=switch)
    path = keeper.save(State(), "step")
    saved = load_file(path)
    state = load_state(latest_state(tmp_path))
    assert all(torch.equal(training[k], v) for k, v in net.state_dict().items())
    assert all(torch.equal(training[k], state.network[k]) for k in training)
    opt.eval()
    evaluating = net.state_dict()
    assert all(torch.equal(evaluating[k], saved[k]) for k in training)
    assert any(not torch.equal(training[k], saved[k]) for k in training)
