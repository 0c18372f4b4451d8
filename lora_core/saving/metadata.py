"""The ``ss_*`` and ``modelspec.*`` metadata written into every LoRA file.

Keys and value formats follow sd-scripts (kohya-compat.md §7.2, §7.4): every value is a
string (``str()`` of the Python value, so booleans are "True"/"False" and unset values
"None"), and JSON-shaped keys hold JSON text. A1111's and ComfyUI's metadata viewers and
LoRA managers (e.g. Civitai's uploader) read these keys.

The keys that depend on the model family (``ss_v2``, ``ss_base_model_version``,
``modelspec.architecture`` / ``implementation``, Flux's flow settings) are the family's: its
``file_metadata`` adds them over what this module writes.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lora_core import __version__
from lora_core.dataset.plan import TrainingPlan
from lora_core.profile import LYCORIS_ALGO_NAMES, Profile, conv_rank_and_alpha, uses_lycoris
from lora_core.profile_flux import lora_flux_network_args


@dataclass
class RunInfo:
    """Facts about this run that are not in the profile."""

    session_id: int
    started_at: float
    seed: int
    output_name: str
    model_name: str
    model_file: Path | None
    optimizer_repr: str
    warmup_steps: int
    max_train_steps: int
    num_epochs: int
    num_processes: int = 1


# Keys sd-scripts writes only when the dataset comes from folders (no dataset_config).
FOLDER_MODE_KEYS = (
    "ss_batch_size_per_device", "ss_total_batch_size", "ss_resolution", "ss_color_aug",
    "ss_flip_aug", "ss_random_crop", "ss_shuffle_caption", "ss_enable_bucket",
    "ss_bucket_no_upscale", "ss_min_bucket_reso", "ss_max_bucket_reso", "ss_keep_tokens",
    "ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_tag_frequency", "ss_bucket_info",
    "ss_keep_tokens_separator", "ss_caption_prefix", "ss_caption_suffix",
    "ss_secondary_separator", "ss_caption_separator", "ss_enable_wildcard", "ss_token_warmup_min",
    "ss_token_warmup_step")


# What sd-scripts keeps with --no_metadata (its SS_METADATA_MINIMUM_KEYS), beside the
# modelspec.* keys and the sshs_* hashes computed when the file is saved.
MINIMUM_KEYS = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim",
                "ss_network_alpha", "ss_network_args")


def legacy_file_hash(path: Path) -> str:
    """A1111's old model hash: sha256 of the 64 KiB at offset 1 MiB, first 8 hex digits."""
    with open(path, "rb") as fh:
        fh.seek(0x100000)
        return hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]


