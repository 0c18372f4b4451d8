"""The README's main job: `lora-train run examples/quickstart.toml`, checked by diffusers.

A real consumer loads the file: every module in it must be applied to the pipeline (the
fused weight change equals alpha/dim · up·down, module by module; diffusers only *warns*
on names it does not know), and the U-Net's output must change.
"""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from lora_core.events import (
    CheckpointSaved,
    EpochEnded,
    RunFinished,
    RunStarted,
    StepEnded,
    read_events,
)
from tests.e2e.conftest import (
    QUICKSTART,
    ROOT,
    assert_diffusers_applies_every_module,
    run_cli,
    snapshot,
)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart-out")
    dataset = ROOT / "examples" / "dataset"
    before = snapshot(dataset)
    proc = run_cli("run", str(QUICKSTART), "--set", f"saving.output_dir={out}",
                   "--events", str(out / "stream.jsonl"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "proc": proc, "dataset_before": before, "dataset": dataset}


def test_writes_final_epoch_and_tag_files_and_leaves_dataset_untouched(quickstart):
    out = quickstart["out"]
    assert (out / "quickstart.safetensors").is_file()
    assert (out / "quickstart-000001.safetensors").is_file()  # save_every_n_epochs = 1, 2 epochs
    assert not (out / "quickstart-000002.safetensors").exists()  # the last epoch is the final
    tags = (out / "quickstart.txt").read_text(encoding="utf-8").splitlines()
    assert tags[0] == "[4] ohwx cube"  # every training caption starts with the trigger
    assert snapshot(quickstart["dataset"]) == quickstart["dataset_before"]
    assert not list(out.rglob("*.tmp"))


def test_event_stream_and_run_folder(quickstart):
    out = quickstart["out"]
    events = list(read_events(out / "stream.jsonl"))
    started = next(e for e in events if isinstance(e, RunStarted))
    plan = started.plan
    # 4 images × 10 repeats = 40; reg balanced up to 40; batch 2 → 40 steps per epoch
    assert plan["num_train_images"] == 40 and plan["num_reg_images"] == 6
    assert plan["steps_per_epoch"] == 40 and plan["max_train_steps"] == 80
    steps = [e for e in events if isinstance(e, StepEnded)]
    assert [e.step for e in steps] == list(range(1, 81))
    assert all(e.loss == e.loss and e.loss > 0 for e in steps)
    assert set(steps[0].lrs) == {"lr/textencoder", "lr/unet"}
    assert [e.epoch for e in events if isinstance(e, EpochEnded)] == [1, 2]
    saved = [e for e in events if isinstance(e, CheckpointSaved)]
    assert [e.kind for e in saved] == ["epoch", "final"]
    finished = events[-1]
    assert isinstance(finished, RunFinished) and finished.steps == 80
    run_dir = out / "runs"
    (folder,) = list(run_dir.iterdir())
    assert folder.name.startswith("quickstart-")
    assert (folder / "profile.toml").is_file() and (folder / "train.log").is_file()
    copied = list(read_events(folder / "events.jsonl"))
    assert [e.type for e in copied] == [e.type for e in events]


def test_metadata_is_kohya_compatible(quickstart):
    with safe_open(str(quickstart["out"] / "quickstart.safetensors"), "pt") as fh:
        meta = fh.metadata()
        keys = list(fh.keys())
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "4.0"
    assert meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_steps"] == "80" and meta["ss_epoch"] == "2"
    assert meta["ss_seed"] == "42" and meta["ss_output_name"] == "quickstart"
    assert meta["ss_training_comment"] == "trigger: ohwx cube"
    assert meta["ss_optimizer"].startswith("bitsandbytes.optim.adamw.AdamW8bit(")
    assert json.loads(meta["ss_tag_frequency"])["10_ohwx cube"]["ohwx cube"] == 4
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_ohwx cube": {"n_repeats": 10,
                                                                    "img_count": 4}}
    assert json.loads(meta["ss_bucket_info"])["buckets"]["0"]["resolution"] == [64, 64]
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert len(meta["sshs_model_hash"]) == 64
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)


def test_diffusers_applies_every_module_exactly(quickstart):
    names = assert_diffusers_applies_every_module(quickstart["out"] / "quickstart.safetensors")
    assert len(names) == 84  # 12 TE (2 layers × 6) + 72 U-Net modules of the tiny model


def test_the_quickstart_lora_imports_to_the_same_80_step_plan(quickstart, tmp_path):
    """`lora-train import` of the LoRA the quickstart wrote: every setting its metadata
    records; with the folders it cannot know set, check shows the same 80-step plan."""
    import tomllib

    from lora_core.checks import check_profile
    from lora_core.importing import import_source
    from lora_core.profile_load import profile_from_dict

    result = import_source(quickstart["out"] / "quickstart.safetensors")
    assert result.form == "lora"
    missing = {line.option for line in result.mapped.lines if line.status == "not supported"}
    assert missing == {"dataset folders", "output folder"}  # the built-in model is known
    data = result.data
    examples = ROOT / "examples"
    data["dataset"].update(train_data_dir=str(examples / "dataset" / "train"),
                           reg_data_dir=str(examples / "dataset" / "reg"))
    data.setdefault("saving", {})["output_dir"] = str(tmp_path / "out")
    report = check_profile(profile_from_dict(data, tmp_path))
    assert report.errors == [], [p.text() for p in report.errors]
    original = check_profile(profile_from_dict(
        tomllib.loads((examples / "quickstart.toml").read_text()), examples))
    assert report.plan.max_train_steps == original.plan.max_train_steps == 80
    assert report.plan.num_epochs == original.plan.num_epochs
