"""Issue 29 end to end: the best file by validation loss, the sample grid, notifications.

One 4-epoch run covers the best file, the grid, the command and a webhook on a local HTTP
server (127.0.0.1 only); the others are short: a NaN run notifies "failed", a kill -9 and
resume keeps the best file and the grid right, and bad notification input leaves runs
unharmed."""

from __future__ import annotations

import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from PIL import Image

from lora_core.saving.lora_file import read_lora, read_metadata
from lora_core.saving.sample_grid import grid_size_px
from tests.e2e.conftest import (
    events,
    run_cli,
    run_folder,
    start,
    wait_for_step,
    write_profile,
)

SECRET = "s3cr3t-t0ken"
PROMPTS = "tok thing --w 64 --h 64 --s 2 --d 3\nred thing --w 64 --h 64 --s 2 --d 4\n"
# 5 images, 2 held out: 3 steps per epoch, 4 epochs, a file and validation at each.
RUN = {"images": 5, "repeats": 1,
       "optimizer": {"learning_rate": 1e-2, "lr_scheduler": None},
       "training": {"max_train_epochs": 4, "validation_split": 0.4, "seed": 5},
       "saving": {"save_every_n_epochs": 1, "save_every_n_steps": None}}
# Writes its LORA_TRAIN_* environment as JSON, one line per call.
RECORDER = ("import json, os, sys; open(sys.argv[1], 'a').write(json.dumps({k: v for k, v "
            "in os.environ.items() if k.startswith('LORA_TRAIN_')}) + '\\n')")


