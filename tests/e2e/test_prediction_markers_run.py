"""A checkpoint with v-prediction markers (``v_pred``, ``ztsnr``: NoobAI-XL v-pred's form)
trains as v-prediction with zero terminal SNR when the profile leaves both unset: the run
folder's profile says so and the LoRA's metadata records it (issue 25)."""

from __future__ import annotations

import shutil

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lora_core.events import EventBus, RunFinished
from lora_core.models.builtin import ensure_builtin
from lora_core.profile_load import load_profile
from lora_core.session import run_training, start_run
from tests.helpers.ldm_export import checkpoint_state_dict


def test_markers_make_the_run_v_prediction_with_zero_terminal_snr(tmp_path, tiny_profile,
                                                                   state_dir):
    folder = ensure_builtin("tiny-sd1")
    state = checkpoint_state_dict(folder, "sd1")
    state["v_pred"] = torch.zeros(0)  # as the released v-pred checkpoints carry them
    state["ztsnr"] = torch.zeros(0)
    model = tmp_path / "tiny-vpred.safetensors"
    save_file(state, str(model))
    tokenizers = tmp_path / "tokenizers"
    shutil.copytree(folder / "tokenizer", tokenizers)
    path = tiny_profile("vpred", model={"pretrained_model_name_or_path": str(model),
                                        "tokenizer_cache_dir": str(tokenizers)})
    profile = load_profile(path)
    assert profile.model.v_parameterization is None
    started = start_run(profile, path)
    assert any("carries a `v_pred` marker tensor" in w for w in started.warnings)
    events = []
    run_training(profile, path, started, EventBus([events.append]), lambda: False)
    final = next(e for e in events if isinstance(e, RunFinished)).final_file
    with safe_open(final, "pt") as fh:
        meta = fh.metadata()
    assert meta["ss_v_parameterization"] == "True"
    assert meta["ss_zero_terminal_snr"] == "True"
    assert meta["modelspec.prediction_type"] == "v"
    stored = load_profile(started.folder.profile)  # what `resume` trains on
    assert stored.model.v_parameterization is True and stored.training.zero_terminal_snr
