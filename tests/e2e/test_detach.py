"""Runs outlive the wizard, with the REAL `lora-train` child on the built-in tiny model.

1. The app starts a run (ProcessRunner, Pilot), quits mid-run: the child keeps training and
   finishes on its own; a new app lists the run and attaching replays it to "finished".
2. A run started elsewhere (a detached `lora-train run`): a new app attaches, S + y stops
   it gracefully: run.json "stopped", an -interrupted LoRA, a resumable state folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from lora_core.runs.status import list_runs, pid_alive, read_status
from lora_tui.app import make_app
from lora_tui.runner import ProcessRunner
from lora_tui.screens.start import StartScreen
from lora_tui.screens.training import TrainingScreen
from tests.e2e.conftest import ROOT
from tests.tui.helpers import SIZE, wait_for


def wait_until(predicate, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.2)


async def test_quitting_the_app_leaves_the_run_going_and_it_can_be_attached(
        tiny_profile, tmp_path, state_dir):
    profile = tiny_profile("detach", repeats=5)  # 10 images, batch 2: 5 steps
    runner = ProcessRunner()
    app = make_app(runner_factory=lambda: runner)
    try:
        async with app.run_test(size=SIZE) as pilot:
            app.start_training(profile)
            screen = app.screen
            await wait_for(pilot, lambda: screen.run_dir is not None, 150)
            run_dir = screen.run_dir
            assert screen.running
            await pilot.press("ctrl+q")
        assert pid_alive(runner.pid), "quitting the app stopped the run"
        assert read_status(run_dir).active
        wait_until(lambda: not read_status(run_dir).active, 150)
        status = read_status(run_dir)
        assert status.status == "finished", status.message
        lora = tmp_path / "out" / "detach.safetensors"
        assert lora.is_file() and status.final_file == str(lora)
    finally:
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.killpg(runner.pid, signal.SIGKILL)

    again = make_app(runner_factory=ProcessRunner)
    async with again.run_test(size=SIZE) as pilot:
        start = again.screen
        assert isinstance(start, StartScreen)
        assert [(r.run_dir, r.status) for r in start.run_list.runs] == [
            (str(run_dir), "finished")]
        await pilot.press("a")
        follower = again.screen
        assert isinstance(follower, TrainingScreen) and follower.mode == "attach"
        await wait_for(pilot, lambda: follower.state == "finished", 20)
        assert len(follower.losses) == 5  # every step replayed


async def test_stop_from_an_attached_app_saves_and_leaves_a_resumable_state(
        tiny_profile, tmp_path, state_dir):
    profile = tiny_profile("halt", repeats=200)  # 200 steps: stopped long before the end
    proc = subprocess.Popen(
        [sys.executable, "-m", "lora_core.cli", "run", str(profile), "--no-progress"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: list_runs() and list_runs()[0].step >= 1, 90)
        run_dir = list_runs()[0].path
        app = make_app(runner_factory=ProcessRunner)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("a")  # the running run is listed first
            screen = app.screen
            assert isinstance(screen, TrainingScreen) and screen.run_dir == run_dir
            await wait_for(pilot, lambda: len(screen.losses) >= 1, 20)
            await pilot.press("s", "y")
            await wait_for(pilot, lambda: not screen.running, 150)
            assert screen.state == "stopped"
            assert screen.resume_dir == run_dir  # C is on offer
        assert proc.wait(30) == 130
        status = read_status(run_dir)
        assert status.status == "stopped"
        assert status.final_file.endswith("-interrupted.safetensors")
        assert (tmp_path / "out" / os.path.basename(status.final_file)).is_file()
        assert status.resumable and (run_dir / "states").is_dir()
        assert status.step < 200
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
