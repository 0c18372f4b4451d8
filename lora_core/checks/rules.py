"""Rules that involve more than one profile field, known from the profile alone.

:func:`profile_rules` is run whenever a profile is read (``profile_load.read_profile``), so a
profile that breaks one never reaches a run; each problem names the field to change. Rules
that need the model family (``block_problems`` with the detected layout) or the files on disk
live in the other check modules. Pure Python.
"""

from __future__ import annotations

import dataclasses

from lora_core.checks import optimizer, schedule
from lora_core.checks.notify import notify_problems
from lora_core.checks.problem import Problem, error, warning
from lora_core.dataset.subset_options import PIXEL_CHANGING_OPTIONS, uncacheable_latents
from lora_core.errors import ProfileError
from lora_core.profile import (
    FIELD_CONDITIONS,
    SECTION_FIELD_DOC,
    SECTIONS,
    Profile,
)
from lora_core.values import format_value

_BAD_NAME_CHARS = '/\\:*?"<>|'


def profile_rules(p: Profile) -> list[Problem]:
    """Every combination of values in ``p`` that cannot run."""
    found = _required(p)
    found += _resolution(p)
    found += _dataset(p)
    found += _network(p)
    found += _training(p)
    found += _sample(p)
    found += optimizer.profile_problems(p)
    found += schedule.schedule_problems(p)
    found += _saving(p)
    name = p.saving.output_name
    if not name or any(c in name for c in _BAD_NAME_CHARS) or name.strip() != name:
        found.append(error(f"`[saving] output_name` = {format_value(name)} must be a plain file "
                           "name without folders, surrounding spaces or any of "
                           "/ \\ : * ? \" < > |", section="saving", key="output_name"))
    return found


def _required(p: Profile) -> list[Problem]:
    found = []
    for sec_name, cls in SECTIONS.items():
        section = getattr(p, sec_name)
        for f in dataclasses.fields(cls):
            if f.metadata["required"] and getattr(section, f.name) in ("", None):
                found.append(error(f"`[{sec_name}] {f.name}` is required: {f.metadata['doc']}",
                                   section=sec_name, key=f.name))
    return found


def _resolution(p: Profile) -> list[Problem]:
    ds, found = p.dataset, []
    width, height = ds.resolution
    spot = {"section": "dataset"}
    if width % 8 or height % 8:
        found.append(error(f"`[dataset] resolution` = {format_value(ds.resolution)}: both sides "
                           "must be multiples of 8", key="resolution", **spot))
    if ds.enable_bucket and not ds.bucket_no_upscale:
        if ds.min_bucket_reso > min(width, height):
            found.append(error(f"`[dataset] min_bucket_reso` = {ds.min_bucket_reso} must not be "
                               f"larger than the resolution's smaller side "
                               f"({min(width, height)})", key="min_bucket_reso", **spot))
        if ds.max_bucket_reso < max(width, height):
            found.append(error(f"`[dataset] max_bucket_reso` = {ds.max_bucket_reso} must not be "
                               f"smaller than the resolution's larger side "
                               f"({max(width, height)})", key="max_bucket_reso", **spot))
    if ds.enable_bucket and ds.bucket_reso_steps % 32:
        found.append(error(f"`[dataset] bucket_reso_steps` = {ds.bucket_reso_steps} must be a "
                           "multiple of 32 (64 for SD 1.x/2.x models)", key="bucket_reso_steps",
                           **spot))
    if ds.enable_bucket and ds.bucket_reso_steps > min(width, height, ds.max_bucket_reso):
        # Not one bucket side fits (the bucket maths once divided by zero here).
        found.append(error(f"`[dataset] bucket_reso_steps` = {ds.bucket_reso_steps} is larger "
                           f"than the resolution's smaller side or max_bucket_reso "
                           f"({min(width, height, ds.max_bucket_reso)}): no bucket fits",
                           "use 64 (or 32 for SDXL and Flux)", key="bucket_reso_steps",
                           **spot))
    return found


