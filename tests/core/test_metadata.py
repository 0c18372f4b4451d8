"""The ss_* / modelspec metadata records every option as sd-scripts (and LyCORIS) write it."""

from __future__ import annotations

import json

from lora_core.checks import scan_profile
from lora_core.dataset.plan import make_plan
from lora_core.family_registry import family
from lora_core.saving.metadata import RunInfo, training_metadata
from tests.core.dataset_helpers import make_folder, profile_for


def metadata_for(tmp_path, **overrides):
    make_folder(tmp_path / "train", "2_tok", 2)
    profile = profile_for(tmp_path / "train", resolution=64, min_bucket_reso=64,
                          max_bucket_reso=64, **overrides)
    plan = make_plan(profile, scan_profile(profile))
    run = RunInfo(session_id=1, started_at=0.0, seed=3, output_name="mylora", model_name="m",
                  model_file=None, optimizer_repr="x", warmup_steps=0,
                  max_train_steps=plan.max_train_steps, num_epochs=plan.num_epochs)
    # The SD 1.x family's keys over the common ones, as a run of the built-in writes them.
    return family("sd1").file_metadata(None, profile, training_metadata(profile, plan, run))


def test_defaults_are_recorded_as_sd_scripts_writes_them(tmp_path):
    meta = metadata_for(tmp_path)
    assert meta["ss_network_module"] == "networks.lora" and "ss_network_args" not in meta
    assert (meta["ss_min_snr_gamma"], meta["ss_noise_offset"], meta["ss_loss_type"]) == \
        ("None", "None", "l2")
    assert meta["ss_base_model_version"] == "sd_v1"
    assert "modelspec.encoder_layer" not in meta and "modelspec.timestep_range" not in meta


def test_every_option_reaches_the_metadata(tmp_path):
    meta = metadata_for(
        tmp_path, network_module="LoKr", factor=8, rank_dropout=0.1, module_dropout=0.2,
        loraplus_lr_ratio=16.0, down_lr_weight="cosine", clip_skip=2, v_parameterization=True,
        noise_offset=0.05, noise_offset_random_strength=True, adaptive_noise_scale=0.01,
        multires_noise_iterations=6, multires_noise_discount=0.2, min_snr_gamma=5.0,
        scale_v_pred_loss_like_noise_pred=True, debiased_estimation_loss=True,
        zero_terminal_snr=True, min_timestep=100, max_timestep=900, loss_type="huber",
        huber_schedule="constant", huber_c=0.2, huber_scale=2.0, caption_dropout_rate=0.1,
        caption_dropout_every_n_epochs=3, caption_tag_dropout_rate=0.2, flip_aug=True,
        color_aug=True, random_crop=True, shuffle_caption=True, keep_tokens=2,
        keep_tokens_separator="|||", caption_separator=";", secondary_separator=";;;",
        caption_prefix="pre", caption_suffix="suf", enable_wildcard=True, max_token_length=225,
        scale_weight_norms=1.0, sample_prompts="p.txt", sample_sampler="euler_a")
    args = json.loads(meta["ss_network_args"])
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert args == {"algo": "lokr", "conv_dim": "32", "conv_alpha": "16.0", "factor": "8",
                    "rank_dropout": "0.1", "module_dropout": "0.2", "loraplus_lr_ratio": "16.0",
                    "down_lr_weight": "cosine"}
    expected = {
        "ss_base_model_version": "sd_v1_v", "ss_clip_skip": "2", "ss_noise_offset": "0.05",
        "ss_noise_offset_random_strength": "True", "ss_adaptive_noise_scale": "0.01",
        "ss_multires_noise_iterations": "6", "ss_multires_noise_discount": "0.2",
        "ss_min_snr_gamma": "5.0", "ss_scale_v_pred_loss_like_noise_pred": "True",
        "ss_debiased_estimation": "True", "ss_zero_terminal_snr": "True",
        "ss_min_timestep": "100", "ss_max_timestep": "900", "ss_loss_type": "huber",
        "ss_huber_schedule": "constant", "ss_huber_c": "0.2", "ss_huber_scale": "2.0",
        "ss_caption_dropout_rate": "0.1", "ss_caption_dropout_every_n_epochs": "3",
        "ss_caption_tag_dropout_rate": "0.2", "ss_flip_aug": "True", "ss_color_aug": "True",
        "ss_random_crop": "True", "ss_shuffle_caption": "True", "ss_keep_tokens": "2",
        "ss_keep_tokens_separator": "|||", "ss_caption_separator": ";",
        "ss_secondary_separator": ";;;", "ss_caption_prefix": "pre", "ss_caption_suffix": "suf",
        "ss_enable_wildcard": "True", "ss_max_token_length": "225",
        "ss_scale_weight_norms": "1.0", "ss_sample_sampler": "euler_a",
        "modelspec.prediction_type": "v", "modelspec.encoder_layer": "2",
        "modelspec.timestep_range": "100,900",
    }
    assert {k: meta.get(k) for k in expected} == expected


def test_base_model_version_and_architecture_per_family():
    assert [family(f).base_model_version(v) for f, v in (
        ("sd1", False), ("sd1", True), ("sd2", False), ("sd2", True), ("sdxl", False))] == \
        ["sd_v1", "sd_v1_v", "sd_v2", "sd_v2_v", "sdxl_base_v1-0"]
    assert family("sd2").modelspec_architecture(True) == "stable-diffusion-v2-768-v/lora"
    assert family("sd2").modelspec_architecture(False) == "stable-diffusion-v2-512/lora"
    assert family("sdxl").modelspec_architecture(False) == "stable-diffusion-xl-v1-base/lora"
    assert family("sd1").modelspec_architecture(True) == "stable-diffusion-v1/lora"
