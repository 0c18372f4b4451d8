"""Loss maths for the ε-prediction objective.

The U-Net predicts the noise that was added (Ho et al., 2020, DDPM). The per-element
squared error is computed in float32, averaged over channels and pixels, multiplied by each
sample's weight (``prior_loss_weight`` for regularization images, 1 otherwise) and then
averaged over the batch, in the order sd-scripts uses (kohya-compat.md §5.1).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def noise_target(noise: torch.Tensor) -> torch.Tensor:
    """The training target for ε-prediction models (SD 1.x). v-prediction comes with SD 2."""
    return noise


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    per_element = F.mse_loss(pred.float(), target.float(), reduction="none")
    per_sample = per_element.mean(dim=list(range(1, per_element.dim())))
    return (per_sample * weights.to(per_sample.device, torch.float32)).mean()