def _dataset(p: Profile) -> list[Problem]:
    ds, found = p.dataset, []

    def add(key: str, message: str) -> None:
        found.append(error(message, section="dataset", key=key))

    if ds.caption_extension and not ds.caption_extension.startswith("."):
        add("caption_extension", f"`[dataset] caption_extension` = "
            f"{format_value(ds.caption_extension)} must start with a dot, like \".txt\"")
    if ds.dataset_config and (ds.train_data_dir or ds.reg_data_dir):
        add("dataset_config", "`[dataset] dataset_config` replaces train_data_dir and "
            "reg_data_dir: set either dataset_config or the folders, not both")
    if not ds.dataset_config and not ds.train_data_dir:
        add("train_data_dir", "`[dataset] train_data_dir` is required (or dataset_config): "
            + SECTION_FIELD_DOC["dataset"]["train_data_dir"])
    if ds.max_token_length not in (75, 150, 225):
        add("max_token_length", f"`[dataset] max_token_length` = {ds.max_token_length} must "
            "be 75, 150 or 225")
    if ds.cache_latents or ds.cache_latents_to_disk:
        for key in PIXEL_CHANGING_OPTIONS:
            if getattr(ds, key):
                add(key, uncacheable_latents(f"`[dataset] {key}`", key))
    if ds.cache_text_encoder_outputs or ds.cache_text_encoder_outputs_to_disk:
        key = ("cache_text_encoder_outputs" if ds.cache_text_encoder_outputs
               else "cache_text_encoder_outputs_to_disk")
        if not p.network.network_train_unet_only:
            add(key, "`[dataset] cache_text_encoder_outputs` needs `[network] "
                "network_train_unet_only` = true: a trained text encoder changes its outputs "
                "every step")
        varying = [k for k in ("shuffle_caption", "caption_dropout_rate",
                               "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
                               "token_warmup_step", "enable_wildcard") if getattr(ds, k)]
        if varying:
            add(key, f"`[dataset] cache_text_encoder_outputs` cannot be used with "
                f"{', '.join(varying)}: the captions change between steps")
    if ds.token_warmup_step >= 1 and ds.token_warmup_step != int(ds.token_warmup_step):
        add("token_warmup_step", f"`[dataset] token_warmup_step` = "
            f"{format_value(ds.token_warmup_step)}: use a whole number of steps, or a ratio "
            "below 1")
    return found


def _network(p: Profile) -> list[Problem]:
    net, opt, found = p.network, p.optimizer, []

    def add(key: str, message: str, section: str = "network") -> None:
        found.append(error(message, section=section, key=key))

    if net.network_train_unet_only and net.network_train_text_encoder_only:
        add("network_train_text_encoder_only", "`[network] network_train_unet_only` and "
            "`network_train_text_encoder_only` cannot both be true")
    kind = net.network_module
    if net.dim_from_weights and not net.network_weights:
        add("dim_from_weights", "`[network] dim_from_weights` reads the ranks from "
            "network_weights, which is not set: name the LoRA file to start from")
    if net.dim_from_weights and kind not in ("LoRA", "LoCon"):
        add("dim_from_weights", f"`[network] dim_from_weights` reads LoRA / LoCon files, not "
            f"{kind}: set network_dim (and conv_dim, factor) to the file's values instead")
    if net.base_weights_multiplier and len(net.base_weights_multiplier) > len(net.base_weights):
        found.append(warning(f"`[network] base_weights_multiplier` has "
                             f"{len(net.base_weights_multiplier)} values for "
                             f"{len(net.base_weights)} base_weights files: the extra ones are "
                             "not used", section="network", key="base_weights_multiplier"))
    found += not_applying(p)
    found += _lycoris_family(p)
    if net.factor == 0:
        add("factor", "`[network] factor` must be -1 (balanced) or at least 1")
    # The block count depends on the model (SD 1.x/2.x 25, SDXL 23): values that fit either
    # layout pass here; the input checks hold them against the detected model.
    from lora_core.network.blocks import SD_BLOCKS, SDXL_BLOCKS  # pure Python

    sd_problems = block_problems(p, SD_BLOCKS)
    if sd_problems and block_problems(p, SDXL_BLOCKS):
        found += sd_problems
    for key in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio"):
        if getattr(opt, key) == 0:
            add(key, f"`[optimizer] {key}` = 0 would freeze the up matrices, which start at "
                "zero, so nothing would be learned: use a ratio above 0 (16 is the LoRA+ "
                "paper's) or leave it unset", section="optimizer")
    if net.module_dropout and optimizer.adafactor_relative(opt):
        add("module_dropout", "`[network] module_dropout` cannot be used with AdaFactor's "
            "relative step: a skipped module leaves its group without gradients, which "
            "transformers' AdafactorSchedule cannot report; add \"relative_step=False\" to "
            "optimizer_args or remove module_dropout")
    if net.block_alphas and not net.block_dims:
        add("block_alphas", "`[network] block_alphas` needs block_dims")
    if net.conv_block_alphas and not net.conv_block_dims:
        add("conv_block_alphas", "`[network] conv_block_alphas` needs conv_block_dims")
    return found


