"""Profile rules that involve more than one field, and sd-scripts' ``network_args``.

:func:`apply_network_args` reads sd-scripts' / LyCORIS's ``network_args = ["conv_dim=4",
"algo=loha", ...]`` into the fields they name and normalises ``network_module``;
:func:`cross_field_errors` lists every combination of values that cannot run, with a message
naming the fields. Both are called by ``profile.profile_from_dict``. Pure Python; no torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lora_core.errors import ProfileError
from lora_core.profile import (
    SECTION_FIELD_DOC,
    SECTIONS,
    OptimizerSection,
    Profile,
    _check_value,
    _coerce,
    _field_types,
    _fmt,
    _type_parts,
    closest,
    describe_type,
    parse_resolution,
)

# sd-scripts' network_args (and LyCORIS's) that are fields here: key -> section.
NETWORK_ARG_FIELDS = {
    "conv_dim": "network", "conv_alpha": "network", "rank_dropout": "network",
    "module_dropout": "network", "factor": "network", "block_dims": "network",
    "block_alphas": "network", "conv_block_dims": "network", "conv_block_alphas": "network",
    "dropout": "network", "loraplus_lr_ratio": "optimizer",
    "loraplus_unet_lr_ratio": "optimizer", "loraplus_text_encoder_lr_ratio": "optimizer",
    "down_lr_weight": "optimizer", "mid_lr_weight": "optimizer", "up_lr_weight": "optimizer",
    "block_lr_zero_threshold": "optimizer",
}
LYCORIS_ALGOS = {"lora": "LoCon", "locon": "LoCon", "loha": "LoHa", "lokr": "LoKr"}


def _parse_arg_value(raw: str, tp: Any) -> Any:
    """A network_args value as the field's type: strings stay as written."""
    import ast

    parts, _ = _type_parts(tp)
    if str in parts:
        return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def apply_network_args(profile: Profile, raw_network: Any, errors: list[str]) -> None:
    """Read sd-scripts' ``network_args`` into the fields they name, then normalise
    ``network_module`` ("networks.lora" / "lycoris.kohya") to one of NETWORK_TYPES."""
    net = profile.network
    explicit = raw_network if isinstance(raw_network, dict) else {}
    algo = None
    for item in net.network_args:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        where = f"`[network] network_args` item {item!r}"
        if not sep or not key or not raw:
            errors.append(f"{where} is not of the form name=value (like \"conv_dim=4\")")
            continue
        if key == "algo":
            algo = LYCORIS_ALGOS.get(raw.lower())
            if algo is None:
                errors.append(f"{where}: algo {raw!r} is not supported; the choices are "
                              f"{', '.join(LYCORIS_ALGOS)}")
            continue
        if key not in NETWORK_ARG_FIELDS:
            guess = closest(key, list(NETWORK_ARG_FIELDS) + ["algo"])
            errors.append(f"{where}: {key!r} is not supported"
                          + (f"; did you mean {guess!r}?" if guess else ""))
            continue
        section_name = NETWORK_ARG_FIELDS[key]
        field_name = "network_dropout" if key == "dropout" else key
        cls = SECTIONS[section_name]
        hints = _field_types(cls)
        meta = {f.name: f.metadata for f in dataclasses.fields(cls)}[field_name]
        ok, value = _coerce(_parse_arg_value(raw, hints[field_name]), hints[field_name])
        if not ok:
            errors.append(f"{where}: {raw!r} must be {describe_type(hints[field_name])}")
            continue
        problem = _check_value(where, value, meta)
        if problem:
            errors.append(problem)
            continue
        section = getattr(profile, section_name)
        current = getattr(section, field_name)
        if field_name in explicit and current != value:
            errors.append(f"{where} conflicts with `[{section_name}] {field_name}` = "
                          f"{_fmt(current)}; set it in one place")
            continue
        setattr(section, field_name, value)
    net.network_args = []
    if net.network_module == "networks.lora":
        net.network_module = "LoCon" if net.conv_dim is not None else "LoRA"
    elif net.network_module == "lycoris.kohya":
        net.network_module = algo or "LoCon"  # LyCORIS's default algo is "lora" (LoCon)
    elif algo is not None and algo != net.network_module:
        errors.append(f"`[network] network_args` algo={algo} conflicts with network_module = "
                      f"{_fmt(net.network_module)}; set the type in network_module only")




