"""``lora-train calibrate`` on the tiny model (issue 28): a real measurement in a child
process, its figures beside a real run's, the result remembered, and bad input refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests.e2e.conftest import ROOT


def test_calibrate_measures_predicts_and_remembers(cli, tiny_profile, tmp_path):
    profile = tiny_profile("cal", epochs=4, repeats=2)  # 4 epochs x 2 steps
    code, out, err = cli("calibrate", str(profile), "--steps", "2", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["device"] == "cpu" and result["measured_steps"] == 2
    assert result["total_steps"] == 8 and result["budget_bytes"] is None
    assert 0 < result["seconds_per_step"] < result["first_step_seconds"]
    assert 100 * 2**20 < result["peak_memory_bytes"] < 16 * 2**30
    assert result["eta_seconds"] >= result["eta_parts"]["steps"] > 0
    assert result["proposals"] == [] and result["remembered"] is False
    assert not (tmp_path / "out").exists()  # nothing of the user's was written

    # The same profile on the same machine: shown at once, marked as remembered.
    started = time.monotonic()
    code, out, _ = cli("calibrate", str(profile), "--steps", "2", "--json")
    assert code == 0 and json.loads(out)["remembered"] is True
    assert time.monotonic() - started < 10

    # A budget it fits: no lever to propose (it has no gradient checkpointing to drop).
    code, out, _ = cli("calibrate", str(profile), "--steps", "2", "--memory-budget", "64GiB")
    assert code == 0 and "budget 64.00 GiB: the profile fits" in out

    # The prediction against a real run of the same profile: its peak resident memory.
    env = {**os.environ, "LORA_TUI_STATE_DIR": str(tmp_path / "state-run")}
    child = subprocess.Popen([sys.executable, "-m", "lora_core.cli", "run", str(profile),
                              "--no-progress"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    real_peak = usage.ru_maxrss * 1024
    assert abs(result["peak_memory_bytes"] - real_peak) < 0.2 * real_peak, (
        result["peak_memory_bytes"], real_peak)


def test_calibrate_refuses_bad_input_by_name(cli, tiny_profile):
    profile = tiny_profile("bad")
    code, _, err = cli("calibrate", str(profile), "--memory-budget", "12 gigs")
    assert code == 2 and "--memory-budget '12 gigs' is not a size" in err
    assert "Traceback" not in err
    # What run would refuse, calibrate refuses first, naming the field; nothing is measured.
    code, _, err = cli("calibrate", str(profile), "--set", "training.mixed_precision=fp16")
    assert code == 2 and "mixed_precision" in err and "CUDA" in err
    code, _, err = cli("calibrate", str(profile), "--steps", "0")
    assert code == 2 and "--steps 0" in err


def test_calibrate_measures_a_flux_profile(cli):
    """The Flux family's run measured the same way (its objective, its previews' timing)."""
    profile = ROOT / "examples" / "flux-quickstart.toml"
    code, out, err = cli("calibrate", str(profile), "--steps", "1", "--json", "--again")
    assert code == 0, err
    result = json.loads(out)
    assert result["measured_steps"] == 1 and result["seconds_per_step"] > 0
    assert result["total_steps"] > 1 and result["eta_seconds"] > result["first_step_seconds"]
