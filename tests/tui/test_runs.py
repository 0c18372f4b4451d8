"""Runs that outlive the wizard, driven with Pilot at 80x24: the start screen's run list
(running first, crashed with its log tail), attaching (replay to the final state, stop from
an attached UI, escalation to SIGKILL), leaving or quitting while a run goes on, and the
offers after a failure (L: retry lighter after out-of-memory, C: continue from a state).

Run folders are built with the engine's own ``write_status`` / ``register_run``; live runs
are tests/tui/fake_engine.py, a torch-free stand-in that writes what the engine writes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.text import Text
from textual.widgets import Static

from lora_core.events import RunFailed, RunFinished, RunStarted, StateSaved, StepEnded
from lora_core.runs.status import (
    new_status,
    pid_alive,
    read_status,
    register_run,
    write_status,
)
from lora_tui.app import make_app
from lora_tui.runner import FakeRunner, ProcessRunner
from lora_tui.screens.start import StartScreen
from lora_tui.screens.training import TrainingScreen
from tests.tui.helpers import FAKE_ENGINE, ROOT, SIZE, wait_for


def plain(screen, selector: str) -> str:
    return Text.from_markup(str(screen.query_one(selector, Static).content)).plain


def step(n: int, total: int = 5) -> StepEnded:
    return StepEnded(step=n, total_steps=total, epoch=1, total_epochs=1, loss=0.1 * n,
                     avg_loss=0.1, lrs={"unet": 1e-4}, it_per_s=2.0, eta_s=1.0)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_run(root: Path, name: str, status: str, *, pid: int | None = None, events=(),
             log: str = "", state: bool = False, message: str = "") -> Path:
    """A run folder as the engine leaves it, registered in the state folder's list."""
    run_dir = root / "runs" / name
    run_dir.mkdir(parents=True)
    record = new_status(run_dir, name, run_dir / "profile.toml", None, total_steps=5,
                        total_epochs=1)
    record.status, record.message = status, message
    if pid is not None:
        record.pid, record.pid_started = pid, ""
    if state:
        (run_dir / "states" / "step-2").mkdir(parents=True)
        record.last_state, record.step = str(run_dir / "states" / "step-2"), 2
    write_status(record)
    (run_dir / "events.jsonl").write_text("".join(e.to_json() + "\n" for e in events),
                                          encoding="utf-8")
    (run_dir / "train.log").write_text(log, encoding="utf-8")
    register_run(run_dir)
    return run_dir


def finished_events(run_dir: Path) -> list:
    final = str(run_dir / "done.safetensors")
    return [RunStarted(str(run_dir), "p.toml", "done", str(run_dir / "train.log"),
                       {"max_train_steps": 5}),
            *[step(i) for i in range(1, 6)], RunFinished([final], final, 5, 2.0)]


async def test_start_screen_lists_runs_running_first_and_crashed_with_log_tail(
        tmp_path, state_dir):
    done = make_run(tmp_path, "done", "finished")
    done_events = finished_events(done)
    (done / "events.jsonl").write_text("".join(e.to_json() + "\n" for e in done_events))
    make_run(tmp_path, "alive", "running", pid=os.getpid())  # this test process: alive
    make_run(tmp_path, "dead", "running", pid=dead_pid(),
             log="loading model\nKilled by the OOM killer at step 2\n", state=True)
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, StartScreen)
        rows = [(r.output_name, r.status) for r in screen.run_list.runs]
        # Newest first, but the running one before all; the dead pid reads as crashed.
        assert rows == [("alive", "running"), ("dead", "crashed"), ("done", "finished")]
        assert screen.run_list.get_row_at(2)[2] == "5/5"  # step from events.jsonl
        screen.run_list.focus()
        await pilot.press("down")
        detail = plain(screen, "#start-run-detail")
        assert "the training process is gone" in detail
        assert "Killed by the OOM killer at step 2" in detail
        assert "C: continue" in detail
        # The old keys still work with the list there.
        await pilot.press("q")
    assert app.return_code == 0