def cross_field_errors(p: Profile) -> list[str]:
    """Rules that involve more than one field."""
    errors = []
    for sec_name, cls in SECTIONS.items():
        section = getattr(p, sec_name)
        for f in dataclasses.fields(cls):
            if f.metadata["required"] and getattr(section, f.name) in ("", None):
                errors.append(f"`[{sec_name}] {f.name}` is required: {f.metadata['doc']}")
    ds = p.dataset
    reso = parse_resolution(ds.resolution)
    if reso is None:
        errors.append(f"`[dataset] resolution` = {_fmt(ds.resolution)} is not a resolution: "
                      "use one number like 512, or \"W,H\" like \"768,512\"")
    else:
        if reso[0] % 8 or reso[1] % 8:
            errors.append(f"`[dataset] resolution` = {_fmt(ds.resolution)}: both sides must be "
                          "multiples of 8")
        if ds.enable_bucket and not ds.bucket_no_upscale:
            if ds.min_bucket_reso > min(reso):
                errors.append(f"`[dataset] min_bucket_reso` = {ds.min_bucket_reso} must not be "
                              f"larger than the resolution's smaller side ({min(reso)})")
            if ds.max_bucket_reso < max(reso):
                errors.append(f"`[dataset] max_bucket_reso` = {ds.max_bucket_reso} must not be "
                              f"smaller than the resolution's larger side ({max(reso)})")
    if ds.enable_bucket and ds.bucket_reso_steps % 32:
        errors.append(f"`[dataset] bucket_reso_steps` = {ds.bucket_reso_steps} must be a "
                      "multiple of 32 (64 for SD 1.x/2.x models)")
    if ds.caption_extension and not ds.caption_extension.startswith("."):
        errors.append(f"`[dataset] caption_extension` = {_fmt(ds.caption_extension)} must start "
                      "with a dot, like \".txt\"")
    errors.extend(_dataset_errors(p))
    errors.extend(_network_errors(p))
    errors.extend(_training_errors(p))
    errors.extend(_sample_errors(p))
    opt = p.optimizer
    if opt.lr_scheduler in ("constant", "adafactor") and opt.lr_warmup_steps:
        errors.append(f"`[optimizer] lr_warmup_steps` must be 0 with lr_scheduler = "
                      f"\"{opt.lr_scheduler}\" (use \"constant_with_warmup\" for a warm-up)")
    if opt.lr_warmup_steps >= 1 and opt.lr_warmup_steps != int(opt.lr_warmup_steps):
        errors.append(f"`[optimizer] lr_warmup_steps` = {_fmt(opt.lr_warmup_steps)}: use a whole "
                      "number of steps, or a ratio below 1")
    from lora_core.training.optimizer_args import (  # pure Python
        optimizer_args_list,
        parse_optimizer_args,
    )

    try:
        args = parse_optimizer_args(optimizer_args_list(opt))
    except ProfileError as exc:
        errors.append(exc.message)
    else:
        errors.extend(_adafactor_errors(opt, args))
    name = p.saving.output_name
    if not name or any(c in name for c in '/\\:*?"<>|') or name.strip() != name:
        errors.append(f"`[saving] output_name` = {_fmt(name)} must be a plain file name without "
                      "folders, surrounding spaces or any of / \\ : * ? \" < > |")
    return errors