def full_file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def training_metadata(profile: Profile, plan: TrainingPlan, run: RunInfo) -> dict[str, str]:
    """The full metadata dict (all values str) for this run; ``ss_steps`` etc. set at save."""
    net, opt, tr, ds = profile.network, profile.optimizer, profile.training, profile.dataset
    width, height = (plan.bucket.resolution if plan.dataset_config is not None
                     else ds.resolution)
    module, network_args = network_module_and_args(profile)
    values: dict[str, object] = {
        "ss_session_id": run.session_id,
        "ss_training_started_at": run.started_at,
        "ss_output_name": run.output_name,
        "ss_learning_rate": opt.learning_rate,
        # Two rates (SDXL) as sd-scripts writes its list: "[1e-05, 2e-05]".
        "ss_text_encoder_lr": list(opt.text_encoder_lr)
        if isinstance(opt.text_encoder_lr, tuple) else opt.text_encoder_lr,
        "ss_unet_lr": opt.unet_lr,
        "ss_num_validation_images": plan.num_validation_images,
        "ss_num_epochs": run.num_epochs,
        "ss_max_train_steps": run.max_train_steps,
        "ss_gradient_checkpointing": tr.gradient_checkpointing,
        "ss_gradient_accumulation_steps": tr.gradient_accumulation_steps,
        "ss_lr_warmup_steps": run.warmup_steps,
        "ss_lr_scheduler": opt.lr_scheduler,
        "ss_network_module": module,
        "ss_network_dim": net.network_dim,
        "ss_network_alpha": net.network_alpha,
        "ss_network_dropout": net.network_dropout,
        "ss_mixed_precision": tr.mixed_precision,
        "ss_full_fp16": tr.full_fp16,
        "ss_full_bf16": tr.full_bf16,
        "ss_clip_skip": profile.model.clip_skip,
        "ss_max_token_length": None if ds.max_token_length == 75 else ds.max_token_length,
        "ss_cache_latents": ds.cache_latents or ds.cache_latents_to_disk,
        "ss_seed": run.seed,
        "ss_lowram": False,
        "ss_noise_offset": tr.noise_offset,
        "ss_noise_offset_random_strength": tr.noise_offset_random_strength,
        "ss_adaptive_noise_scale": tr.adaptive_noise_scale,
        "ss_multires_noise_iterations": tr.multires_noise_iterations,
        "ss_multires_noise_discount": tr.multires_noise_discount,
        "ss_ip_noise_gamma": tr.ip_noise_gamma,
        "ss_ip_noise_gamma_random_strength": tr.ip_noise_gamma_random_strength,
        "ss_zero_terminal_snr": bool(tr.zero_terminal_snr),
        "ss_training_comment": profile.saving.training_comment,
        "ss_sd_scripts_commit_hash": "(unknown)",
        "ss_optimizer": run.optimizer_repr,
        "ss_max_grad_norm": opt.max_grad_norm,
        "ss_caption_dropout_rate": ds.caption_dropout_rate,
        "ss_caption_dropout_every_n_epochs": ds.caption_dropout_every_n_epochs,
        "ss_caption_tag_dropout_rate": ds.caption_tag_dropout_rate,
        "ss_face_crop_aug_range": None,
        "ss_prior_loss_weight": ds.prior_loss_weight,
        "ss_min_snr_gamma": tr.min_snr_gamma,
        "ss_scale_weight_norms": opt.scale_weight_norms,
        "ss_debiased_estimation": tr.debiased_estimation_loss,
        "ss_loss_type": tr.loss_type,
        "ss_huber_schedule": tr.huber_schedule,
        "ss_huber_scale": tr.huber_scale,
        "ss_huber_c": tr.huber_c,
        "ss_fp8_base": tr.fp8_base,
        "ss_fp8_base_unet": tr.fp8_base_unet,
        "ss_sd_model_name": run.model_name,
        # The seed actually used when images are held out (unset, it falls back).
        "ss_validation_seed": plan.validation_seed if plan.validation_batches
        else tr.validation_seed,
        "ss_validation_split": tr.validation_split,
        "ss_masked_loss": tr.masked_loss,
        "ss_max_validation_steps": tr.max_validation_steps,
        "ss_validate_every_n_epochs": tr.validate_every_n_epochs,
        "ss_validate_every_n_steps": tr.validate_every_n_steps,
        "ss_resize_interpolation": ds.resize_interpolation or None,
        # Folder-mode keys (no dataset_config):
        "ss_batch_size_per_device": tr.train_batch_size,
        "ss_total_batch_size": tr.train_batch_size * run.num_processes
        * tr.gradient_accumulation_steps,
        "ss_resolution": (width, height),
        "ss_color_aug": ds.color_aug,
        "ss_flip_aug": ds.flip_aug,
        "ss_random_crop": ds.random_crop,
        "ss_shuffle_caption": ds.shuffle_caption,
        "ss_enable_bucket": ds.enable_bucket,
        "ss_bucket_no_upscale": ds.bucket_no_upscale,
        "ss_min_bucket_reso": ds.min_bucket_reso,
        "ss_max_bucket_reso": ds.max_bucket_reso,
        "ss_keep_tokens": ds.keep_tokens,
        "ss_lora_tui_version": __version__,
        # Options sd-scripts records only inside ss_datasets or not at all; kept so a file
        # says how it was made.
        "ss_keep_tokens_separator": ds.keep_tokens_separator,
        "ss_caption_prefix": ds.caption_prefix,
        "ss_caption_suffix": ds.caption_suffix,
        "ss_secondary_separator": ds.secondary_separator,
        "ss_caption_separator": ds.caption_separator,
        "ss_enable_wildcard": ds.enable_wildcard,
        "ss_token_warmup_min": ds.token_warmup_min,
        "ss_token_warmup_step": ds.token_warmup_step,
        "ss_v_parameterization": bool(profile.model.v_parameterization),
        "ss_scale_v_pred_loss_like_noise_pred": tr.scale_v_pred_loss_like_noise_pred,
        "ss_min_timestep": tr.min_timestep,
        "ss_max_timestep": tr.max_timestep,
        "ss_sample_sampler": profile.sample.sample_sampler if profile.sample.sample_prompts
        else None,
    }
    if network_args:
        values["ss_network_args"] = json.dumps(network_args)
    if run.model_file is not None and run.model_file.is_file():
        values["ss_sd_model_hash"] = legacy_file_hash(run.model_file)
        values["ss_new_sd_model_hash"] = full_file_hash(run.model_file)
    metadata = {k: str(v) for k, v in values.items()}
    metadata.update(dataset_metadata(plan))
    if plan.dataset_config is not None:
        # sd-scripts writes these per dataset inside ss_datasets in dataset_config mode.
        for key in FOLDER_MODE_KEYS:
            metadata.pop(key, None)
        metadata.update(datasets_metadata(plan))
    metadata.update(modelspec(profile, run.output_name, width, height))
    if profile.saving.no_metadata:
        # sd-scripts' --no_metadata: its minimum keys (what loaders need) and the modelspec.
        metadata = {k: v for k, v in metadata.items()
                    if k in MINIMUM_KEYS or k.startswith("modelspec.")}
    return metadata


