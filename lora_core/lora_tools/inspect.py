"""`lora-train inspect FILE`: what a LoRA file is and how it was trained.

Everything the tensors tell (family, network type, ranks and alphas, modules per part) comes
from ``saving.lora_header`` and holds for any kohya-format file, with or without metadata;
what the ``ss_*`` metadata records (settings, dataset folders with repeats and image counts,
tag frequencies per folder) and the user fields (``ssmd_*`` and ``modelspec.*``) are added
when present. ``sshs_model_hash`` is checked against the file's tensor bytes: it covers the
tensor data only, so a metadata edit keeps it and a changed tensor does not. No torch.

A family other than SD's shows its own parts and settings: Flux.1 its modules per double /
single block, CLIP-L and T5, its variant, and the flow-matching ``ss_*`` keys sd-scripts'
``flux_train_network.py`` writes, without the SD settings that mean nothing there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lora_core.family_registry import family
from lora_core.saving.lora_header import LoraHeader, read_lora_header

# ss_* keys shown as the training settings, in this order, with a label.
SETTINGS = (("ss_output_name", "output name"), ("ss_network_module", "network module"),
            ("ss_network_args", "network args"), ("ss_optimizer", "optimizer"),
            ("ss_learning_rate", "learning rate"), ("ss_unet_lr", "U-Net lr"),
            ("ss_text_encoder_lr", "text encoder lr"), ("ss_lr_scheduler", "lr scheduler"),
            ("ss_lr_warmup_steps", "warm-up steps"), ("ss_steps", "steps"),
            ("ss_max_train_steps", "max steps"), ("ss_epoch", "epoch"),
            ("ss_num_epochs", "epochs"), ("ss_batch_size_per_device", "batch size"),
            ("ss_total_batch_size", "total batch size"),
            ("ss_gradient_accumulation_steps", "gradient accumulation"),
            ("ss_resolution", "resolution"), ("ss_mixed_precision", "mixed precision"),
            ("ss_clip_skip", "clip skip"), ("ss_max_token_length", "max token length"),
            ("ss_min_snr_gamma", "min SNR gamma"), ("ss_noise_offset", "noise offset"),
            ("ss_seed", "seed"), ("ss_num_train_images", "train images (with repeats)"),
            ("ss_num_reg_images", "reg images (with repeats)"),
            ("ss_training_comment", "comment"))
# The user fields: where A1111's Additional Networks extension (ssmd_*) and ModelSpec
# readers (modelspec.*; Civitai, ComfyUI) find them (kohya-compat.md §7.4, §7.5).
USER_FIELDS = {"title": ("ssmd_display_name", "modelspec.title"),
               "description": ("ssmd_description", "modelspec.description"),
               "author": ("ssmd_author", "modelspec.author"),
               "keywords": ("ssmd_keywords", "modelspec.trigger_phrase"),
               "tags": ("ssmd_tags", "modelspec.tags"),
               "cover": ("ssmd_cover_images", "modelspec.thumbnail")}


def inspect_lora(path: Path) -> dict[str, Any]:
    """The report ``lora-train inspect --json`` prints (plain JSON values)."""
    header = read_lora_header(Path(path), foreign_keys=True)
    meta = header.metadata
    report: dict[str, Any] = {
        "file": str(header.path),
        "family": header.family,
        "family_source": _family_source(header),
        "variant": header.variant,
        "key_style": header.key_style,
        "network_type": header.network_type,
        "dim": header.dim,
        "alpha": header.alpha_of(conv=False),
        "conv_dim": header.conv_dim,
        "conv_alpha": header.alpha_of(conv=True),
        "modules": header.counts,
        "ranks": {str(k): v for k, v in sorted(header.ranks.items())},
        "base_model": {"name": meta.get("ss_sd_model_name"),
                       "hash": meta.get("ss_sd_model_hash"),
                       "sha256": meta.get("ss_new_sd_model_hash")},
        "settings": _settings(header),
        "datasets": _datasets(header),
        "tag_frequency": _tag_frequency(header),
        "user": {name: meta.get(keys[0]) or meta.get(keys[1]) for name, keys in
                 USER_FIELDS.items() if name != "cover" and (meta.get(keys[0])
                                                             or meta.get(keys[1]))},
        "cover_images": _cover_count(meta),
        "model_hash": model_hash_state(header),
        "has_metadata": any(k.startswith("ss_") for k in meta),
    }
    return report


def _settings(header: LoraHeader) -> dict[str, str]:
    """The recorded training settings by label: the common ones (less those meaningless for
    the file's family), then the family's own."""
    fam = family(header.family) if header.family else None
    hidden = fam.inspect_hidden if fam else frozenset()
    labels = fam.inspect_labels if fam else {}
    rows = [(key, labels.get(key, label)) for key, label in SETTINGS if key not in hidden]
    own = fam.inspect_settings if fam else ()
    return {label: header.metadata[key] for key, label in (*rows, *own)
            if header.metadata.get(key) not in (None, "", "None")}


def _family_source(header: LoraHeader) -> str:
    meta = header.metadata
    if header.family is None:
        return "unknown"
    if meta.get("ss_base_model_version") or meta.get("modelspec.architecture") \
            or meta.get("ss_v2") in ("True", "False"):
        return "metadata"
    return "tensors"


def _datasets(header: LoraHeader) -> list[dict[str, Any]]:
    """Folders with repeats and image counts (folder mode), or the subsets of each dataset
    (dataset_config mode)."""
    rows = []
    for key, is_reg in (("ss_dataset_dirs", False), ("ss_reg_dataset_dirs", True)):
        for name, info in (header.json_metadata(key) or {}).items():
            if isinstance(info, dict):
                rows.append({"folder": name, "repeats": info.get("n_repeats"),
                             "images": info.get("img_count"), "reg": is_reg})
    if not rows:
        for dataset in header.json_metadata("ss_datasets") or []:
            for subset in dataset.get("subsets", []) if isinstance(dataset, dict) else []:
                rows.append({"folder": subset.get("image_dir"),
                             "repeats": subset.get("num_repeats"),
                             "images": subset.get("img_count"),
                             "reg": bool(subset.get("is_reg"))})
    return rows


def _tag_frequency(header: LoraHeader) -> dict[str, list[list[Any]]]:
    """Per folder, its tags sorted by count (highest first), then name."""
    found = header.json_metadata("ss_tag_frequency") or {}
    return {folder: sorted(([tag, int(n)] for tag, n in tags.items()),
                           key=lambda row: (-row[1], row[0]))
            for folder, tags in found.items() if isinstance(tags, dict)}


def _cover_count(meta: dict[str, str]) -> int:
    try:
        covers = json.loads(meta.get("ssmd_cover_images", "[]"))
    except ValueError:
        covers = []
    return len(covers) if isinstance(covers, list) else 0


def tensor_data_hash(path: Path) -> str:
    """sha256 of the file's tensor bytes (what follows the header)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        fh.seek(8 + header_len)
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_hash_state(header: LoraHeader) -> str:
    """"matches", "differs" or "absent": ``sshs_model_hash`` against the tensor bytes (the
    hash sd-scripts writes covers the tensor data only, §7.3)."""
    recorded = header.metadata.get("sshs_model_hash")
    if not recorded:
        return "absent"
    return "matches" if tensor_data_hash(header.path) == recorded else "differs"


def render_inspect(report: dict[str, Any], tags_per_folder: int = 15) -> str:
    """The report as text for a terminal."""
    def value(v: Any) -> str:
        return "-" if v in (None, "") else f"{v:g}" if isinstance(v, float) else str(v)

    fam = family(report["family"]) if report["family"] else None
    family_name = fam.words if fam else "unknown"
    variant = (f"; variant: {fam.variant_words(report['variant'])}"
               if fam and report.get("variant") else "")
    part_words = fam.part_words if fam else {}
    lines = [f"File: {report['file']}",
             f"Base model family: {family_name} (from the {report['family_source']}){variant}"
             if report["family"] else "Base model family: unknown (no metadata says, and "
             "the tensors fit more than one)",
             f"Network: {report['network_type']}, dim {value(report['dim'])}, alpha "
             f"{value(report['alpha'])}" + (f"; conv dim {value(report['conv_dim'])}, conv "
                                           f"alpha {value(report['conv_alpha'])}"
                                           if report["conv_dim"] else ""),
             "Modules: " + ", ".join(f"{part_words.get(part, part)} {n}"
                                     for part, n in report["modules"].items())]
    if report.get("key_style", "kohya") != "kohya":
        lines.append("Keys: diffusers/PEFT style (lora_A/lora_B); resize and merge need "
                     "kohya names")
    if len(report["ranks"]) > 1:
        lines.append("Ranks: " + ", ".join(f"{r}: {n} modules"
                                           for r, n in report["ranks"].items()))
    base = report["base_model"]
    if base["name"]:
        lines.append(f"Trained on: {base['name']}" + (f" (hash {base['hash']})"
                                                       if base["hash"] else ""))
    lines.append({"matches": "Model hash: sshs_model_hash matches the tensors",
                  "differs": "Model hash: sshs_model_hash does NOT match the tensors (they "
                             "were changed after the file was written)",
                  "absent": "Model hash: none recorded"}[report["model_hash"]])
    if report["user"] or report["cover_images"]:
        lines += ["", "About"]
        lines += [f"  {name}: {text}" for name, text in report["user"].items()]
        if report["cover_images"]:
            lines.append(f"  cover images: {report['cover_images']}")
    if not report["has_metadata"]:
        lines += ["", "The file has no training metadata: settings, folders and tags are "
                  "not known."]
        return "\n".join(lines) + "\n"
    lines += ["", "Training"]
    lines += [f"  {label}: {text}" for label, text in report["settings"].items()]
    if report["datasets"]:
        lines += ["", "Dataset folders (images x repeats)"]
        lines += [f"  {'reg/' if row['reg'] else ''}{row['folder']}: {value(row['images'])} "
                  f"images x {value(row['repeats'])}" for row in report["datasets"]]
    for folder, tags in report["tag_frequency"].items():
        lines += ["", f"Tags of {folder} ({len(tags)}, most used first)"]
        lines += [f"  {count:>5}  {tag}" for tag, count in tags[:tags_per_folder]]
        if len(tags) > tags_per_folder:
            lines.append(f"  ... {len(tags) - tags_per_folder} more (--json lists all)")
    return "\n".join(lines) + "\n"