class Hook:
    """A webhook endpoint on 127.0.0.1 that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers["Content-Length"])
                hook.bodies.append(json.loads(self.rfile.read(length)))
                hook.paths.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    server = Hook()
    yield server
    server.close()


def recorder(path: Path) -> str:
    return f"{sys.executable} -c \"{RECORDER}\" {path}"


def validation_at_epochs(stream: Path) -> dict[int, float]:
    return {e["epoch"]: e["loss"] for e in events(stream)
            if e["type"] == "validation_measured" and e["kind"] == "epoch"}


def test_four_epochs_best_file_grid_and_both_notifications(tmp_path, hook):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS, encoding="utf-8")
    said = tmp_path / "said.jsonl"
    profile = write_profile(
        tmp_path, "best", **RUN,
        sample={"sample_prompts": str(prompts), "sample_every_n_epochs": 1,
                "sample_at_first": True},
        notify={"command": recorder(said), "webhook": hook.url(f"/hook/{SECRET}")})
    stream = tmp_path / "best.jsonl"
    state = tmp_path / "state"
    result = run_cli("run", str(profile), "--events", str(stream),
                     env={"LORA_TUI_STATE_DIR": str(state)})
    assert result.returncode == 0, result.stderr
    out, run = tmp_path / "out-best", run_folder(tmp_path / "out-best")

    # The best file: the saved file with the lowest validation loss, with its metadata.
    losses = validation_at_epochs(stream)
    assert sorted(losses) == [1, 2, 3, 4] and len(set(losses.values())) > 1
    best_epoch = min(losses, key=losses.get)
    source = out / ("best.safetensors" if best_epoch == 4 else f"best-{best_epoch:06d}.safetensors")
    best_tensors, best_meta = read_lora(out / "best-best.safetensors")
    source_tensors, _ = read_lora(source)
    assert best_tensors.keys() == source_tensors.keys()
    assert all((best_tensors[k] == source_tensors[k]).all() for k in best_tensors)
    assert best_meta["lora_train_best_of"] == source.name
    assert best_meta["lora_train_best_epoch"] == str(best_epoch)
    assert best_meta["lora_train_best_step"] == str(3 * best_epoch)
    assert float(best_meta["lora_train_best_validation_loss"]) == losses[best_epoch]
    finished = [e for e in events(stream) if e["type"] == "run_finished"][-1]
    assert finished["best_file"] == str(out / "best-best.safetensors")
    assert finished["final_file"] == str(out / "best.safetensors")  # not the best copy
    status = json.loads((run / "run.json").read_text())
    assert status["best_file"] == str(out / "best-best.safetensors")
    assert status["best_validation_loss"] == losses[best_epoch]
    shown = run_cli("status", str(run), env={"LORA_TUI_STATE_DIR": str(state)})
    assert "best-best.safetensors" in shown.stdout and "best_grid.png" in shown.stdout

    # The grid: one row per prompt, one column per sampling point (start + 4 epochs).
    grid = out / "sample" / "best_grid.png"
    with Image.open(grid) as image:
        assert image.size == grid_size_px(2, 5)
    again = run_cli("grid", str(run), "-o", str(tmp_path / "again.png"))
    assert again.returncode == 0, again.stderr
    with Image.open(tmp_path / "again.png") as image:
        assert image.size == grid_size_px(2, 5)

    # The command and the webhook heard "finished" with the file.
    (env,) = [json.loads(line) for line in said.read_text().splitlines()]
    assert env["LORA_TRAIN_STATUS"] == "finished"
    assert env["LORA_TRAIN_FILE"] == str(out / "best.safetensors")
    assert env["LORA_TRAIN_BEST_FILE"] == str(out / "best-best.safetensors")
    assert env["LORA_TRAIN_RUN_DIR"] == str(run)
    (body,) = hook.bodies
    assert body["status"] == "finished" and body["file"] == str(out / "best.safetensors")
    assert body["steps"] == 12 and body["best_validation_loss"] == losses[best_epoch]
    assert body["text"] == body["content"] and "finished" in body["text"]
    assert hook.paths == [f"/hook/{SECRET}"]
    # The literal URL's secret is in no log, event, status or file metadata.
    for path in (stream, run / "events.jsonl", run / "train.log", run / "run.json"):
        assert SECRET not in path.read_text(encoding="utf-8"), path
    assert not any(SECRET in value for value in read_metadata(source).values())
    assert "127.0.0.1" in result.stdout + result.stderr  # where it went: the host only
    exported = run_cli("export", str(profile), "--sd-scripts", str(tmp_path / "exported"))
    assert exported.returncode == 0, exported.stderr
    text = "".join(p.read_text() for p in (tmp_path / "exported").iterdir() if p.is_file())
    assert SECRET not in text
    not_exported = (tmp_path / "exported" / "NOT-EXPORTED.txt").read_text()
    assert "[notify] command" in not_exported and "[notify] webhook http://127.0.0.1" in \
        not_exported


def test_nan_loss_notifies_failed_with_the_reason(tmp_path, hook, monkeypatch):
    said = tmp_path / "said.jsonl"
    monkeypatch.setenv("LT_TEST_HOOK", hook.url())
    profile = write_profile(tmp_path, "nan", saving={"save_every_n_steps": 1},
                            notify={"command": recorder(said), "webhook": "$LT_TEST_HOOK",
                                    "on": ["failed"]})
    profile.write_text(profile.read_text().replace("learning_rate = 0.001",
                                                   "learning_rate = 1e12"))
    result = run_cli("run", str(profile), "--no-progress",
                     env={"LORA_TUI_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode == 1, result.stderr
    (env,) = [json.loads(line) for line in said.read_text().splitlines()]
    assert env["LORA_TRAIN_STATUS"] == "failed"
    # Either NaN check (the step's loss, or the weights at a save) names NaN and the step.
    assert "nan" in env["LORA_TRAIN_MESSAGE"].lower() and "step" in env["LORA_TRAIN_MESSAGE"]
    (body,) = hook.bodies
    assert body["status"] == "failed" and body["message"] == env["LORA_TRAIN_MESSAGE"]


def test_kill_9_and_resume_keep_the_best_file_and_the_grid(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS, encoding="utf-8")
    profile = write_profile(
        tmp_path, "kill", **RUN,
        sample={"sample_prompts": str(prompts), "sample_every_n_epochs": 1})
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    state = tmp_path / "state"
    child = start(profile, first, state)
    wait_for_step(first, 8, child)  # two epochs saved, validated and sampled
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    out = tmp_path / "out-kill"
    assert (out / "kill-best.safetensors").is_file()
    result = run_cli("resume", str(run_folder(out)), "--events", str(second), "--no-progress",
                     env={"LORA_TUI_STATE_DIR": str(state)})
    assert result.returncode == 0, result.stderr
    (point,) = [e for e in events(second) if e["type"] == "run_resumed"]
    # Every epoch's validation, whichever attempt measured it (the resumed one wins).
    losses = {e["epoch"]: e["loss"] for e in events(first) + events(second)
              if e["type"] == "validation_measured" and e["kind"] == "epoch"
              and (e in events(second) or e["step"] <= point["step"])}
    assert sorted(losses) == [1, 2, 3, 4]
    best_epoch = min(losses, key=losses.get)
    source = out / ("kill.safetensors" if best_epoch == 4 else f"kill-{best_epoch:06d}.safetensors")
    best_tensors, best_meta = read_lora(out / "kill-best.safetensors")
    source_tensors, _ = read_lora(source)
    assert all((best_tensors[k] == source_tensors[k]).all() for k in best_tensors)
    assert best_meta["lora_train_best_epoch"] == str(best_epoch)
    with Image.open(out / "sample" / "kill_grid.png") as image:
        assert image.size == grid_size_px(2, 4)  # epochs 1-4, none twice


@pytest.mark.parametrize("notify, expected", [
    ({"webhook": "http://127.0.0.1:9/unreachable"}, "could not be reached"),
    ({"command": "no-such-notifier-program --now"}, "command not found"),
    ({"command": f"{sys.executable} -c \"raise SystemExit(3)\""}, "exited with status 3"),
], ids=["unreachable-webhook", "missing-command", "failing-command"])
def test_a_failing_notification_is_a_warning_and_the_run_is_unharmed(tmp_path, notify,
                                                                     expected):
    profile = write_profile(tmp_path, "bad", images=2, repeats=1,
                            training={"max_train_epochs": 1}, notify=notify)
    stream = tmp_path / "bad.jsonl"
    result = run_cli("run", str(profile), "--events", str(stream), "--no-progress",
                     env={"LORA_TUI_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "out-bad" / "bad.safetensors").is_file()
    warnings = [e["message"] for e in events(stream) if e["type"] == "warning"]
    assert any(expected in w and "notification failed" in w for w in warnings), warnings
    assert expected in result.stderr
    status = json.loads((run_folder(tmp_path / "out-bad") / "run.json").read_text())
    assert status["status"] == "finished"


def test_patience_zero_and_patience_without_validation_are_refused(tmp_path):
    zero = write_profile(tmp_path, "zero", training={"validation_split": 0.4,
                                                     "early_stopping_patience": 0})
    result = run_cli("check", str(zero))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "`[training] early_stopping_patience` = 0 is out of range: it must be at\n    " \
        "least 1" in result.stdout + result.stderr
    alone = write_profile(tmp_path, "alone", training={"early_stopping_patience": 2})
    result = run_cli("run", str(alone), "--no-progress",
                     env={"LORA_TUI_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    text = " ".join((result.stdout + result.stderr).split())
    assert "early_stopping_patience` = 2 counts validations, and there are none" in text
    assert not (tmp_path / "out-alone").exists()  # refused before anything started


def test_early_stopping_ends_a_finished_run_with_a_line_saying_why(tmp_path):
    # A validation every step and a patience of 2. At a learning rate of 1e-30 the network
    # changes far below float32's resolution, so no validation after the first is lower.
    profile = write_profile(tmp_path, "early", images=5, repeats=1,
                            optimizer={"learning_rate": 1e-30, "lr_scheduler": None},
                            training={"max_train_epochs": 3, "validation_split": 0.4,
                                      "validate_every_n_steps": 1,
                                      "early_stopping_patience": 2},
                            saving={"save_every_n_steps": None})
    stream = tmp_path / "early.jsonl"
    result = run_cli("run", str(profile), "--events", str(stream),
                     env={"LORA_TUI_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode == 0, result.stderr
    measured = {e["step"]: e["loss"] for e in events(stream)
                if e["type"] == "validation_measured"}
    lowest, since, expected = None, 0, None
    for step in sorted(measured):
        if lowest is None or measured[step] < lowest:
            lowest, since = measured[step], 0
        else:
            since += 1
            if since == 2:
                expected = step
                break
    assert expected is not None and expected < 9, measured  # it does stop early
    (stopped,) = [e for e in events(stream) if e["type"] == "stopped_early"]
    assert stopped["step"] == expected and "early_stopping_patience = 2" in stopped["message"]
    finished = [e for e in events(stream) if e["type"] == "run_finished"][-1]
    assert not finished["interrupted"] and finished["steps"] == expected
    assert finished["stop_reason"] == stopped["message"]
    assert finished["final_file"].endswith("early.safetensors")
    assert "stopped early at step" in result.stderr  # the progress lines
    status = json.loads((run_folder(tmp_path / "out-early") / "run.json").read_text())
    assert status["status"] == "finished" and "stopped early" in status["message"]
