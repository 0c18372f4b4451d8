"""The wizard's questions, one step per screen, in the order LoRA Easy Training Scripts
users know (base model, images, output, network, optimizer, length), then review.

A step names the profile fields it asks about; how each field is drawn and checked comes
from the profile's own metadata (see ``draft.field_spec``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    title: str
    intro: str
    fields: tuple[tuple[str, str], ...]
    dataset_check: bool = False  # show the live dataset check under the fields


STEPS: tuple[Step, ...] = (
    Step("Base model", "The model the LoRA is trained for. Realistic models use clip skip 1, "
         "anime (NovelAI-style) models 2.",
         (("model", "pretrained_model_name_or_path"), ("model", "clip_skip"),
          ("model", "v_parameterization"))),
    Step("Training images", "Pick the folder that CONTAINS the <repeats>_<name> image "
         "folders (for example dataset/train holding 10_mychar).",
         (("dataset", "train_data_dir"), ("dataset", "reg_data_dir")), dataset_check=True),
    Step("Output", "Where the LoRA files go and what they are called.",
         (("saving", "output_dir"), ("saving", "output_name"),
          ("saving", "save_every_n_epochs"))),
    Step("Network", "The adapter's type and size.",
         (("network", "network_module"), ("network", "network_dim"),
          ("network", "network_alpha"))),
    Step("Optimizer", "How the weights are updated.",
         (("optimizer", "optimizer_type"), ("optimizer", "learning_rate"),
          ("optimizer", "lr_scheduler"))),
    Step("Length", "How long training runs and how big each step is.",
         (("training", "max_train_epochs"), ("training", "train_batch_size"),
          ("dataset", "resolution"), ("training", "mixed_precision"))),
)