def network_module_and_args(profile: Profile) -> tuple[str, dict[str, str]]:
    """``ss_network_module`` and the ``ss_network_args`` dict as sd-scripts (LoRA, LoCon) and
    LyCORIS (LoHa, LoKr: ``lycoris.kohya`` with ``algo``) write them: the network_args a
    user would have passed, every value a string."""
    net, opt = profile.network, profile.optimizer
    kind = net.network_module
    lycoris = uses_lycoris(net) or kind in ("LoHa", "LoKr")
    args: dict[str, str] = {}
    if lycoris:
        args["algo"] = LYCORIS_ALGO_NAMES[kind]
    if net.dora_wd:
        args["dora_wd"] = "True"
    if kind == "DyLoRA":
        args["unit"] = str(net.dylora_unit)
    if kind in ("DiagOFT", "BOFT"):
        args["constraint"] = str(net.constraint)
        args["rescaled"] = str(net.rescaled)
    if kind == "IA3" and net.train_on_input:
        args["train_on_input"] = "True"
    conv_dim, conv_alpha = conv_rank_and_alpha(net)
    if conv_dim is not None:
        args["conv_dim"] = str(conv_dim)
        args["conv_alpha"] = str(conv_alpha)
    if kind == "LoKr":
        args["factor"] = str(net.factor)
    for section, keys in ((net, ("rank_dropout", "module_dropout", "block_dims", "block_alphas",
                                 "conv_block_dims", "conv_block_alphas")),
                          (opt, ("loraplus_lr_ratio", "loraplus_unet_lr_ratio",
                                 "loraplus_text_encoder_lr_ratio", "down_lr_weight",
                                 "mid_lr_weight", "up_lr_weight"))):
        for key in keys:
            value = getattr(section, key)
            if value not in (None, ""):
                args[key] = str(value)
    if opt.block_lr_zero_threshold:
        args["block_lr_zero_threshold"] = str(opt.block_lr_zero_threshold)
    # networks.lora_flux's (Flux only: the check refuses them for SD, so none here then);
    # the module name itself the Flux family writes (families.flux.family.file_metadata).
    args.update(lora_flux_network_args(profile.flux))
    module = ("lycoris.kohya" if lycoris else
              "networks.dylora" if kind == "DyLoRA" else "networks.lora")
    return module, args


