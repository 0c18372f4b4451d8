"""LoRA modules and the network that holds them.

The maths (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models"), as
sd-scripts' networks.lora implements it and as A1111 / ComfyUI / diffusers read it back:

    y = W x + up(dropout(down(x))) · multiplier · scale,    scale = alpha / rank

* ``down``: Linear(in → rank), or for a conv a Conv2d(in → rank) with the original kernel,
  stride, padding and dilation. Initialised Kaiming-uniform with a = √5 (nn.Linear's default).
* ``up``: Linear(rank → out) or a 1x1 Conv2d. Initialised to **zeros**, so an untrained
  network changes nothing (ΔW = 0 at step 0).
* ΔW for merging: ``up @ down · scale`` (1x1 convs squeezed; 3x3 convs composed as a conv).
* ``alpha`` is a 0-d buffer saved with the weights; rank is read from the weight shapes.

The original module's weights are never touched: each LoRA module replaces its target's
``forward`` with one that adds the low-rank branch. The network's ``state_dict()`` keys are
exactly the kohya file keys (``<lora_name>.lora_down.weight``, ``.lora_up.weight``,
``.alpha``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lora_core.network.naming import Target, text_encoder_targets, unet_targets


class LoRAModule(nn.Module):
    """A low-rank update ``up(down(x)) · alpha/rank`` added to one Linear or Conv2d."""

    def __init__(self, lora_name: str, org_module: nn.Module, rank: int, alpha: float,
                 dropout: float | None = None, multiplier: float = 1.0) -> None:
        super().__init__()
        self.lora_name = lora_name
        if isinstance(org_module, nn.Conv2d):
            self.lora_down = nn.Conv2d(org_module.in_channels, rank, org_module.kernel_size,
                                       org_module.stride, org_module.padding,
                                       org_module.dilation, bias=False)
            self.lora_up = nn.Conv2d(rank, org_module.out_channels, 1, 1, bias=False)
        else:
            self.lora_down = nn.Linear(org_module.in_features, rank, bias=False)
            self.lora_up = nn.Linear(rank, org_module.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        alpha = float(rank) if not alpha else float(alpha)  # alpha 0/None means alpha = rank
        self.register_buffer("alpha", torch.tensor(alpha))
        self.rank = rank
        self.scale = alpha / rank
        self.dropout = dropout
        self.multiplier = multiplier
        # A plain list keeps the original out of this module's parameters and state dict.
        self._org: list[nn.Module] = [org_module]
        self._org_forward = None

    def apply_to(self) -> None:
        org = self._org[0]
        self._org_forward = org.forward
        org.forward = self.forward

    def remove(self) -> None:
        if self._org_forward is not None:
            self._org[0].forward = self._org_forward
            self._org_forward = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self._org_forward(x)
        lx = self.lora_down(x.to(self.lora_down.weight.dtype))
        if self.dropout and self.training:
            lx = nn.functional.dropout(lx, p=self.dropout)
        lx = self.lora_up(lx)
        return base + (lx * (self.multiplier * self.scale)).to(base.dtype)

    def delta_weight(self) -> torch.Tensor:
        """ΔW this module adds to its target's weight (for tests and merging)."""
        down, up = self.lora_down.weight, self.lora_up.weight
        if down.dim() == 2:
            return up @ down * self.scale
        if down.shape[2:] == (1, 1):
            return (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)) \
                .unsqueeze(2).unsqueeze(3) * self.scale
        return nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3) * self.scale


@dataclass
class NetworkShape:
    """The shape of a LoRA network: what the profile's [network] section asks for."""

    rank: int
    alpha: float
    conv_rank: int | None = None
    conv_alpha: float | None = None
    dropout: float | None = None
    train_unet: bool = True
    train_text_encoder: bool = True


class LoRANetwork(nn.Module):
    """All LoRA modules of one model, registered under their kohya names."""

    def __init__(self, unet: nn.Module, text_encoders: list[nn.Module], shape: NetworkShape,
                 text_encoder_prefixes: list[str] | None = None) -> None:
        super().__init__()
        self.shape = shape
        self.text_encoder_names: list[str] = []
        self.unet_names: list[str] = []
        if shape.train_text_encoder:
            prefixes = text_encoder_prefixes or ["lora_te"] * len(text_encoders)
            for encoder, prefix in zip(text_encoders, prefixes, strict=True):
                for target in text_encoder_targets(encoder, prefix):
                    self._add(target, shape)
                    self.text_encoder_names.append(target.lora_name)
        if shape.train_unet:
            for target in unet_targets(unet, with_conv=shape.conv_rank is not None):
                self._add(target, shape)
                self.unet_names.append(target.lora_name)

    def _add(self, target: Target, shape: NetworkShape) -> None:
        if target.is_conv3x3:
            rank = shape.conv_rank
            alpha = shape.conv_alpha if shape.conv_alpha is not None else 1.0
        else:
            rank, alpha = shape.rank, shape.alpha
        self.add_module(target.lora_name,
                        LoRAModule(target.lora_name, target.module, rank, alpha, shape.dropout))

    def lora_modules(self) -> list[LoRAModule]:
        return [m for m in self.children() if isinstance(m, LoRAModule)]

    def apply_to(self) -> None:
        for module in self.lora_modules():
            module.apply_to()

    def remove(self) -> None:
        for module in self.lora_modules():
            module.remove()

    def parameters_of(self, names: list[str]) -> list[nn.Parameter]:
        return [p for name in names for p in getattr(self, name).parameters()]