async def test_attach_replays_a_finished_run_to_its_final_state(tmp_path, state_dir):
    run_dir = make_run(tmp_path, "done", "finished")
    events = finished_events(run_dir)
    (run_dir / "events.jsonl").write_text("".join(e.to_json() + "\n" for e in events))
    app = make_app(runner_factory=lambda: ProcessRunner(poll_s=0.05))  # the real attach
    async with app.run_test(size=SIZE) as pilot:
        app.screen.run_list.focus()
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, TrainingScreen) and screen.mode == "attach"
        await wait_for(pilot, lambda: screen.state == "finished")
        assert list(screen.losses) == [0.1 * i for i in range(1, 6)]
        result = plain(screen, "#train-result")  # the name whole, its folder to fit 80x24
        assert "The LoRA: done.safetensors in /tmp/" in result and "/runs/done/" in result
        await pilot.press("escape")
        assert isinstance(app.screen, StartScreen)


async def test_attach_to_a_crashed_run_shows_the_log_tail_and_c_resumes(tmp_path, state_dir):
    run_dir = make_run(tmp_path, "dead", "running", pid=dead_pid(), state=True,
                       events=[RunStarted("x", "p.toml", "dead", "log", {}), step(1), step(2)],
                       log="step 2\nSegmentation fault in the data loader\n")
    made: list[FakeRunner] = []

    def factory():
        made.append(FakeRunner([]))
        return ProcessRunner(poll_s=0.05) if len(made) == 1 else made[-1]

    app = make_app(runner_factory=factory)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("a")  # the only run, selected
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "failed")
        assert "crashed" in plain(screen, "#train-phase")
        result = plain(screen, "#train-result")
        assert "Segmentation fault in the data loader" in result
        assert "C: continue (resume)" in result
        await pilot.press("c")
        await wait_for(pilot, lambda: made[-1].calls != [])
        assert made[-1].calls == [("resume", run_dir, ())]
        assert isinstance(app.screen, TrainingScreen) and app.screen.mode == "resume"


async def test_c_on_the_start_screen_resumes_a_stopped_run(tmp_path, state_dir):
    run_dir = make_run(tmp_path, "halt", "stopped", state=True)
    fake = FakeRunner([])
    app = make_app(runner_factory=lambda: fake)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await wait_for(pilot, lambda: fake.calls != [])
        assert fake.calls == [("resume", run_dir, ())]


async def test_out_of_memory_offers_a_lighter_retry_with_the_engines_overrides(tmp_path):
    oom = RunFailed("CUDA out of memory", "lower the batch size", "", kind="out_of_memory",
                    retry_overrides=["training.gradient_checkpointing=true"],
                    retry_description="gradient checkpointing on (slower steps, much less "
                                      "memory)")
    first, second = FakeRunner([step(1), oom]), FakeRunner([step(1)])
    made = iter([first, second])
    app = make_app(runner_factory=lambda: next(made))
    async with app.run_test(size=SIZE) as pilot:
        app.start_training(tmp_path / "p.toml", extra_args=["--set", "training.seed=3"])
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "failed")
        assert "L: retry with gradient checkpointing on" in plain(screen, "#train-result")
        assert "C: continue" not in plain(screen, "#train-result")  # not resumable
        await pilot.press("c")  # not on offer: nothing happens
        await pilot.press("l")
        await wait_for(pilot, lambda: second.calls != [])
        assert second.calls == [("run", tmp_path / "p.toml",
                                 ("--set", "training.seed=3",
                                  "--set", "training.gradient_checkpointing=true"))]
        # In place of the failed screen: Back goes where that one would have.
        assert len([s for s in app.screen_stack if isinstance(s, TrainingScreen)]) == 1