def block_problems(p: Profile, layout) -> list[Problem]:
    """Problems of the block-wise dims, alphas and learning-rate weights for one block layout
    (``network.blocks.SD_BLOCKS`` or ``SDXL_BLOCKS``)."""
    from lora_core.network.blocks import block_lr_weights, parse_block_values  # pure Python

    net, opt, found = p.network, p.optimizer, []
    for key in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas"):
        if getattr(net, key):
            try:
                parse_block_values(getattr(net, key), f"[network] {key}", layout.num_blocks,
                                   integer=key.endswith("dims"), layout=layout)
            except ProfileError as exc:
                found.append(error(exc.message, exc.hint, section="network", key=key))
    try:
        block_lr_weights(opt.down_lr_weight, opt.mid_lr_weight, opt.up_lr_weight,
                         opt.block_lr_zero_threshold, layout)
    except ProfileError as exc:
        key = next((k for k in ("down_lr_weight", "mid_lr_weight", "up_lr_weight")
                    if k in exc.message), "down_lr_weight")
        found.append(error(exc.message, exc.hint, section="optimizer", key=key))
    return found


def _lycoris_family(p: Profile) -> list[Problem]:
    """Options of one network type set for another, and DyLoRA's rank blocks."""
    net, found = p.network, []
    kind = net.network_module

    def add(key: str, message: str, section: str = "network") -> None:
        found.append(error(message, section=section, key=key))

    if kind == "DyLoRA":
        unit = net.dylora_unit
        for key in ("network_dim", "conv_dim"):
            rank = getattr(net, key)
            if rank is not None and rank % unit:
                add(key, f"`[network] {key}` = {rank} must be a multiple of dylora_unit = "
                    f"{unit}: DyLoRA trains its ranks in blocks of that size")
        if net.rank_dropout:
            add("rank_dropout", "`[network] rank_dropout` does not work with DyLoRA, which "
                "already trains a random share of its ranks each step: remove it")
    return found


def not_applying(p: Profile) -> list[Problem]:
    """Values set for fields that do not apply to the profile's other answers, as the
    fields declare (``profile.FIELD_CONDITIONS``: conv_dim for LoCon & co., factor for
    LoKr...); the wizard hides the same fields."""
    found = []
    for (section, key), when in FIELD_CONDITIONS.items():
        if not when.refused:
            continue
        value = getattr(getattr(p, section), key)
        decider = getattr(getattr(p, when.section), when.key)
        if value != _declared_default(section, key) and not when.holds(decider):
            found.append(error(
                f"`[{section}] {key}` only applies to {when.describe()} ({when.key} is "
                f"{decider})",
                f"remove it, or choose one of those for `[{when.section}] {when.key}`",
                section=section, key=key))
    return found


def _declared_default(section: str, key: str):
    f = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == key)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _saving(p: Profile) -> list[Problem]:
    """sd-scripts' rotation options set where nothing is saved for them to rotate."""
    sv, found = p.saving, []
    epochs_saved = sv.save_every_n_epochs or sv.save_n_epoch_ratio
    if sv.save_n_epoch_ratio and sv.save_every_n_epochs:
        found.append(warning("`[saving] save_n_epoch_ratio` and save_every_n_epochs are both "
                             "set: save_n_epoch_ratio wins (as in sd-scripts)",
                             "remove one of them", section="saving", key="save_every_n_epochs"))
    for key, needs, what in (
            ("save_last_n_epochs", epochs_saved, "save_every_n_epochs or save_n_epoch_ratio"),
            ("save_last_n_epochs_state", epochs_saved and sv.save_state,
             "save_every_n_epochs (or save_n_epoch_ratio) and save_state"),
            ("save_last_n_steps", sv.save_every_n_steps, "save_every_n_steps"),
            ("save_last_n_steps_state", sv.save_every_n_steps and sv.save_state,
             "save_every_n_steps and save_state")):
        if getattr(sv, key) is not None and not needs:
            found.append(warning(f"`[saving] {key}` has no effect without {what}: no "
                                 "numbered files are written for it to delete",
                                 f"set {what.split(' and ')[0]}, or remove {key}",
                                 section="saving", key=key))
    return found


