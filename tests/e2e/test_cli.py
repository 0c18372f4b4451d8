"""The headless CLI on small real runs: check, bad datasets, names, rerun-last, queue, Ctrl+C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_core.events import RunFailed, read_events
from tests.e2e.conftest import QUICKSTART, ROOT, make_images, run_cli, snapshot


def test_check_prints_the_plan_without_importing_torch(tmp_path):
    # Its own output folder: `./run.sh` trains the quickstart into output/quickstart, and a
    # check there (rightly) plans the run under a free name instead.
    out = f"saving.output_dir={tmp_path / 'out'}"
    code = ("import runpy, sys; sys.argv = ['lora-train', 'check', " + repr(str(QUICKSTART))
            + ", '--set', " + repr(out) + "]\n"
            "try:\n    runpy.run_module('lora_core.cli', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print('HEAVY', sorted(m for m in ('torch', 'diffusers', 'transformers') "
            "if m in sys.modules))\nsys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    for text in ("10_ohwx cube", "1_cube", "64x64", "40"):
        assert text in proc.stdout
    assert "quickstart-000001.safetensors" in proc.stdout


def test_concept_folder_instead_of_parent_names_the_parent(tmp_path, tiny_profile):
    profile = tiny_profile("mistake")
    concept = tmp_path / "data-mistake" / "1_tok thing"
    before = snapshot(tmp_path / "data-mistake")
    for command in ("check", "run"):
        proc = run_cli(command, str(profile), "--set",
                       f"dataset.train_data_dir={json.dumps(str(concept))}")
        assert proc.returncode == 2, proc.stderr
        assert str(tmp_path / "data-mistake") in proc.stderr
        assert "Traceback" not in proc.stderr
    assert snapshot(tmp_path / "data-mistake") == before
    assert not (tmp_path / "out").exists()


def test_undecodable_image_stops_the_run_before_any_model_loads(tmp_path, tiny_profile):
    profile = tiny_profile("broken")
    folder = tmp_path / "data-broken" / "1_tok thing"
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    before = snapshot(tmp_path / "data-broken")
    proc = run_cli("run", str(profile))
    assert proc.returncode == 2
    assert "bad.png" in proc.stderr and "hint:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(tmp_path / "data-broken") == before
    proc = run_cli("check", str(profile))
    assert proc.returncode == 2 and "bad.png" in proc.stderr  # under Problems


def test_missing_model_folder_is_a_clear_error(tmp_path, tiny_profile):
    profile = tiny_profile("nomodel", model={"pretrained_model_name_or_path": "no/such/model"})
    proc = run_cli("run", str(profile), "--events", str(tmp_path / "ev.jsonl"))
    assert proc.returncode == 2
    assert "no/such/model" in proc.stderr and "Traceback" not in proc.stderr
    failed = [e for e in read_events(tmp_path / "ev.jsonl") if isinstance(e, RunFailed)]
    assert failed and "no/such/model" in failed[0].message and failed[0].log_path


def test_second_run_never_overwrites_and_rerun_last_repeats(tmp_path, tiny_profile, state_dir):
    profile = tiny_profile("again")
    env = {"LORA_TUI_STATE_DIR": str(state_dir)}
    first = run_cli("run", str(profile), env=env)
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    original = (out / "again.safetensors").read_bytes()
    second = run_cli("rerun-last", env=env)
    assert second.returncode == 0, second.stderr
    assert "again_2" in second.stderr
    assert (out / "again_2.safetensors").is_file()
    assert (out / "again.safetensors").read_bytes() == original
    assert len(list((out / "runs").iterdir())) == 2


def test_rerun_last_without_history_explains(state_dir):
    proc = run_cli("rerun-last", env={"LORA_TUI_STATE_DIR": str(state_dir)})
    assert proc.returncode == 2 and "no earlier run" in proc.stderr


def test_queue_continues_after_failure_and_reports(tmp_path, tiny_profile):
    good1 = tiny_profile("first")
    bad = tiny_profile("second", network={"network_weights": "missing.safetensors"})
    good2 = tiny_profile("third")
    proc = run_cli("queue", str(good1), str(bad), str(good2), "--continue-on-error")
    assert proc.returncode == 1
    table = proc.stdout
    assert "first.toml" in table and "third.toml" in table
    lines = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert " done " in lines[str(good1)] and "first.safetensors" in lines[str(good1)]
    assert " failed " in lines[str(bad)] and "missing.safetensors" in lines[str(bad)]
    assert " done " in lines[str(good2)]
    # without --continue-on-error the queue stops at the failure
    proc = run_cli("queue", str(bad), str(good1))
    assert proc.returncode == 1 and " skipped " in proc.stdout


def test_ctrl_c_saves_what_was_trained(tmp_path, tiny_profile):
    profile = tiny_profile("long", epochs=200)
    events = tmp_path / "ev.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "lora_core.cli", "run", str(profile),
                             "--events", str(events)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    deadline = time.time() + 300
    while time.time() < deadline:
        if events.exists() and '"step_ended"' in events.read_text(encoding="utf-8"):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    saved = Path(tmp_path / "out" / "long-interrupted.safetensors")
    assert saved.is_file()
    assert not (tmp_path / "out" / "long.safetensors").exists()
    finished = [json.loads(line) for line in events.read_text().splitlines()][-1]
    assert finished["type"] == "run_finished" and finished["interrupted"] is True


def test_events_to_stdout_are_pure_json_and_a_random_seed_is_recorded(tiny_profile):
    profile = tiny_profile("stdout", training={"seed": None})
    proc = run_cli("run", str(profile), "--events", "-")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["type"] == "run_started" and events[-1]["type"] == "run_finished"
    seed = events[0]["plan"]["seed"]
    assert isinstance(seed, int)
    from lora_core.saving.lora_file import read_metadata

    assert read_metadata(Path(events[-1]["final_file"]))["ss_seed"] == str(seed)


def test_ctrl_c_in_a_queue_lets_the_run_save_and_skips_the_rest(tmp_path, tiny_profile):
    long = tiny_profile("qlong", epochs=200)
    other = tiny_profile("qother")
    proc = subprocess.Popen([sys.executable, "-m", "lora_core.cli", "queue", str(long),
                             str(other)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ),
                            start_new_session=True)
    deadline = time.time() + 300
    runs = tmp_path / "out" / "runs"
    while time.time() < deadline:
        logs = list(runs.glob("qlong-*/events.jsonl")) if runs.exists() else []
        if logs and '"step_ended"' in logs[0].read_text(encoding="utf-8"):
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl+C reaches the whole group
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    assert (tmp_path / "out" / "qlong-interrupted.safetensors").is_file()
    lines = {line.split()[0]: line for line in stdout.splitlines()[1:] if line.strip()}
    assert " stopped " in lines[str(long)] and " skipped " in lines[str(other)]
    assert not (tmp_path / "out" / "qother.safetensors").exists()


def test_output_inside_the_dataset_is_refused(tmp_path, tiny_profile):
    profile = tiny_profile("inside")
    inside = tmp_path / "data-inside" / "out"
    before = snapshot(tmp_path / "data-inside")
    proc = run_cli("run", str(profile), "--set", f"saving.output_dir={json.dumps(str(inside))}")
    assert proc.returncode == 2 and "never writes into a dataset" in proc.stderr
    assert snapshot(tmp_path / "data-inside") == before and not inside.exists()


def test_network_weights_that_is_not_a_lora_is_refused_before_loading(tmp_path, tiny_profile):
    import numpy as np
    from safetensors.numpy import save_file

    other = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.x": np.zeros(2, dtype=np.float32)}, str(other))
    profile = tiny_profile("notlora", network={"network_weights": str(other)})
    proc = run_cli("check", str(profile))
    assert proc.returncode == 2 and "a full model checkpoint, not a LoRA" in proc.stderr


def test_damaged_image_found_while_training_is_a_clear_error(tmp_path, tiny_profile):
    """Damage the check cannot see without decoding (a truncated file it does see: the
    bad-input corpus covers that): the loader finds it during training."""
    profile = tiny_profile("trunc", dataset={"max_data_loader_n_workers": 1})
    image = tmp_path / "data-trunc" / "1_tok thing" / "0.png"
    from PIL import Image

    Image.effect_noise((64, 64), 60).convert("RGB").save(image)
    data = bytearray(image.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # pixel data damaged; size and end marker intact
    image.write_bytes(bytes(data))
    proc = run_cli("run", str(profile))
    assert proc.returncode == 2, proc.stderr
    assert "0.png" in proc.stderr and "Traceback" not in proc.stderr
    assert "Caught" not in proc.stderr and "hint:" in proc.stderr
    assert "must be fixed before training" not in proc.stderr  # found by the loader, late


def _images_directly_inside(root: Path) -> Path:
    make_images(root, 2)
    return root


def _only_unnumbered_folders(root: Path) -> Path:
    make_images(root / "tok thing", 2)
    return root


def _non_utf8_caption(root: Path) -> Path:
    make_images(root / "2_tok", 2)
    (root / "2_tok" / "0.txt").write_bytes("caf\xe9, tag".encode("latin-1"))
    return root


def _empty_concept_folder(root: Path) -> Path:
    (root / "3_empty").mkdir(parents=True)
    return root


@pytest.mark.parametrize("build, expected", [
    (lambda root: root / "missing", "missing"),
    (_images_directly_inside, "<repeats>_"),
    (_only_unnumbered_folders, "tok thing"),
    (_non_utf8_caption, "0.txt"),
    (_empty_concept_folder, "3_empty"),
], ids=["missing-dir", "images-in-parent", "no-repeats-prefix", "non-utf8-caption",
        "no-images"])
def test_dataset_mistakes_exit_2_with_a_named_path_and_change_nothing(
        tmp_path, tiny_profile, build, expected):
    root = build(tmp_path / "ds")
    profile = tiny_profile("mistakes", dataset={"train_data_dir": str(root)})
    before = snapshot(tmp_path / "ds") if (tmp_path / "ds").exists() else {}
    for command in ("check", "run"):
        proc = run_cli(command, str(profile))
        output = proc.stdout + proc.stderr
        assert proc.returncode == 2, output
        assert expected in output
        assert "Traceback" not in output
    after = snapshot(tmp_path / "ds") if (tmp_path / "ds").exists() else {}
    assert after == before
    assert not (tmp_path / "out").exists()


def test_missing_reg_folder_is_named(tmp_path, tiny_profile):
    profile = tiny_profile("noreg", dataset={"reg_data_dir": str(tmp_path / "no-reg")})
    proc = run_cli("run", str(profile))
    assert proc.returncode == 2 and "no-reg" in proc.stderr and "reg_data_dir" in proc.stderr


def test_signal_save_now_and_sample_now_act_after_the_current_step(tmp_path, tiny_profile):
    """`lora-train signal RUN --save-now --sample-now` while a run goes: after the step it
    is on, a LoRA file and sample images with the names sd-scripts gives a step's files;
    the run goes on training after them. A run that is not going is refused by name."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("tok thing --w 64 --h 64 --s 2 --d 3\n", encoding="utf-8")
    profile = tiny_profile("now", epochs=200, sample={"sample_prompts": str(prompts)})
    proc = subprocess.Popen([sys.executable, "-m", "lora_core.cli", "run", str(profile)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ))
    try:
        runs = tmp_path / "out" / "runs"
        deadline = time.time() + 300

        def events() -> list[dict]:
            logs = list(runs.glob("now-*/events.jsonl")) if runs.exists() else []
            if not logs:
                return []
            return [json.loads(line) for line in
                    logs[0].read_text(encoding="utf-8").splitlines() if line.strip()]

        while time.time() < deadline and not any(e["type"] == "step_ended" for e in events()):
            time.sleep(0.2)
        run_dir = next(runs.glob("now-*"))
        asked = run_cli("signal", str(run_dir), "--save-now", "--sample-now")
        assert asked.returncode == 0, asked.stderr
        while time.time() < deadline:
            seen = events()
            saved = [e for e in seen if e["type"] == "checkpoint_saved" and e["kind"] == "step"]
            samples = [e for e in seen if e["type"] == "sample_saved"]
            later = saved and [e for e in seen if e["type"] == "step_ended"
                               and e["step"] > saved[0]["step"]]
            if samples and later:  # and training went on after them
                break
            time.sleep(0.2)
        assert saved and samples and later, seen[-5:]
        step = saved[0]["step"]
        assert Path(saved[0]["path"]).name == f"now-step{step:08d}.safetensors"
        assert Path(saved[0]["path"]).is_file()
        assert samples[0]["step"] == step and samples[0]["epoch"] is None
        assert Path(samples[0]["path"]).name.startswith(f"now_{step:06d}_00_")
        assert not (run_dir / "requests" / "save-now").exists()  # taken, not done again
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=300)
    ended = run_cli("signal", str(run_dir), "--save-now")
    assert ended.returncode != 0 and "is not running" in ended.stderr
    assert "Traceback" not in ended.stderr
    nothing = run_cli("signal", str(run_dir))
    assert nothing.returncode != 0 and "--save-now" in nothing.stderr