async def test_out_of_memory_offers_the_measured_settings_that_fit(tmp_path, monkeypatch):
    """Issue 28: after running out of memory, K measures what fits (the engine's calibrate,
    faked here) with the run's own --set items, and the proposal taken trains at once."""
    import json
    import sys

    from lora_tui.dialogs import calibrate as dialog

    result = {"seconds_per_step": 1.0, "first_step_seconds": 20.0,
              "peak_memory_bytes": 30 * 2**30, "eta_seconds": 900.0, "eta_parts": {},
              "total_steps": 800, "device": "cuda:0 (RTX 3060)", "torch_version": "2.13.0",
              "measured_steps": 6, "budget_bytes": 11 * 2**30, "free_memory_bytes": None,
              "remembered": False,
              "proposals": [{"set": ["training.gradient_checkpointing=true"],
                             "seconds_per_step": 1.3, "peak_memory_bytes": 9 * 2**30,
                             "fits": True, "note": ""}]}
    asked: list = []

    def fake_argv(profile, budget, overrides=()):
        asked.append((profile, list(overrides)))
        return [sys.executable, "-c", f"print({json.dumps(json.dumps(result))})"]

    monkeypatch.setattr(dialog, "calibrate_argv", fake_argv)
    oom = RunFailed("CUDA out of memory", "lower the batch size", "", kind="out_of_memory",
                    retry_overrides=["training.gradient_checkpointing=true"])
    first, second = FakeRunner([step(1), oom]), FakeRunner([step(1)])
    made = iter([first, second])
    app = make_app(runner_factory=lambda: next(made))
    async with app.run_test(size=SIZE) as pilot:
        app.start_training(tmp_path / "p.toml", extra_args=["--set", "training.seed=3"])
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "failed")
        assert "K: measure the settings that fit" in plain(screen, "#train-result")
        await pilot.press("k")
        await wait_for(pilot, lambda: isinstance(app.screen, dialog.CalibrateDialog))
        assert asked == [(tmp_path / "p.toml", ["training.seed=3"])]
        await wait_for(pilot, lambda: app.screen.result is not None)
        await pilot.press("1")
        await wait_for(pilot, lambda: second.calls != [])
        assert second.calls == [("run", tmp_path / "p.toml",
                                 ("--set", "training.seed=3",
                                  "--set", "training.gradient_checkpointing=true"))]


async def test_a_failure_without_the_oom_kind_offers_no_retry(tmp_path):
    failed = RunFailed("the loss became NaN", "lower the learning rate", "",
                       kind="non_finite_loss", retry_overrides=["x.y=1"],
                       run_dir=str(tmp_path), resumable=True)
    first, second = FakeRunner([failed]), FakeRunner([])
    made = iter([first, second])
    app = make_app(runner_factory=lambda: next(made))
    async with app.run_test(size=SIZE) as pilot:
        app.start_training(tmp_path / "p.toml")
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "failed")
        await pilot.press("l")
        await pilot.pause()
        assert second.calls == []
        await pilot.press("c")
        await wait_for(pilot, lambda: second.calls != [])
        assert second.calls == [("resume", tmp_path, ())]


async def test_run_resumed_and_state_saved_are_shown(tmp_path):
    from lora_core.events import RunResumed

    fake = FakeRunner([RunStarted(str(tmp_path), "p.toml", "x", "log", {"max_train_steps": 9}),
                       RunResumed(str(tmp_path / "states" / "s4"), 4, 1), step(5, 9),
                       StateSaved(str(tmp_path / "states" / "s5"), 5, 1)], delay_s=0.05)
    app = make_app(runner_factory=lambda: fake)
    async with app.run_test(size=SIZE) as pilot:
        app.resume_run(tmp_path)
        screen = app.screen
        await wait_for(pilot, lambda: screen.states_saved == 1)
        assert screen.resumed_from_step == 4
        assert "state (step 5)" in plain(screen, "#train-files")
        assert fake.calls == [("resume", tmp_path, ())]


def _fake_engine(monkeypatch, run_dir: Path, *flags: str) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setattr("lora_tui.runner.train_command", lambda profile, events, extra=(): [
        sys.executable, str(FAKE_ENGINE), str(events), str(run_dir), *flags])


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


