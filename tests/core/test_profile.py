"""Profile: defaults, round trips, rejections with messages that name the field."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from lora_core.errors import ProfileError
from lora_core.profile import SECTIONS, Profile, field_docs, profile_to_dict
from lora_core.profile_io import apply_overrides, dumps_profile, save_profile
from lora_core.profile_load import load_profile, profile_from_dict

MINIMAL = {
    "model": {"pretrained_model_name_or_path": "builtin:tiny-sd1"},
    "dataset": {"train_data_dir": "data"},
    "saving": {"output_dir": "out"},
}


def write(tmp_path: Path, data: dict, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def errors_of(data: dict) -> str:
    with pytest.raises(ProfileError) as info:
        profile_from_dict(data)
    return info.value.message


def test_defaults_match_what_lets_users_expect():
    p = profile_from_dict(MINIMAL)
    assert p.optimizer.optimizer_type == "AdamW8bit"
    assert (p.network.network_dim, p.network.network_alpha) == (32, 16.0)
    assert p.optimizer.learning_rate == 1e-4
    assert p.optimizer.lr_scheduler == "cosine_with_restarts"
    assert p.dataset.resolution == (512, 512)  # the resolved form: (width, height)
    assert p.training.train_batch_size == 1
    assert p.dataset.caption_extension == ".txt"


def every_field_changed() -> dict:
    """A profile where every field differs from its default, to prove round trips."""
    values = {
        "model": {"pretrained_model_name_or_path": "/m/sd15", "clip_skip": 2,
                  "v_parameterization": True, "v2": True, "vae": "/m/vae.safetensors",
                  "no_half_vae": True, "tokenizer_cache_dir": "/m/tok"},
        # Only for Flux models (the check refuses them for an SD one); read and saved as any.
        "flux": {"ae": "/f/ae.safetensors", "clip_l": "/f/clip_l.safetensors",
                 "t5xxl": "/f/t5xxl_fp16.safetensors", "model_type": "flux",
                 "apply_t5_attn_mask": True, "t5xxl_max_token_length": 256,
                 "guidance_scale": 1.0, "timestep_sampling": "shift", "sigmoid_scale": 1.5,
                 "discrete_flow_shift": 3.1582, "model_prediction_type": "raw",
                 "weighting_scheme": "logit_normal", "logit_mean": 0.5, "logit_std": 1.5,
                 "mode_scale": 1.2, "train_blocks": "single", "train_t5xxl": True,
                 "split_qkv": True, "img_attn_dim": 8, "txt_attn_dim": 0, "img_mlp_dim": 2,
                 "txt_mlp_dim": 3, "img_mod_dim": 5, "txt_mod_dim": 6, "single_dim": 7,
                 "single_mod_dim": 1, "in_dims": (4, 0, 0, 0, 2),
                 "train_double_block_indices": "0,2-4", "train_single_block_indices": "all",
                 "network_reg_dims": "txt_mlp=8"},
        "dataset": {"train_data_dir": "/d/img", "reg_data_dir": "/d/reg", "resolution": "768,512",
                    "enable_bucket": False, "min_bucket_reso": 320, "max_bucket_reso": 960,
                    "bucket_reso_steps": 128, "bucket_no_upscale": True,
                    "caption_extension": ".caption", "shuffle_caption": True, "keep_tokens": 2,
                    "prior_loss_weight": 0.5, "max_data_loader_n_workers": 3,
                    "keep_tokens_separator": "|||", "caption_separator": ";",
                    "secondary_separator": ";;;", "caption_prefix": "photo of",
                    "caption_suffix": "best", "caption_dropout_rate": 0.05,
                    "caption_dropout_every_n_epochs": 3, "caption_tag_dropout_rate": 0.1,
                    "enable_wildcard": True, "token_warmup_min": 2, "token_warmup_step": 0.5,
                    "max_token_length": 225, "flip_aug": True, "cache_latents": True,
                    "cache_latents_to_disk": True, "vae_batch_size": 4, "alpha_mask": True,
                    "resize_interpolation": "bicubic", "weighted_captions": True},
        # cache_text_encoder_outputs needs static captions: see the exclusive fields
        "network": {"network_module": "LoCon", "network_dim": 8, "network_alpha": 1.5,
                    "conv_dim": 4, "conv_alpha": 2.0, "network_dropout": 0.1,
                    "rank_dropout": 0.2, "module_dropout": 0.3,
                    "block_dims": ",".join(["4"] * 25), "block_alphas": ",".join(["2"] * 25),
                    "conv_block_dims": ",".join(["2"] * 25),
                    "conv_block_alphas": ",".join(["1"] * 25),
                    "network_train_unet_only": True, "network_train_text_encoder_only": False,
                    "network_weights": "/x/start.safetensors", "dora_wd": True,
                    "dim_from_weights": True, "network_multiplier": 0.5,
                    "base_weights": ["/b/base.safetensors"], "base_weights_multiplier": [0.5]},
        "optimizer": {"optimizer_type": "AdamW", "optimizer_args": ["weight_decay=0.01"],
                      "learning_rate": 2e-4, "unet_lr": 3e-4, "text_encoder_lr": 5e-5,
                      "lr_scheduler": "polynomial", "lr_warmup_steps": 0.1,
                      "lr_scheduler_num_cycles": 3, "lr_scheduler_power": 2.0,
                      "max_grad_norm": 0.0, "fused_optimizer": False, "scale_weight_norms": 1.0,
                      "loraplus_lr_ratio": 16.0, "loraplus_unet_lr_ratio": 8.0,
                      "loraplus_text_encoder_lr_ratio": 4.0, "down_lr_weight": "cosine+.25",
                      "mid_lr_weight": "0.5", "up_lr_weight": "linear",
                      "block_lr_zero_threshold": 0.1, "lr_decay_steps": 0.1,
                      "lr_scheduler_min_lr_ratio": 0.1, "lr_scheduler_timescale": 10,
                      "lr_scheduler_args": ["lr_end=1e-8"]},
        "training": {"max_train_epochs": 7, "max_train_steps": 900, "train_batch_size": 3,
                     "gradient_accumulation_steps": 2, "gradient_checkpointing": True,
                     "fp8_base": True, "fp8_base_unet": True, "cpu_offload_checkpointing": True,
                     "full_bf16": True, "full_fp16": True, "torch_compile": True,
                     "dynamo_backend": "aot_eager",
                     "blocks_to_swap": 4,
                     "num_processes": 2, "gpu_ids": "0,1",
                     "mixed_precision": "bf16", "seed": 123, "noise_offset": 0.1,
                     "noise_offset_random_strength": True, "adaptive_noise_scale": 0.01,
                     "multires_noise_iterations": 6, "multires_noise_discount": 0.1,
                     "min_snr_gamma": 5.0, "scale_v_pred_loss_like_noise_pred": True,
                     "debiased_estimation_loss": True, "zero_terminal_snr": True,
                     "min_timestep": 100, "max_timestep": 900, "loss_type": "huber",
                     "huber_schedule": "exponential", "huber_c": 0.2, "huber_scale": 2.0,
                     "masked_loss": True, "validation_split": 0.1, "validation_seed": 9,
                     "validate_every_n_steps": 100, "validate_every_n_epochs": 2,
                     "max_validation_steps": 5, "early_stopping_patience": 3,
                     "ip_noise_gamma": 0.1,
                     "ip_noise_gamma_random_strength": True},
        "saving": {"output_dir": "/o", "output_name": "mine", "save_model_as": "safetensors",
                   "save_precision": "bf16", "save_every_n_epochs": 2, "save_every_n_steps": 50,
                   "training_comment": "trigger: ohwx", "tag_summary": True,
                   "tag_summary_order": "alphabetical", "save_state": False,
                   "save_state_every_n_minutes": 5.5, "save_last_n_states": 4,
                   "save_state_on_train_end": True, "save_n_epoch_ratio": 3,
                   "save_last_n_epochs": 2, "save_last_n_steps": 100,
                   "save_last_n_epochs_state": 1, "save_last_n_steps_state": 50,
                   "metadata_title": "My LoRA",
                   "metadata_author": "me", "metadata_description": "a cube",
                   "metadata_license": "CC-BY-4.0", "metadata_tags": "cube, blue",
                   "no_metadata": True},
        "sample": {"sample_prompts": "/p/prompts.txt", "sample_every_n_steps": 10,
                   "sample_every_n_epochs": 1, "sample_at_first": True,
                   "sample_sampler": "euler_a"},
        "logging": {"log_with": "tensorboard", "logging_dir": "/l", "log_prefix": "mine-",
                    "log_tracker_name": "lora"},
        "notify": {"command": "true", "webhook": "$NTFY_URL", "on": ["failed"]},
    }
    return {"profile_version": 1, **values}


# Fields that cannot all differ from their defaults in one profile.
EXCLUSIVE_FIELDS = {"save_model_as", "network_train_text_encoder_only", "dataset_config",
                    "color_aug", "random_crop", "factor", "network_args",
                    "cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk",
                    "dylora_unit", "constraint", "rescaled", "train_on_input",
                    "lr_scheduler_type", "v_pred_like_loss"}


def test_round_trip_of_the_exclusive_fields(tmp_path):
    data = {"profile_version": 1,
            "model": {"pretrained_model_name_or_path": "/m/sd15"},
            "dataset": {"dataset_config": "/d/ds.toml", "color_aug": True, "random_crop": True,
                        "cache_text_encoder_outputs": True,
                        "cache_text_encoder_outputs_to_disk": True},
            "network": {"network_module": "LoKr", "factor": 8,
                        "network_train_unet_only": True},
            # lr_scheduler_type refuses a warm-up; v_pred_like_loss refuses v-prediction
            "optimizer": {"lr_scheduler_type": "StepLR", "lr_scheduler_args": ["step_size=9"]},
            "training": {"v_pred_like_loss": 0.2},
            "saving": {"output_dir": "/o"}}
    first = load_profile(write(tmp_path, data))
    assert (first.optimizer.lr_scheduler_type, first.training.v_pred_like_loss) == \
        ("StepLR", 0.2)
    assert (first.network.factor, first.dataset.color_aug, first.dataset.random_crop) == \
        (8, True, True)
    save_profile(first, tmp_path / "again.toml")
    assert load_profile(tmp_path / "again.toml") == first
    for network in ({"network_module": "DyLoRA", "dylora_unit": 2, "network_dim": 8},
                    {"network_module": "BOFT", "constraint": 0.5, "rescaled": True},
                    {"network_module": "IA3", "train_on_input": True}):
        data = {"profile_version": 1, "model": {"pretrained_model_name_or_path": "/m/sd15"},
                "dataset": {"train_data_dir": "/d"}, "network": network,
                "saving": {"output_dir": "/o"}}
        first = load_profile(write(tmp_path, data, "algo.toml"))
        assert all(getattr(first.network, k) == v for k, v in network.items())
        save_profile(first, tmp_path / "algo-again.toml")
        assert load_profile(tmp_path / "algo-again.toml") == first


def test_round_trip_is_identity_for_every_field(tmp_path):
    data = every_field_changed()
    first = load_profile(write(tmp_path, data))
    # every field really differs from its default (otherwise the test proves less)
    for name, cls in SECTIONS.items():
        default = cls()
        for f in dataclasses.fields(cls):
            if f.name in EXCLUSIVE_FIELDS:
                continue  # single-choice / mutually exclusive fields (tested below)
            assert getattr(getattr(first, name), f.name) != getattr(default, f.name), f.name
    save_profile(first, tmp_path / "again.toml")
    second = load_profile(tmp_path / "again.toml")
    assert second == first
    saved = profile_to_dict(second)
    assert {name: {k: saved[name][k] for k in values} if isinstance(values, dict) else
            saved[name] for name, values in data.items()} == data


def test_unset_optional_fields_are_left_out_and_stay_unset(tmp_path):
    p = load_profile(write(tmp_path, MINIMAL))
    text = dumps_profile(p)
    assert "seed" not in text and "conv_dim" not in text
    p2 = load_profile(write(tmp_path, __import__("tomllib").loads(text), "b.toml"))
    assert p2 == p and p2.training.seed is None


def test_empty_path_means_none(tmp_path):
    data = {**MINIMAL, "dataset": {"train_data_dir": "data", "reg_data_dir": ""}}
    p = load_profile(write(tmp_path, data))
    assert p.path("dataset", "reg_data_dir") is None
    assert p.path("dataset", "train_data_dir") == tmp_path / "data"


def test_unknown_key_names_path_and_closest_key():
    msg = errors_of({**MINIMAL, "network": {"network_dimm": 16}})
    assert "`[network] network_dimm`: unknown key; did you mean `network_dim`?" in msg


def test_key_in_wrong_section_says_where_it_belongs():
    msg = errors_of({**MINIMAL, "training": {"output_name": "x"}})
    assert "[training] output_name" in msg and "[saving]" in msg


def test_wrong_type_names_field_value_and_type():
    msg = errors_of({**MINIMAL, "network": {"network_dim": "big"}})
    assert "`[network] network_dim` = \"big\" has the wrong type: it must be an integer" in msg
    msg = errors_of({**MINIMAL, "dataset": {**MINIMAL["dataset"], "shuffle_caption": 1}})
    assert "shuffle_caption" in msg and "true or false" in msg


def test_out_of_range_names_field_value_and_range():
    msg = errors_of({**MINIMAL, "network": {"network_dim": 0}})
    assert "`[network] network_dim` = 0 is out of range: it must be between 1 and 1024" in msg
    msg = errors_of({**MINIMAL, "training": {"mixed_precision": "fp8"}})
    assert "mixed_precision" in msg and "no, fp16, bf16" in msg


def test_missing_required_paths_are_named():
    msg = errors_of({})
    for key in ("pretrained_model_name_or_path", "train_data_dir", "output_dir"):
        assert key in msg


def test_options_of_later_releases_are_rejected_not_ignored():
    msg = errors_of({**MINIMAL, "training": {"fused_backward_pass": True}})
    assert "fused_backward_pass" in msg and "not supported yet" in msg
    msg = errors_of({**MINIMAL, "optimizer": {"optimizer_type": "AdamW9bit"}})
    assert "AdamW9bit" in msg and "AdamWScheduleFree" in msg  # names the choices
    msg = errors_of({**MINIMAL, "logging": {"log_with": "mlflow"}})
    assert "[logging] log_with" in msg and "tensorboard" in msg  # names the choices


def test_network_args_are_read_into_their_fields():
    p = profile_from_dict({**MINIMAL, "network": {
        "network_module": "networks.lora",
        "network_args": ["conv_dim=4", "conv_alpha=1", "rank_dropout=0.1",
                         "loraplus_lr_ratio=16", "down_lr_weight=cosine+.25"]}})
    assert p.network.network_module == "LoCon"
    assert (p.network.conv_dim, p.network.conv_alpha, p.network.rank_dropout) == (4, 1.0, 0.1)
    assert p.optimizer.loraplus_lr_ratio == 16.0
    assert p.optimizer.down_lr_weight == "cosine+.25"
    assert p.network.network_args == []
    p = profile_from_dict({**MINIMAL, "network": {"network_module": "lycoris.kohya",
                                                  "network_args": ["algo=lokr", "factor=4"]}})
    assert (p.network.network_module, p.network.factor) == ("LoKr", 4)
    msg = errors_of({**MINIMAL, "network": {"network_args": ["conv_dims=4"]}})
    assert "'conv_dims'" in msg and "did you mean 'conv_dim'" in msg
    msg = errors_of({**MINIMAL, "network": {"conv_dim": 8, "network_module": "networks.lora",
                                            "network_args": ["conv_dim=4"]}})
    assert "conflicts with `[network] conv_dim`" in msg
    msg = errors_of({**MINIMAL, "network": {"network_args": ["rank_dropout=2"]}})
    assert "rank_dropout" in msg and "between 0.0 and 0.99" in msg


def test_lora_flux_network_args_are_read_into_the_flux_section():
    args = ["train_blocks=single", "train_t5xxl=True", "split_qkv=True", "img_attn_dim=0",
            "single_dim=8", "in_dims=[4,0,0,0,4]", "train_double_block_indices=0,2-4",
            "train_single_block_indices=all", "network_reg_dims=txt_mlp=8,img_mod=0"]
    p = profile_from_dict({**MINIMAL, "network": {"network_args": args}})
    assert p.flux.network_reg_dims == "txt_mlp=8,img_mod=0"  # split at the first "=" only
    fx = p.flux
    assert (fx.train_blocks, fx.train_t5xxl, fx.split_qkv) == ("single", True, True)
    assert (fx.img_attn_dim, fx.single_dim, fx.txt_attn_dim) == (0, 8, None)
    assert fx.in_dims == (4, 0, 0, 0, 4)
    assert (fx.train_double_block_indices, fx.train_single_block_indices) == ("0,2-4", "all")
    assert p.network.network_args == [] and p.network.network_module == "LoRA"
    # sd-scripts' unbracketed in_dims reads the same; [flux] and network_args agreeing is fine
    p = profile_from_dict({**MINIMAL, "flux": {"train_blocks": "single"}, "network": {
        "network_args": ["in_dims=4,0,0,0,4", "train_blocks=single"]}})
    assert (p.flux.in_dims, p.flux.train_blocks) == ((4, 0, 0, 0, 4), "single")
    msg = errors_of({**MINIMAL, "flux": {"train_blocks": "double"},
                     "network": {"network_args": ["train_blocks=single"]}})
    assert "conflicts with `[flux] train_blocks`" in msg
    msg = errors_of({**MINIMAL, "network": {"network_args": ["train_blocks=some"]}})
    assert "train_blocks" in msg and "all, single, double" in msg
    msg = errors_of({**MINIMAL, "network": {"network_args": ["img_attn_dim=four"]}})
    assert "img_attn_dim" in msg and "an integer" in msg
    msg = errors_of({**MINIMAL, "network": {"network_args": ["in_dims=[4,0,0]"]}})
    assert "in_dims" in msg and "5 numbers" in msg
    msg = errors_of({**MINIMAL, "network": {"network_args": ["single_dim=-1"]}})
    assert "single_dim" in msg and "at least 0" in msg


def test_rules_between_the_option_fields():
    cases = [
        ({"network": {"network_module": "LoRA", "conv_dim": 4}}, "LoCon"),
        ({"network": {"network_module": "LoHa", "block_dims": ",".join(["4"] * 25)}},
         "only applies to LoRA / LoCon (network_module is LoHa)"),
        ({"network": {"block_dims": "1,2,3", "network_module": "LoCon"}}, "25 blocks"),
        ({"network": {"factor": 4}}, "only applies to LoKr"),
        ({"training": {"adaptive_noise_scale": 0.1}}, "set noise_offset too"),
        ({"training": {"scale_v_pred_loss_like_noise_pred": True}}, "v_parameterization"),
        ({"training": {"min_timestep": 500, "max_timestep": 100}}, "above max_timestep"),
        ({"training": {"huber_c": 0.3}}, "only apply to loss_type huber"),
        ({"dataset": {"train_data_dir": "d", "cache_latents": True, "color_aug": True}},
         "cannot be cached"),
        ({"dataset": {"train_data_dir": "d", "max_token_length": 100}}, "75, 150 or 225"),
        ({"dataset": {"train_data_dir": "d", "cache_text_encoder_outputs": True}},
         "needs `[network] network_train_unet_only`"),
        ({"dataset": {"train_data_dir": "d", "cache_text_encoder_outputs": True,
                      "shuffle_caption": True}, "network": {"network_train_unet_only": True}},
         "cannot be used with shuffle_caption"),
        ({"dataset": {"train_data_dir": "d", "dataset_config": "c.toml"}}, "not both"),
        ({"dataset": {}}, "train_data_dir` is required"),
        ({"sample": {"sample_every_n_steps": 5}}, "sample_prompts is empty"),
        ({"optimizer": {"optimizer_type": "AdaFactor"}}, "lr_scheduler must be \"adafactor\""),
        ({"optimizer": {"lr_scheduler": "adafactor"}}, "only works with optimizer_type"),
        ({"optimizer": {"loraplus_lr_ratio": 0.0}}, "would freeze the up matrices"),
        ({"optimizer": {"optimizer_type": "AdaFactor", "lr_scheduler": "adafactor"},
          "network": {"module_dropout": 0.1}}, "cannot be used with AdaFactor's relative"),
        ({"optimizer": {"optimizer_type": "AdaFactor", "lr_scheduler": "adafactor",
                        "lr_warmup_steps": 10}}, "must be 0"),
        ({"optimizer": {"optimizer_type": "AdaFactor", "lr_scheduler": "constant",
                        "optimizer_args": ["relative_step=False", "warmup_init=True"]}},
         "warmup_init=True needs relative_step=True"),
    ]
    for change, expected in cases:
        msg = errors_of({**MINIMAL, **change})
        assert expected in msg, (change, msg)
    ok = profile_from_dict({**MINIMAL, "optimizer": {
        "optimizer_type": "AdaFactor", "lr_scheduler": "constant_with_warmup",
        "optimizer_args": ["relative_step=False", "scale_parameter=False"]}})
    assert ok.optimizer.optimizer_type == "AdaFactor"


def test_cross_field_rules():
    msg = errors_of({**MINIMAL, "network": {"network_train_unet_only": True,
                                            "network_train_text_encoder_only": True}})
    assert "cannot both be true" in msg
    msg = errors_of({**MINIMAL, "optimizer": {"lr_scheduler": "constant", "lr_warmup_steps": 10}})
    assert "constant_with_warmup" in msg
    msg = errors_of({**MINIMAL, "dataset": {**MINIMAL["dataset"], "resolution": "big"}})
    assert "resolution" in msg and "W,H" in msg
    msg = errors_of({**MINIMAL, "optimizer": {"optimizer_args": ["weight_decay"]}})
    assert "optimizer_args" in msg and "name=value" in msg
    msg = errors_of({**MINIMAL, "saving": {"output_dir": "o", "output_name": "a/b"}})
    assert "output_name" in msg


def test_choices_are_case_insensitive_and_normalised():
    p = profile_from_dict({**MINIMAL, "optimizer": {"optimizer_type": "adamw8bit"}})
    assert p.optimizer.optimizer_type == "AdamW8bit"


def test_overrides_parse_toml_values_and_reject_bad_targets():
    data = {"network": {"network_dim": 4}}
    apply_overrides(data, ["network.network_dim=16", "saving.output_name=my lora",
                           "optimizer.learning_rate=3e-4", "dataset.shuffle_caption=true"])
    assert data["network"]["network_dim"] == 16
    assert data["saving"]["output_name"] == "my lora"
    assert data["optimizer"]["learning_rate"] == 3e-4
    assert data["dataset"]["shuffle_caption"] is True
    with pytest.raises(ProfileError, match="did you mean `network`"):
        apply_overrides({}, ["netwrk.network_dim=3"])
    with pytest.raises(ProfileError, match="section.key=value"):
        apply_overrides({}, ["network_dim=3"])


def test_bad_toml_and_missing_file_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[network\nnetwork_dim = 3\n", encoding="utf-8")
    with pytest.raises(ProfileError, match="bad.toml is not valid TOML"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "nope.toml")


def test_field_docs_cover_every_field():
    rows = field_docs()
    assert len(rows) == sum(len(dataclasses.fields(c)) for c in SECTIONS.values())
    assert all(doc for *_, doc in rows)


@pytest.mark.parametrize("content, expected", [
    ("[network]\nnetwork_dimm = 8\n", "did you mean `network_dim`"),
    ("not toml at all [", "is not valid TOML"),
    ("[training]\ntrain_batch_size = -1\n", "train_batch_size` = -1 is out of range"),
])
def test_cli_bad_profile_exit_2_without_traceback(tmp_path, state_dir, content, expected):
    path = tmp_path / "p.toml"
    path.write_text(content, encoding="utf-8")
    for command in ("check", "run"):
        proc = subprocess.run([sys.executable, "-m", "lora_core.cli", command, str(path)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
        assert "hint:" in proc.stderr


def test_profile_dataclass_default_is_invalid_until_paths_are_set():
    with pytest.raises(ProfileError):
        profile_from_dict(profile_to_dict(Profile()))


def test_schedule_free_and_import_paths_are_optimizers_other_keys_not_supported_yet():
    for given, read in (("sgdschedulefree", "SGDScheduleFree"),
                        ("torch.optim.RAdam", "torch.optim.RAdam")):
        profile = profile_from_dict({**MINIMAL, "optimizer": {"optimizer_type": given}})
        assert profile.optimizer.optimizer_type == read
    msg = errors_of({**MINIMAL, "optimizer": {"optimizer_type": "torch optim RAdam"}})
    assert "nor an import path like" in msg and "AdamW8bit" in msg
    msg = errors_of({**MINIMAL, "saving": {"output_dir": "o", "fused_backward_pass": True}})
    assert "fused_backward_pass` is not supported yet" in msg
    msg = errors_of({**MINIMAL, "training": {"dynamo_backend": "tensorrt"}})
    assert "dynamo_backend" in msg and "tensort" in msg  # sd-scripts' choices, named


def test_reference_page_is_generated_from_the_field_declarations():
    from lora_core.profile_reference import REGENERATE, reference_markdown

    page = Path(__file__).resolve().parents[2] / "docs" / "profile-reference.md"
    assert page.read_text(encoding="utf-8") == reference_markdown(), \
        f"docs/profile-reference.md is out of date: run `{REGENERATE}`"
    for _section, key, _type, _default, _doc in field_docs():
        assert f"| `{key}` |" in page.read_text(encoding="utf-8"), key


def test_check_names_a_missing_optimizer_package_without_importing_it(monkeypatch):
    import importlib.util

    from lora_core.training.optimizer_args import missing_optimizer_package

    p = profile_from_dict({**MINIMAL, "optimizer": {"optimizer_type": "Prodigy",
                                                    "learning_rate": 1.0}})
    assert missing_optimizer_package(p.optimizer) is None  # installed in the dev extra
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "prodigyopt" else real(name, *a))
    assert missing_optimizer_package(p.optimizer) == "prodigyopt"
    from lora_core.checks.optimizer import installed_optimizer_problems

    found = installed_optimizer_problems(p.optimizer)
    assert len(found) == 1 and found[0].field == ("optimizer", "optimizer_type")
    assert "pip install prodigyopt" in found[0].hint


def test_fields_prints_values_as_a_profile_writes_them(capsys):
    """TOML, not Python: "" not '', false not False (a user copies these lines)."""
    from lora_core.cli import main

    assert main(["fields"]) == 0
    out = capsys.readouterr().out
    assert 'output_name = "last"' in out and "no_half_vae = false" in out
    assert "enable_bucket = true" in out and "resolution = 512" in out
    assert "''" not in out and " = False" not in out and " = True" not in out