def _training(p: Profile) -> list[Problem]:
    tr, found = p.training, []

    def add(key: str, message: str) -> None:
        found.append(error(message, section="training", key=key))

    if tr.adaptive_noise_scale is not None and not tr.noise_offset:
        add("adaptive_noise_scale", "`[training] adaptive_noise_scale` adds to the noise "
            "offset: set noise_offset too")
    if tr.scale_v_pred_loss_like_noise_pred and not p.model.v_parameterization:
        add("scale_v_pred_loss_like_noise_pred", "`[training] "
            "scale_v_pred_loss_like_noise_pred` is for v-prediction models: set `[model] "
            "v_parameterization` = true or remove it")
    if tr.v_pred_like_loss and p.model.v_parameterization:
        add("v_pred_like_loss", "`[training] v_pred_like_loss` adds a v-prediction-like loss "
            "to an ε-prediction model's: remove it, or set `[model] v_parameterization` = "
            "false (sd-scripts refuses both together too)")
    if tr.ip_noise_gamma_random_strength and not tr.ip_noise_gamma:
        found.append(warning("`[training] ip_noise_gamma_random_strength` scales "
                             "ip_noise_gamma, which is not set: it has no effect",
                             "set ip_noise_gamma (0.1 is usual) or remove it",
                             section="training", key="ip_noise_gamma_random_strength"))
    if tr.min_timestep > tr.max_timestep:
        add("min_timestep", f"`[training] min_timestep` = {tr.min_timestep} is above "
            f"max_timestep = {tr.max_timestep}")
    if tr.loss_type in ("huber", "smooth_l1") and tr.huber_c <= 0:
        add("huber_c", f"`[training] huber_c` = {format_value(tr.huber_c)} must be above 0 for "
            f"loss_type {format_value(tr.loss_type)} (0.1 is the default)")
    if tr.loss_type in ("l2", "l1") and (tr.huber_schedule != "snr" or tr.huber_c != 0.1
                                         or tr.huber_scale != 1.0):
        add("loss_type", "`[training] huber_schedule / huber_c / huber_scale` only apply to "
            f"loss_type huber or smooth_l1 (loss_type is {format_value(tr.loss_type)})")
    ids = gpu_id_list(tr.gpu_ids)
    if ids is None:
        add("gpu_ids", f"`[training] gpu_ids` = {format_value(tr.gpu_ids)} must be GPU numbers "
            "separated by commas, each once, like \"0,1\" (or empty for the first "
            "num_processes GPUs)")
    elif ids and len(ids) < tr.num_processes:
        add("gpu_ids", f"`[training] gpu_ids` = {format_value(tr.gpu_ids)} names {len(ids)} "
            f"GPU(s) for num_processes = {tr.num_processes}: name one GPU per process, or "
            "lower num_processes")
    if tr.validation_split >= 1:
        add("validation_split", f"`[training] validation_split` = "
            f"{format_value(tr.validation_split)} holds out every image and leaves none to "
            "train on: use a share below 1 (0.1 or 0.2 is usual), or 0 for no validation")
    if tr.early_stopping_patience is not None and tr.validation_split <= 0:
        add("early_stopping_patience", f"`[training] early_stopping_patience` = "
            f"{tr.early_stopping_patience} counts validations, and there are none: set "
            "validation_split (0.1 or 0.2 is usual), or remove early_stopping_patience")
    found += notify_problems(p.notify)
    return found


def gpu_id_list(text: str) -> list[int] | None:
    """The GPU numbers in a ``gpu_ids`` value ("0,1" -> [0, 1]; "" -> []); None when it is
    not distinct whole numbers separated by commas ("all" is accelerate's word for every
    GPU and is taken as [])."""
    text = text.strip()
    if text in ("", "all"):
        return []
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts):
        return None
    ids = [int(part) for part in parts]
    return ids if len(set(ids)) == len(ids) else None


def _sample(p: Profile) -> list[Problem]:
    sm = p.sample
    wanted = [k for k in ("sample_every_n_steps", "sample_every_n_epochs", "sample_at_first")
              if getattr(sm, k)]
    if wanted and not sm.sample_prompts:
        return [error(f"`[sample] {wanted[0]}` is set but sample_prompts is empty: name a "
                      "prompt file, or remove the sampling settings", section="sample",
                      key="sample_prompts")]
    return []
