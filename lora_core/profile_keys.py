"""sd-scripts' option names as lora-train treats them when a profile or an imported
command carries them: not yet implemented (refused by name), harmless here (accepted with a
note) or secret (refused, read from the environment instead). Pure data; ``profile``
subtracts its own fields from the first list to get ``NOT_YET_KEYS``.
"""

# sd-scripts options users will try that this release does not implement yet. They are
# rejected with a clear message rather than silently ignored. (Keys that are fields of some
# section are taken out below, so the list can stay a plain record of sd-scripts' options.)
SD_SCRIPTS_KEYS = frozenset({
    "v2", "v_parameterization", "vae", "no_half_vae", "tokenizer_cache_dir", "max_token_length",
    "noise_offset", "noise_offset_random_strength", "adaptive_noise_scale",
    "multires_noise_iterations", "multires_noise_discount", "min_snr_gamma",
    "scale_v_pred_loss_like_noise_pred", "zero_terminal_snr", "min_timestep", "max_timestep",
    "loss_type", "huber_schedule", "huber_c", "huber_scale", "debiased_estimation_loss",
    "keep_tokens_separator", "caption_separator", "secondary_separator", "caption_prefix",
    "caption_suffix", "caption_dropout_rate", "caption_dropout_every_n_epochs",
    "caption_tag_dropout_rate", "enable_wildcard", "token_warmup_min", "token_warmup_step",
    "flip_aug", "color_aug", "random_crop", "cache_latents", "cache_latents_to_disk",
    "cache_text_encoder_outputs", "vae_batch_size", "rank_dropout", "module_dropout",
    "network_args", "scale_weight_norms", "loraplus_lr_ratio", "down_lr_weight", "mid_lr_weight",
    "up_lr_weight", "block_dims", "block_alphas", "sample_prompts", "sample_every_n_steps",
    "sample_every_n_epochs", "sample_at_first", "sample_sampler", "dataset_config",
    "save_state", "resume", "full_fp16", "full_bf16", "fp8_base", "xformers",
    "ip_noise_gamma", "ip_noise_gamma_random_strength", "masked_loss", "alpha_mask",
    "v_pred_like_loss", "weighted_captions", "face_crop_aug_range", "save_last_n_epochs",
    "save_last_n_steps", "save_last_n_epochs_state", "save_last_n_steps_state",
    "save_state_on_train_end", "save_n_epoch_ratio", "lr_scheduler_type", "lr_scheduler_args",
    "lr_decay_steps", "lr_scheduler_min_lr_ratio", "lr_scheduler_timescale", "dim_from_weights",
    "base_weights", "base_weights_multiplier", "network_multiplier", "conv_block_dims",
    "conv_block_alphas", "block_lr_zero_threshold", "loraplus_unet_lr_ratio",
    "loraplus_text_encoder_lr_ratio", "validation_split", "validation_seed",
    "validate_every_n_steps", "validate_every_n_epochs", "max_validation_steps",
    "logging_dir", "log_with", "log_prefix", "wandb_api_key", "torch_compile",
    "dynamo_backend", "lowram", "highvram", "cache_info", "resize_interpolation",
    "persistent_data_loader_workers", "fused_backward_pass", "cpu_offload_checkpointing",
    "metadata_title", "metadata_author", "metadata_description", "metadata_license",
    "metadata_tags", "no_metadata", "sdpa", "mem_eff_attn", "fp8_base_unet", "in_json",
})
# sd-scripts options that change nothing here, with why: a profile (or an imported command
# line) may carry them; they are accepted with a note instead of stopping the profile cold.
HARMLESS_KEYS = {
    "xformers": "attention runs through PyTorch's scaled-dot-product attention, which is as "
                "fast and as lean as xformers",
    "sdpa": "scaled-dot-product attention is always used",
    "mem_eff_attn": "scaled-dot-product attention is always used (it is memory-efficient)",
    "persistent_data_loader_workers": "data loader workers are kept for the whole run",
    "lowram": "models are read one tensor at a time, so loading needs little RAM anyway",
    "highvram": "nothing is offloaded to RAM in the first place",
    "max_data_loader_n_workers_persistent": "data loader workers are kept for the whole run",
}
# Secrets sd-scripts takes as options. A profile is a file that is copied into run folders,
# exported and shared, so a secret in it would be written to all of those: it is refused,
# and the tool reads it from the environment instead (wandb reads WANDB_API_KEY itself).
SECRET_KEYS = {
    "wandb_api_key": "a profile is copied into every run folder and shared; put the key in "
                     "the WANDB_API_KEY environment variable (or run `wandb login` once), "
                     "which Weights & Biases reads itself, and remove it from the profile",
}
# sd-scripts' --dynamo_backend choices (library/train_util.py, default "inductor"): a profile
# or command may name any of them; checks.compiling says which this torch can run.
DYNAMO_BACKENDS = ("eager", "aot_eager", "inductor", "aot_ts_nvfuser", "nvprims_nvfuser",
                   "cudagraphs", "ofi", "fx2trt", "onnxrt", "tensort", "ipex", "tvm")
# The backends among those that a package of their own registers when imported:
# (import name, pip name). checks.compiling looks for the package; training.compiling
# imports it so torch lists the backend.
DYNAMO_BACKEND_PACKAGES = {
    "tensort": ("torch_tensorrt", "torch-tensorrt"),
    "ipex": ("intel_extension_for_pytorch", "intel-extension-for-pytorch"),
    "tvm": ("tvm", "apache-tvm"), "onnxrt": ("onnxruntime", "onnxruntime onnxscript")}
