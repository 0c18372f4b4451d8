"""`[logging] log_with = "tensorboard"`: a real run writes TensorBoard event files with the
scalar names sd-scripts writes, read back with tensorboard's own reader."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import run_cli

pytest.importorskip("tensorboard")


def test_a_run_logs_sd_scripts_scalars_for_tensorboard(tiny_profile, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    profile = tiny_profile("curves", epochs=2, repeats=2,
                           logging={"log_with": "tensorboard", "log_prefix": "mychar-",
                                    "logging_dir": str(tmp_path / "logs")},
                           optimizer={"optimizer_type": "AdamW", "learning_rate": 1e-3,
                                      "unet_lr": 1e-3, "text_encoder_lr": 5e-4,
                                      "lr_scheduler": "constant"})
    done = run_cli("run", str(profile), "--no-progress")
    assert done.returncode == 0, done.stderr
    runs = list((tmp_path / "logs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("mychar-")
    folder = runs[0] / "network_train"  # sd-scripts' default tracker name
    events = EventAccumulator(str(folder))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/current", "loss/average", "lr/unet", "lr/textencoder",
            "loss/epoch"} <= tags, tags
    steps = [s.step for s in events.Scalars("loss/current")]
    assert steps == [1, 2, 3, 4]  # 2 images x 2 repeats / batch 2 = 2 steps, 2 epochs
    assert [s.value for s in events.Scalars("lr/textencoder")] == pytest.approx([5e-4] * 4)
    assert [s.step for s in events.Scalars("loss/epoch")] == [1, 2]


def test_check_names_a_missing_tracker_package(tiny_profile):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    profile = tiny_profile("wb", logging={"log_with": "wandb"})
    done = run_cli("check", str(profile))
    assert done.returncode == 2
    assert "needs Weights & Biases, and the wandb package is not installed" in " ".join(
        done.stderr.split())