def modelspec(profile: Profile, title: str, width: int, height: int) -> dict[str, str]:
    """The modelspec keys every family writes; ``modelspec.architecture`` and
    ``modelspec.implementation`` are the family's (``file_metadata``)."""
    spec = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.title": profile.saving.metadata_title or title,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": datetime.now().replace(microsecond=0).isoformat(),
        "modelspec.prediction_type": "v" if profile.model.v_parameterization else "epsilon",
        "modelspec.implementation_version": f"lora-tui/{__version__}",
    }
    if profile.model.clip_skip != 1:  # sd-scripts writes it only when clip_skip is given
        spec["modelspec.encoder_layer"] = str(profile.model.clip_skip)
    tr = profile.training
    if (tr.min_timestep, tr.max_timestep) != (0, 1000):
        spec["modelspec.timestep_range"] = f"{tr.min_timestep},{tr.max_timestep}"
    saving = profile.saving
    # --metadata_* as sd-scripts writes them (the description falls back to the comment).
    optional = {"author": saving.metadata_author,
                "description": saving.metadata_description or saving.training_comment,
                "license": saving.metadata_license, "tags": saving.metadata_tags}
    for key, value in optional.items():
        if value:
            spec[f"modelspec.{key}"] = value
    return spec


def at_save(metadata: dict[str, str], step: int, epoch: int) -> dict[str, str]:
    """The metadata with the progress keys of one particular save filled in (none with
    no_metadata: sd-scripts sets them on the full set only)."""
    if "ss_session_id" not in metadata:
        return dict(metadata)
    return {**metadata, "ss_steps": str(step), "ss_epoch": str(epoch),
            "ss_training_finished_at": str(time.time())}


