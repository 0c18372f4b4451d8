"""Settings from a LoRA file's ``ss_*`` metadata (kohya-compat.md §7.2).

Every setting the metadata records becomes its option; what a finished run records about
itself (counts, hashes, times, tag frequencies) is reported once as facts; what cannot be
known from a file is listed: the base model's path (its name and hash are given as the hint),
the image folders' location (their names, repeats and image counts are given), the output
folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lora_core.errors import LoraError
from lora_core.importing.mapping import FACTS, NOT_SUPPORTED, OFF, UNSET, Mapped
from lora_core.saving.lora_header import read_lora_header

# ss_ keys whose option has another name, or a value in another form.
RENAMED = {"num_epochs": "max_train_epochs", "batch_size_per_device": "train_batch_size",
           "debiased_estimation": "debiased_estimation_loss"}
# sd-scripts network modules this project does not train (a LoRA's lycoris.kohya and
# networks.lora are read as the profile reads them).
OTHER_MODULES = {"networks.oft"}
# Recorded as settings, but describing how sd-scripts ran rather than what it trained.
RUN_ONLY = {"lowram", "full_fp16", "full_bf16", "fp8_base", "fp8_base_unet", "cache_latents",
            "gradient_checkpointing_cpu_offload", "new_vae_hash", "enable_bucket_info"}


def read_lora_metadata(path: Path, mapped: Mapped) -> list[tuple[str, Any]]:
    header = read_lora_header(Path(path))
    meta = header.metadata
    if not any(key.startswith("ss_") for key in meta):
        raise LoraError(f"{path} has no training metadata (no ss_* keys)",
                        "only a LoRA saved with its metadata (sd-scripts, lora-train, most "
                        "trainers) records its settings; `lora-train inspect` shows what its "
                        "tensors tell")
    options: list[tuple[str, Any]] = []
    facts = []
    for key, raw in meta.items():
        if not key.startswith("ss_"):
            continue
        name = key[3:]
        if name in FACTS:
            if raw not in UNSET:
                facts.append(name)
            continue
        if name == "num_epochs" and meta.get("ss_max_train_steps") not in (None, *UNSET):
            # sd-scripts records the epochs it derived from the steps (rounded up): the
            # steps are what the run did (a 20-step run of 70 steps per epoch is 1 "epoch").
            facts.append(name)
            continue
        name = RENAMED.get(name, name)
        if name in RUN_ONLY:
            continue
        value = _metadata_value(name, raw)
        if name == "network_module" and str(value) in OTHER_MODULES:
            raise LoraError(f"{path} was trained as {value}, which lora-train does not train",
                            "import a file of a type lora-train trains (LoRA, LoCon, LoHa, "
                            "LoKr, DyLoRA, or LyCORIS' full, ia3, diag-oft, boft, glora)")
        if name == "base_model_version":
            if str(value).endswith("_v"):
                options.append(("v_parameterization", True))
            continue
        if name == "optimizer":
            kind, args = optimizer_of(str(value))
            options.append(("optimizer_type", kind))
            if args:
                options.append(("optimizer_args", args))
            continue
        options.append((name, value))
    mapped.note("facts of the finished run", OFF, "recorded, not settings: " + ", ".join(
        sorted(facts)))
    model = meta.get("ss_sd_model_name")
    hash_text = meta.get("ss_new_sd_model_hash") or meta.get("ss_sd_model_hash")
    from lora_core.models.builtin import BUILTINS

    if model in BUILTINS:  # this project's built-in test models are the same everywhere
        options.append(("pretrained_model_name_or_path", f"builtin:{model}"))
    else:
        mapped.note("base model", NOT_SUPPORTED, "a file does not record where the base model "
                    "is: set [model] pretrained_model_name_or_path" + (
                        f" (it was {model!r}" + (f", hash {hash_text}" if hash_text else "")
                        + ")" if model else ""))
    folders = header.json_metadata("ss_dataset_dirs") or {}
    reg = header.json_metadata("ss_reg_dataset_dirs") or {}
    if folders or reg:
        listed = "; ".join(f"{'reg ' if name in reg else ''}{name}: {info.get('img_count')} "
                           f"images x {info.get('n_repeats')}" for name, info in
                           [*folders.items(), *reg.items()] if isinstance(info, dict))
        mapped.note("dataset folders", NOT_SUPPORTED, "their location is not recorded: set "
                    "[dataset] train_data_dir (and reg_data_dir) to the folders holding "
                    f"them ({listed})")
    else:
        mapped.note("dataset folders", NOT_SUPPORTED, "not recorded: set [dataset] "
                    "train_data_dir")
    mapped.note("output folder", NOT_SUPPORTED, "not recorded: set [saving] output_dir")
    return options


def _metadata_value(name: str, raw: str) -> Any:
    """A metadata string as the option's value: "(512, 512)" -> "512,512", JSON network
    args -> ["k=v", ...], a list of learning rates -> the first."""
    if raw in UNSET:
        return None
    if name == "resolution":
        numbers = re.findall(r"\d+", raw)
        return ",".join(numbers) if numbers else raw
    if name == "network_args":
        try:
            args = json.loads(raw)
        except ValueError:
            return raw
        return [f"{k}={v}" for k, v in args.items()] if isinstance(args, dict) else raw
    if name == "text_encoder_lr":
        return raw  # one rate or "[a, b]" (SDXL's two encoders): mapping reads both
    if name in ("learning_rate", "unet_lr") and raw.startswith("["):
        try:
            values = json.loads(raw)
            return values[0] if values else None
        except ValueError:
            return raw
    return raw


def optimizer_of(text: str) -> tuple[str, list[str]]:
    """``bitsandbytes.optim.adamw.AdamW8bit(weight_decay=0.1,betas=(0.9, 0.99))`` ->
    ("AdamW8bit", ["weight_decay=0.1", "betas=0.9,0.99"])."""
    name, _, rest = text.partition("(")
    kind = name.strip().rsplit(".", 1)[-1]
    args, depth, current = [], 0, ""
    for char in rest.rstrip().removesuffix(")"):
        if char == "," and depth == 0:
            args.append(current.strip())
            current = ""
            continue
        depth += char in "(["
        depth -= char in ")]"
        current += char
    if current.strip():
        args.append(current.strip())
    cleaned = []
    for arg in args:
        key, _, value = arg.partition("=")
        value = value.strip().strip("()[]").replace(" ", "")
        cleaned.append(f"{key.strip()}={value}")
    return kind, cleaned