async def test_escape_and_quit_leave_the_run_going(tmp_path, state_dir, monkeypatch):
    run_dir = tmp_path / "run"
    _fake_engine(monkeypatch, run_dir)
    runner = ProcessRunner(poll_s=0.05)
    app = make_app(runner_factory=lambda: runner)
    try:
        async with app.run_test(size=SIZE) as pilot:
            app.start_training(tmp_path / "p.toml")
            screen = app.screen
            await wait_for(pilot, lambda: len(screen.losses) >= 1)
            await pilot.press("escape")
            assert isinstance(app.screen, StartScreen)
            assert any("background" in str(n.message) for n in app._notifications)
            await wait_for(pilot, lambda: app.screen.run_list.runs != [])
            assert app.screen.run_list.runs[0].status == "running"
            assert not runner.stop_requested
            await pilot.pause(0.3)
            assert pid_alive(runner.pid)  # the cancelled follower did not touch it
            assert str(run_dir) in app.background_message()
            await pilot.press("ctrl+q")
        assert pid_alive(runner.pid)  # quitting the app did not stop it either
        steps_then = read_status(run_dir).step
        time.sleep(0.5)
        assert read_status(run_dir).step > steps_then  # still training
    finally:
        _kill(runner.pid)


async def test_stop_from_an_attached_ui_and_escalation(tmp_path, state_dir, monkeypatch):
    """S + y on a run this app did not start: SIGINT through run.json, the run saves and
    says stopped. A run that ignores SIGINT is killed kill_after_s later."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    procs = []
    for name, flags in (("polite", []), ("stubborn", ["--ignore-sigint"])):
        procs.append(subprocess.Popen(
            [sys.executable, str(FAKE_ENGINE), str(tmp_path / f"{name}.jsonl"),
             str(tmp_path / name), *flags], start_new_session=True))
    try:
        for name in ("polite", "stubborn"):
            deadline = time.monotonic() + 10
            while not (tmp_path / name / "run.json").is_file() \
                    or read_status(tmp_path / name).step < 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        app = make_app(runner_factory=lambda: ProcessRunner(kill_after_s=0.5, poll_s=0.05))
        async with app.run_test(size=SIZE) as pilot:
            for name, end_state in (("polite", "stopped"), ("stubborn", "failed")):
                app.attach_run(tmp_path / name)
                screen = app.screen
                await wait_for(pilot, lambda s=screen: len(s.losses) >= 1)
                await pilot.press("s", "y")
                await wait_for(pilot, lambda s=screen: not s.running, 10)
                assert screen.state == end_state, plain(screen, "#train-result")
                await pilot.press("escape")
        assert procs[0].wait(5) == 130
        assert read_status(tmp_path / "polite").status == "stopped"
        assert read_status(tmp_path / "polite").resumable
        assert procs[1].wait(5) == -signal.SIGKILL
        assert read_status(tmp_path / "stubborn").status == "crashed"
    finally:
        for proc in procs:
            _kill(proc.pid)
            proc.wait()


async def test_the_kill_after_a_stop_spares_the_run_continued_in_the_same_folder(
        tmp_path, state_dir, monkeypatch):
    """S, then C before the stopped run's process had gone (its screen, and the following,
    closed): the kill timer of the stop, still set, once SIGKILLed the continued run in
    the same run folder two minutes later ("lora-train exited with code -9")."""
    import asyncio

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    run_dir = tmp_path / "run"

    def engine() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(FAKE_ENGINE), str(tmp_path / "e.jsonl"),
                                 str(run_dir)], start_new_session=True)

    def started(proc: subprocess.Popen) -> bool:
        return (run_dir / "run.json").is_file() and read_status(run_dir).pid == proc.pid \
            and read_status(run_dir).step >= 1

    first = engine()
    resumed = None
    try:
        deadline = time.monotonic() + 10
        while not started(first):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        runner = ProcessRunner(kill_after_s=1.0, poll_s=0.05)
        following = asyncio.ensure_future(runner.attach(run_dir, lambda _: None))
        await asyncio.sleep(0.2)
        runner.stop()  # SIGINT; the kill follows kill_after_s later if it is still going
        following.cancel()  # the screen closed (C switched to the continued run's screen)
        assert first.wait(5) == 130
        resumed = engine()  # the continued run, in the same folder
        deadline = time.monotonic() + 10
        while not started(resumed):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # past kill_after_s
        assert resumed.poll() is None, "the continued run was killed"
    finally:
        for proc in (first, resumed):
            if proc is not None:
                _kill(proc.pid)
                proc.wait()