def _dataset_errors(p: Profile) -> list[str]:
    ds = p.dataset
    errors = []
    if ds.dataset_config and (ds.train_data_dir or ds.reg_data_dir):
        errors.append("`[dataset] dataset_config` replaces train_data_dir and reg_data_dir: "
                      "set either dataset_config or the folders, not both")
    if not ds.dataset_config and not ds.train_data_dir:
        errors.append("`[dataset] train_data_dir` is required (or dataset_config): "
                      + SECTION_FIELD_DOC["dataset"]["train_data_dir"])
    if ds.max_token_length not in (75, 150, 225):
        errors.append(f"`[dataset] max_token_length` = {ds.max_token_length} must be 75, 150 "
                      "or 225")
    if ds.cache_latents or ds.cache_latents_to_disk:
        for key in ("color_aug", "random_crop"):
            if getattr(ds, key):
                errors.append(f"`[dataset] {key}` changes the pixels every step, so latents "
                              "cannot be cached: turn off cache_latents / cache_latents_to_disk "
                              f"or {key}")
    if ds.cache_text_encoder_outputs or ds.cache_text_encoder_outputs_to_disk:
        if not p.network.network_train_unet_only:
            errors.append("`[dataset] cache_text_encoder_outputs` needs `[network] "
                          "network_train_unet_only` = true: a trained text encoder changes "
                          "its outputs every step")
        varying = [k for k in ("shuffle_caption", "caption_dropout_rate",
                               "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
                               "token_warmup_step", "enable_wildcard") if getattr(ds, k)]
        if varying:
            errors.append(f"`[dataset] cache_text_encoder_outputs` cannot be used with "
                          f"{', '.join(varying)}: the captions change between steps")
    if ds.token_warmup_step >= 1 and ds.token_warmup_step != int(ds.token_warmup_step):
        errors.append(f"`[dataset] token_warmup_step` = {_fmt(ds.token_warmup_step)}: use a "
                      "whole number of steps, or a ratio below 1")
    return errors


def _network_errors(p: Profile) -> list[str]:
    net = p.network
    errors = []
    if net.network_train_unet_only and net.network_train_text_encoder_only:
        errors.append("`[network] network_train_unet_only` and "
                      "`network_train_text_encoder_only` cannot both be true")
    kind = net.network_module
    if kind == "LoRA" and (net.conv_dim is not None or net.conv_block_dims):
        errors.append("`[network] conv_dim` trains 3x3 convolutions, which plain LoRA does not: "
                      "set network_module = \"LoCon\" (or remove conv_dim)")
    if kind in ("LoHa", "LoKr"):
        for key in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas"):
            if getattr(net, key):
                errors.append(f"`[network] {key}` works with LoRA and LoCon only, not {kind}")
    if net.factor != -1 and kind != "LoKr":
        errors.append(f"`[network] factor` = {net.factor} only applies to LoKr (network_module "
                      f"is {kind})")
    if net.factor == 0:
        errors.append("`[network] factor` must be -1 (balanced) or at least 1")
    # The block count depends on the model (SD 1.x/2.x 25, SDXL 23): values that fit either
    # layout pass here; preflight checks them against the detected model (block_errors).
    from lora_core.network.blocks import SD_BLOCKS, SDXL_BLOCKS

    sd_errors = block_errors(p, SD_BLOCKS)
    if sd_errors and block_errors(p, SDXL_BLOCKS):
        errors.extend(sd_errors)
    opt = p.optimizer
    for key in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio"):
        if getattr(opt, key) == 0:
            errors.append(f"`[optimizer] {key}` = 0 would freeze the up matrices, which start "
                          "at zero, so nothing would be learned: use a ratio above 0 (16 is "
                          "the LoRA+ paper's) or leave it unset")
    if net.module_dropout and opt.optimizer_type == "AdaFactor":
        from lora_core.training.optimizer_args import (  # pure Python
            adafactor_relative_step,
            effective_optimizer_args,
        )

        try:
            relative = adafactor_relative_step(effective_optimizer_args(opt))
        except ProfileError:
            relative = False  # the bad argument is reported on its own
        if relative:
            errors.append("`[network] module_dropout` cannot be used with AdaFactor's relative "
                          "step: a skipped module leaves its group without gradients, which "
                          "transformers' AdafactorSchedule cannot report; add "
                          "\"relative_step=False\" to optimizer_args or remove module_dropout")
    if net.block_alphas and not net.block_dims:
        errors.append("`[network] block_alphas` needs block_dims")
    if net.conv_block_alphas and not net.conv_block_dims:
        errors.append("`[network] conv_block_alphas` needs conv_block_dims")
    return errors


