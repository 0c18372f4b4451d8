"""Users' checkpoints: SD 1.x, SD 2.x and SDXL single files (A1111 key layout) train end to
end through the same path a user's file takes, and the LoRA files load in diffusers with
every module applied. The single files are written from the tiny models by the project's
own test writer (tests/helpers/ldm_export.py); tokenizers come from `tokenizer_cache_dir`,
as on a machine whose checkpoints have none."""

from __future__ import annotations

import shutil

import pytest
from safetensors import safe_open

from lora_core.events import EventBus, RunFinished, StepEnded
from lora_core.models.builtin import ensure_builtin
from lora_core.profile_load import load_profile
from lora_core.session import run_training, start_run
from tests.e2e.conftest import assert_diffusers_applies_every_module
from tests.helpers.ldm_export import write_single_file
from tests.helpers.tiny_models import tiny_sd2_folder


def _folder(family, tmp_path):
    if family == "sd2":
        return tiny_sd2_folder(tmp_path)
    return ensure_builtin("tiny-sdxl" if family == "sdxl" else "tiny-sd1")


def _train(tiny_profile, name, model, tokenizers=None, **sections):
    model_section = {"pretrained_model_name_or_path": str(model)}
    if tokenizers is not None:
        model_section["tokenizer_cache_dir"] = str(tokenizers)
    path = tiny_profile(name, model=model_section, network={"network_module": "LoCon",
                                                            "network_dim": 4}, **sections)
    profile = load_profile(path)
    events = []
    run_training(profile, path, start_run(profile, path), EventBus([events.append]),
                 lambda: False)
    assert [e for e in events if isinstance(e, StepEnded)]
    return next(e for e in events if isinstance(e, RunFinished)).final_file


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_single_file_checkpoint_trains_and_records_its_family(family, tmp_path, tiny_profile,
                                                              state_dir):
    folder = _folder(family, tmp_path)
    checkpoint = write_single_file(folder, tmp_path / f"{family} model.safetensors", family)
    tokenizers = tmp_path / "tokenizers"
    shutil.copytree(folder / "tokenizer", tokenizers)  # vocab.json + merges.txt directly
    lora = _train(tiny_profile, family, checkpoint, tokenizers)
    with safe_open(lora, "pt") as fh:
        keys, meta = list(fh.keys()), fh.metadata()
        proj = [fh.get_tensor(k) for k in keys if k.endswith("proj_in.lora_down.weight")]
    assert meta["ss_base_model_version"] == {"sd1": "sd_v1", "sd2": "sd_v2",
                                             "sdxl": "sdxl_base_v1-0"}[family]
    assert meta["ss_sd_model_name"] == checkpoint.name
    assert len(meta["ss_new_sd_model_hash"]) == 64
    if family == "sdxl":
        assert any(k.startswith("lora_te1_") for k in keys)
        assert any(k.startswith("lora_te2_") for k in keys)
        assert any(k.startswith("lora_unet_input_blocks_") for k in keys)
        assert_diffusers_applies_every_module(lora, folder, "sdxl")
    if family == "sd2":
        # single-file SD2 U-Nets train proj_in/proj_out as 1x1 convs, like sd-scripts (§6.1)
        assert proj and all(t.dim() == 4 for t in proj)
    if family == "sd1":
        assert_diffusers_applies_every_module(lora, folder, "sd1")


def test_sd2_diffusers_folder_lora_loads_in_diffusers(tmp_path, tiny_profile, state_dir):
    folder = tiny_sd2_folder(tmp_path)
    lora = _train(tiny_profile, "sd2folder", folder)
    with safe_open(lora, "pt") as fh:
        proj = [fh.get_tensor(k) for k in fh.keys() if k.endswith("proj_in.lora_down.weight")]
    assert proj and all(t.dim() == 2 for t in proj)  # Linear projections in the folder's U-Net
    assert_diffusers_applies_every_module(lora, folder, "sd2")
