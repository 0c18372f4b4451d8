"""The options sd-scripts' LoRA training scripts define (train_network.py,
sdxl_train_network.py, flux_train_network.py), as their argument parsers read them
(kohya-ss/sd-scripts at commit 48d368fa, v0.10.1; the same lists as
tests/data/sd_scripts_args/, which a test keeps equal).

A command line is read with them as argparse reads it (``allow_abbrev``): an option's
exact name, or a prefix of exactly one option's name; a prefix of several is an error.
"""

from __future__ import annotations

TRAIN_NETWORK = frozenset({
    "adaptive_noise_scale", "alpha_mask", "async_upload", "base_weights",
    "base_weights_multiplier", "bucket_no_upscale", "bucket_reso_steps", "cache_info",
    "cache_latents", "cache_latents_to_disk", "caption_dropout_every_n_epochs",
    "caption_dropout_rate", "caption_extension", "caption_extention", "caption_prefix",
    "caption_separator", "caption_suffix", "caption_tag_dropout_rate", "clip_skip",
    "color_aug", "conditioning_data_dir", "config_file", "console_log_file",
    "console_log_level", "console_log_simple", "cpu_offload_checkpointing", "dataset_class",
    "dataset_config", "dataset_repeats", "ddp_gradient_as_bucket_view", "ddp_static_graph",
    "ddp_timeout", "debiased_estimation_loss", "debug_dataset", "deepspeed",
    "dim_from_weights", "dynamo_backend", "enable_bucket", "enable_wildcard",
    "face_crop_aug_range", "flip_aug", "fp16_master_weights_and_gradients", "fp8_base",
    "fp8_base_unet", "full_bf16", "full_fp16", "fused_backward_pass",
    "gradient_accumulation_steps", "gradient_checkpointing", "highvram", "huber_c",
    "huber_scale", "huber_schedule", "huggingface_path_in_repo", "huggingface_repo_id",
    "huggingface_repo_type", "huggingface_repo_visibility", "huggingface_token", "in_json",
    "initial_epoch", "initial_step", "ip_noise_gamma", "ip_noise_gamma_random_strength",
    "keep_tokens", "keep_tokens_separator", "learning_rate", "log_config", "log_prefix",
    "log_tracker_config", "log_tracker_name", "log_with", "logging_dir", "loss_type",
    "lowram", "lr_decay_steps", "lr_scheduler", "lr_scheduler_args",
    "lr_scheduler_min_lr_ratio", "lr_scheduler_num_cycles", "lr_scheduler_power",
    "lr_scheduler_timescale", "lr_scheduler_type", "lr_warmup_steps", "masked_loss",
    "max_bucket_reso", "max_data_loader_n_workers", "max_grad_norm", "max_timestep",
    "max_token_length", "max_train_epochs", "max_train_steps", "max_validation_steps",
    "mem_eff_attn", "metadata_author", "metadata_description",
    "metadata_is_negative_embedding", "metadata_license", "metadata_merged_from",
    "metadata_preprocessor", "metadata_tags", "metadata_thumbnail", "metadata_title",
    "metadata_trigger_phrase", "metadata_usage_hint", "min_bucket_reso", "min_snr_gamma",
    "min_timestep", "mixed_precision", "multires_noise_discount",
    "multires_noise_iterations", "network_alpha", "network_args", "network_dim",
    "network_dropout", "network_module", "network_train_text_encoder_only",
    "network_train_unet_only", "network_weights", "no_half_vae", "no_metadata",
    "noise_offset", "noise_offset_random_strength", "offload_optimizer_device",
    "offload_optimizer_nvme_path", "offload_param_device", "offload_param_nvme_path",
    "optimizer_args", "optimizer_type", "output_config", "output_dir", "output_name",
    "persistent_data_loader_workers", "pretrained_model_name_or_path", "prior_loss_weight",
    "random_crop", "reg_data_dir", "resize_interpolation", "resolution", "resume",
    "resume_from_huggingface", "sample_at_first", "sample_every_n_epochs",
    "sample_every_n_steps", "sample_prompts", "sample_sampler", "save_every_n_epochs",
    "save_every_n_steps", "save_last_n_epochs", "save_last_n_epochs_state",
    "save_last_n_steps", "save_last_n_steps_state", "save_model_as", "save_n_epoch_ratio",
    "save_precision", "save_state", "save_state_on_train_end", "save_state_to_huggingface",
    "scale_v_pred_loss_like_noise_pred", "scale_weight_norms", "sdpa",
    "secondary_separator", "seed", "shuffle_caption", "skip_cache_check",
    "skip_until_initial_step", "text_encoder_lr", "token_warmup_min", "token_warmup_step",
    "tokenizer_cache_dir", "torch_compile", "train_batch_size", "train_data_dir",
    "training_comment", "unet_lr", "use_8bit_adam", "use_lion_optimizer", "v2",
    "v_parameterization", "v_pred_like_loss", "vae", "vae_batch_size",
    "validate_every_n_epochs", "validate_every_n_steps", "validation_seed",
    "validation_split", "wandb_api_key", "wandb_run_name", "weighted_captions", "xformers",
    "zero3_init_flag", "zero3_save_16bit_model", "zero_stage", "zero_terminal_snr"
})
# sdxl_train_network.py's: train_network.py's with these, without those.
SDXL_ONLY = frozenset({"cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk",
                       "disable_mmap_load_safetensors"})
SDXL_WITHOUT: frozenset[str] = frozenset()
# flux_train_network.py's: train_network.py's with these (it drops none).
FLUX_ONLY = frozenset({
    "ae", "apply_t5_attn_mask", "blocks_to_swap", "cache_text_encoder_outputs",
    "cache_text_encoder_outputs_to_disk", "clip_l", "controlnet_model_name_or_path",
    "disable_mmap_load_safetensors", "discrete_flow_shift", "guidance_scale", "logit_mean",
    "logit_std", "mode_scale", "model_prediction_type", "model_type", "sigmoid_scale",
    "split_mode", "t5xxl", "t5xxl_max_token_length", "text_encoder_batch_size",
    "timestep_sampling", "weighting_scheme",
})
SCRIPTS = ("train_network.py", "sdxl_train_network.py", "flux_train_network.py")


def options_of(script: str) -> frozenset[str]:
    """The options of ``script`` (train_network.py, sdxl_train_network.py or
    flux_train_network.py)."""
    if script.startswith("sdxl"):
        return (TRAIN_NETWORK | SDXL_ONLY) - SDXL_WITHOUT
    if script.startswith("flux"):
        return TRAIN_NETWORK | FLUX_ONLY
    return TRAIN_NETWORK


def any_script_option(name: str) -> bool:
    """Whether one of the LoRA scripts defines ``name``."""
    return any(name in options_of(script) for script in SCRIPTS)


def resolve(name: str, script: str) -> tuple[str, list[str]]:
    """``name`` as the script's parser takes it: (the option, []) for its exact name or the
    one option it is a prefix of; (name, the candidates) for a prefix of several; (name,
    []) for none (an option the script does not define)."""
    known = options_of(script)
    if name in known:
        return name, []
    found = sorted(option for option in known if option.startswith(name))
    if len(found) == 1:
        return found[0], []
    return name, found