def block_errors(p: Profile, layout) -> list[str]:
    """Problems of the block-wise dims, alphas and learning-rate weights for one block layout
    (``network.blocks.SD_BLOCKS`` or ``SDXL_BLOCKS``)."""
    from lora_core.network.blocks import block_lr_weights, parse_block_values  # pure Python

    net, opt, errors = p.network, p.optimizer, []
    for key in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas"):
        if getattr(net, key):
            try:
                parse_block_values(getattr(net, key), f"[network] {key}", layout.num_blocks,
                                   integer=key.endswith("dims"), layout=layout)
            except ProfileError as exc:
                errors.append(exc.message)
    try:
        block_lr_weights(opt.down_lr_weight, opt.mid_lr_weight, opt.up_lr_weight,
                         opt.block_lr_zero_threshold, layout)
    except ProfileError as exc:
        errors.append(exc.message)
    return errors


def _training_errors(p: Profile) -> list[str]:
    tr = p.training
    errors = []
    if tr.adaptive_noise_scale is not None and not tr.noise_offset:
        errors.append("`[training] adaptive_noise_scale` adds to the noise offset: set "
                      "noise_offset too")
    if tr.scale_v_pred_loss_like_noise_pred and not p.model.v_parameterization:
        errors.append("`[training] scale_v_pred_loss_like_noise_pred` is for v-prediction "
                      "models: set `[model] v_parameterization` = true or remove it")
    if tr.min_timestep > tr.max_timestep:
        errors.append(f"`[training] min_timestep` = {tr.min_timestep} is above max_timestep = "
                      f"{tr.max_timestep}")
    if tr.loss_type in ("huber", "smooth_l1") and tr.huber_c <= 0:
        errors.append(f"`[training] huber_c` = {_fmt(tr.huber_c)} must be above 0 for "
                      f"loss_type {tr.loss_type!r} (0.1 is the default)")
    if tr.loss_type in ("l2", "l1") and (tr.huber_schedule != "snr" or tr.huber_c != 0.1
                                         or tr.huber_scale != 1.0):
        errors.append(f"`[training] huber_schedule / huber_c / huber_scale` only apply to "
                      f"loss_type huber or smooth_l1 (loss_type is {tr.loss_type!r})")
    return errors


def _sample_errors(p: Profile) -> list[str]:
    sm = p.sample
    wanted = [k for k in ("sample_every_n_steps", "sample_every_n_epochs", "sample_at_first")
              if getattr(sm, k)]
    if wanted and not sm.sample_prompts:
        return [f"`[sample] {wanted[0]}` is set but sample_prompts is empty: name a prompt "
                "file, or remove the sampling settings"]
    return []


def _adafactor_errors(opt: OptimizerSection, args: dict[str, Any]) -> list[str]:
    """AdaFactor's relative_step computes its own learning rate, which only the "adafactor"
    schedule passes through (transformers' AdafactorSchedule), as in sd-scripts."""
    if opt.optimizer_type != "AdaFactor":
        if opt.lr_scheduler == "adafactor":
            return ["`[optimizer] lr_scheduler` = \"adafactor\" only works with "
                    "optimizer_type = \"AdaFactor\""]
        return []
    relative = args.get("relative_step", True)
    if args.get("warmup_init") and relative is False:
        return ["`[optimizer] optimizer_args`: warmup_init=True needs relative_step=True "
                "(AdaFactor's warm-up is part of its relative step size)"]
    if relative and opt.lr_scheduler != "adafactor":
        return ["`[optimizer] optimizer_type` = \"AdaFactor\" with relative_step (its default) "
                "sets its own learning rate, so lr_scheduler must be \"adafactor\"; or add "
                "\"relative_step=False\" (and \"scale_parameter=False\", "
                "\"warmup_init=False\") to optimizer_args to use learning_rate and "
                f"{opt.lr_scheduler}"]
    if not relative and opt.lr_scheduler == "adafactor":
        return ["`[optimizer] lr_scheduler` = \"adafactor\" needs AdaFactor's relative_step; "
                "with relative_step=False pick another schedule (constant_with_warmup is usual)"]
    return []
