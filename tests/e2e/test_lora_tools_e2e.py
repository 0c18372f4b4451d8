"""The LoRA file tools on a file this project trained: `lora-train inspect` shows how it was
trained, and a resized and a merged file load in diffusers with every module applied (the
consumer check the other e2e tests use)."""

from __future__ import annotations

import json

from lora_core.lora_tools.inspect import tensor_data_hash
from tests.e2e.conftest import assert_diffusers_applies_every_module, run_cli


def test_a_trained_file_is_inspected_resized_merged_and_loads_in_diffusers(tiny_profile,
                                                                             tmp_path):
    profile = tiny_profile("hero", epochs=2, saving={"save_precision": "float"},
                           network={"network_module": "LoCon", "conv_dim": 4,
                                    "conv_alpha": 2.0})
    trained = run_cli("run", str(profile), "--no-progress")
    assert trained.returncode == 0, trained.stderr
    lora = tmp_path / "out" / "hero.safetensors"

    shown = run_cli("inspect", str(lora), "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert (report["family"], report["network_type"]) == ("sd1", "LoCon")
    assert (report["dim"], report["alpha"], report["conv_dim"], report["conv_alpha"]) == \
        (4, 2.0, 4, 2.0)
    assert report["settings"]["steps"] == "2" and report["settings"]["epochs"] == "2"
    assert report["datasets"] == [{"folder": "1_tok thing", "repeats": 1, "images": 2,
                                   "reg": False}]
    assert report["tag_frequency"] == {"1_tok thing": [["thing", 2], ["tok", 2]]}
    assert report["model_hash"] == "matches"
    assert set(report["modules"]) == {"unet", "te"}

    data = tensor_data_hash(lora)
    edited = run_cli("edit", str(lora), "--title", "Hero", "--keywords", "tok")
    assert edited.returncode == 0, edited.stderr
    assert tensor_data_hash(lora) == data
    assert (tmp_path / "out" / "hero.safetensors.backup").is_file()

    small = tmp_path / "hero-r2.safetensors"
    resized = run_cli("resize", str(lora), "--rank", "2", "-o", str(small))
    assert resized.returncode == 0, resized.stderr
    names = assert_diffusers_applies_every_module(small)
    assert len(names) == sum(report["modules"].values())

    merged = tmp_path / "merged.safetensors"
    done = run_cli("merge", f"{lora}:0.7", f"{small}:0.5", "--rank", "3", "-o", str(merged))
    assert done.returncode == 0, done.stderr
    assert len(assert_diffusers_applies_every_module(merged)) == len(names)
    merged_report = json.loads(run_cli("inspect", str(merged), "--json").stdout)
    assert merged_report["family"] == "sd1" and merged_report["dim"] == 3