def dataset_metadata(plan: TrainingPlan) -> dict[str, str]:
    """The dataset ``ss_*`` metadata of sd-scripts' folder mode, as strings.

    Shapes as sd-scripts writes them (json.dumps defaults): folders keyed by basename with
    their folder repeats and image count (empty folders left out), tag counts of every
    folder (same basename: counts merged), bucket indices in sorted bucket order, and
    ``null`` bucket info when bucketing is off.
    """
    dirs: dict[str, dict[str, int]] = {}
    reg_dirs: dict[str, dict[str, int]] = {}
    tags: dict[str, dict[str, int]] = {}
    for subset in plan.subsets:
        scan = subset.scan
        merged = tags.setdefault(scan.name, {})
        for tag, count in scan.tag_frequency.items():
            merged[tag] = merged.get(tag, 0) + count
        if scan.images:
            target = reg_dirs if scan.is_reg else dirs
            target[scan.name] = {"n_repeats": scan.repeats, "img_count": len(scan.images)}
    bucket_info: dict[str, Any] | None = None
    if plan.bucket.mode != "single":
        bucket_info = {
            "buckets": {i: {"resolution": list(reso), "count": count}
                        for i, (reso, count) in enumerate(plan.bucket_counts.items())},
            "mean_img_ar_error": plan.mean_ar_error if plan.items else 0,
        }
    return {
        "ss_dataset_dirs": json.dumps(dirs),
        "ss_reg_dataset_dirs": json.dumps(reg_dirs),
        "ss_tag_frequency": json.dumps(tags),
        "ss_bucket_info": json.dumps(bucket_info),
        "ss_num_train_images": str(plan.num_train_images),
        "ss_num_reg_images": str(plan.num_reg_images),
        # sd-scripts reads len(train_dataloader) after accelerate has split it per process.
        "ss_num_batches_per_epoch": str(-(-plan.batches_per_epoch // plan.num_processes)),
    }


def datasets_metadata(plan: TrainingPlan) -> dict[str, str]:
    """The ``ss_*`` keys sd-scripts writes only in dataset_config mode (kohya-compat §7.2).

    ``ss_datasets`` (a JSON list, one entry per dataset with its subsets), ``ss_tag_frequency``
    (per folder basename; a folder used by several datasets counts once, the first one) and
    ``ss_dataset_dirs`` (non-reg subsets; a basename seen before gets " (2)", " (3)", ...).
    Shapes as sd-scripts' ``train_network.py`` builds them: subsets without images are left
    out of the lists, unset strings are ``null``, bucket indices are positions in the
    dataset's sorted bucket list (so predefined buckets nobody uses leave gaps), and
    min/max_bucket_reso are ``null`` without bucketing. The folder-mode keys
    (``ss_resolution``, ``ss_bucket_info``, ``ss_reg_dataset_dirs``, ...) are not written in
    this mode.
    """
    datasets: list[dict[str, Any]] = []
    tag_frequency: dict[str, dict[str, int]] = {}
    dataset_dirs: dict[str, dict[str, int]] = {}
    for dataset in plan.datasets:
        scans = [plan.subsets[i].scan for i in dataset.subset_indices]
        tags: dict[str, dict[str, int]] = {}
        for scan in scans:
            merged = tags.setdefault(scan.name, {})
            for tag, count in scan.tag_frequency.items():
                merged[tag] = merged.get(tag, 0) + count
        subsets = []
        for scan in scans:
            if not scan.images:
                continue
            options = scan.options
            subsets.append({
                "img_count": len(scan.images), "num_repeats": scan.repeats,
                "color_aug": options.color_aug, "flip_aug": options.flip_aug,
                "random_crop": options.random_crop, "shuffle_caption": options.shuffle_caption,
                "keep_tokens": options.keep_tokens,
                "keep_tokens_separator": options.keep_tokens_separator,
                "secondary_separator": options.secondary_separator or None,
                "enable_wildcard": options.enable_wildcard,
                "caption_prefix": options.caption_prefix or None,
                "caption_suffix": options.caption_suffix or None,
                "resize_interpolation": options.resize_interpolation or None,
                "image_dir": scan.name, "class_tokens": scan.class_tokens or None,
                "is_reg": scan.is_reg,
            })
            if not scan.is_reg:
                name, n = scan.name, 2
                while name in dataset_dirs:
                    name, n = f"{scan.name} ({n})", n + 1
                dataset_dirs[name] = {"n_repeats": scan.repeats, "img_count": len(scan.images)}
        bucket = dataset.bucket
        enabled = bucket.mode != "single"
        low, high, steps = bucket.min_bucket_reso, bucket.max_bucket_reso, bucket.bucket_reso_steps
        datasets.append({
            "is_dreambooth": True, "batch_size_per_device": dataset.batch_size,
            "num_train_images": dataset.num_train_images,
            "num_reg_images": dataset.num_reg_images,
            "resolution": list(bucket.resolution), "enable_bucket": enabled,
            # sd-scripts rounds them whenever bucketing is on (bucket_no_upscale too).
            "min_bucket_reso": low - low % steps if enabled else None,
            "max_bucket_reso": (high + (-high) % steps) if enabled else None,
            "tag_frequency": tags,
            "bucket_info": _bucket_info(dataset) if enabled else None,
            "resize_interpolation": None,
            "subsets": subsets,
        })
        for name, counts in tags.items():
            tag_frequency.setdefault(name, counts)
    return {"ss_datasets": json.dumps(datasets), "ss_tag_frequency": json.dumps(tag_frequency),
            "ss_dataset_dirs": json.dumps(dataset_dirs)}


def _bucket_info(dataset: Any) -> dict[str, Any]:
    used = dataset.bucket_counts
    resos = sorted(set(dataset.bucket.predefined) | set(used))
    position = {reso: i for i, reso in enumerate(resos)}
    return {"buckets": {position[reso]: {"resolution": list(reso), "count": count}
                        for reso, count in used.items()},
            "mean_img_ar_error": dataset.mean_ar_error}
