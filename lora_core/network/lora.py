"""The LoRA module (also LoCon's), and the LoRA-only network kept for older callers.

The maths (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models"), as
sd-scripts' networks.lora implements it and as A1111 / ComfyUI / diffusers read it back:

    y = W x + up(drop(down(x))) · multiplier · scale,    scale = alpha / rank

* ``down``: Linear(in → rank), or for a conv a Conv2d(in → rank) with the original kernel,
  stride, padding and dilation. Initialised Kaiming-uniform with a = √5 (nn.Linear's default).
* ``up``: Linear(rank → out) or a 1x1 Conv2d. Initialised to **zeros**, so an untrained
  network changes nothing (ΔW = 0 at step 0).
* ΔW for merging: ``up @ down · scale`` (1x1 convs squeezed; 3x3 convs composed as a conv).
* ``alpha`` is a 0-d buffer saved with the weights; alpha 0/None means alpha = rank.
* Dropouts (training only, kohya-compat.md §6.4): ``dropout`` on ``down(x)``;
  ``rank_dropout`` p zeroes each rank channel of ``down(x)`` per sample with probability p
  and multiplies the scale by 1/(1−p) ("as if the rank were changed", sd-scripts);
  ``module_dropout`` skips the module.

LoCon is the same module on more layers (3x3 convolutions too); the file keys are the same:
``<lora_name>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lora_core.network.adapter import AdapterModule, AdapterNetwork
from lora_core.network.naming import Target, text_encoder_targets, unet_targets


class LoRAModule(AdapterModule):
    """A low-rank update ``up(down(x)) · alpha/rank`` added to one Linear or Conv2d."""

    kind = "LoRA"

    def __init__(self, lora_name: str, org_module: nn.Module, rank: int, alpha: float | None,
                 dropout: float | None = None, multiplier: float = 1.0,
                 rank_dropout: float | None = None,
                 module_dropout: float | None = None) -> None:
        super().__init__(lora_name, org_module, multiplier, dropout, rank_dropout,
                         module_dropout)
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

    def refresh_scale(self) -> None:
        self.scale = float(self.alpha) / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self._org_forward(x)
        if self.module_dropped():
            return base
        lx = self.lora_down(x.to(self.lora_down.weight.dtype))
        if self.dropout and self.training:
            lx = nn.functional.dropout(lx, p=self.dropout)
        scale = self.scale
        if self.rank_dropout and self.training:
            # One keep/drop draw per (sample, rank channel), shared over tokens or pixels.
            keep = torch.rand(lx.shape[0], self.rank, device=lx.device) > self.rank_dropout
            keep = keep.to(lx.dtype)
            if lx.dim() == 3:        # text encoder: (batch, tokens, rank)
                keep = keep.unsqueeze(1)
            elif lx.dim() == 4:      # conv: (batch, rank, height, width)
                keep = keep.unsqueeze(-1).unsqueeze(-1)
            lx = lx * keep
            scale = scale / (1.0 - self.rank_dropout)
        lx = self.lora_up(lx)
        return base + (lx * (self.multiplier * scale)).to(base.dtype)

    def delta_weight(self) -> torch.Tensor:
        """ΔW this module adds to its target's weight (for tests, max-norm and merging)."""
        down, up = self.lora_down.weight, self.lora_up.weight
        if down.dim() == 2:
            return up @ down * self.scale
        if down.shape[2:] == (1, 1):
            return (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)) \
                .unsqueeze(2).unsqueeze(3) * self.scale
        return nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3) * self.scale

    def factors(self) -> list[nn.Parameter]:
        return [self.lora_down.weight, self.lora_up.weight]


class DyLoRAModule(LoRAModule):
    """DyLoRA (Valipour et al., 2022): a LoRA whose every lower rank works on its own.

    The rank is split into blocks of ``unit``. Each training forward draws a block b
    (uniformly, from torch's RNG, so a resumed run draws the same) and uses ranks
    ``0 .. (b+1)·unit`` with the scale ``alpha / ((b+1)·unit)``: block b trains, the blocks
    before it are used as trained (no gradient), the ones after it are left out. The file
    is a plain LoRA file (``lora_down`` / ``lora_up`` / ``alpha`` at the full rank), so any
    loader reads it, and cutting it to the first r ranks (keeping alpha) gives exactly the
    rank-r LoRA that was trained. Evaluation (samples, validation) uses the full rank.
    """

    kind = "DyLoRA"

    def __init__(self, lora_name: str, org_module: nn.Module, rank: int, alpha: float | None,
                 dropout: float | None = None, multiplier: float = 1.0,
                 rank_dropout: float | None = None, module_dropout: float | None = None,
                 unit: int = 4) -> None:
        if unit < 1 or rank % unit:
            raise ValueError(f"{lora_name}: DyLoRA's rank {rank} is not a multiple of its "
                             f"unit {unit}")
        super().__init__(lora_name, org_module, rank, alpha, dropout, multiplier,
                         rank_dropout, module_dropout)
        self.unit = unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        base = self._org_forward(x)
        if self.module_dropped():
            return base
        block = int(torch.randint(self.rank // self.unit, ()).item())
        low, high = block * self.unit, (block + 1) * self.unit
        down_w, up_w = self.lora_down.weight, self.lora_up.weight
        down = torch.cat([down_w[:low].detach(), down_w[low:high]])
        up = torch.cat([up_w[:, :low].detach(), up_w[:, low:high]], dim=1)
        x = x.to(down.dtype)
        if isinstance(self.lora_down, nn.Conv2d):
            conv = self.lora_down
            lx = nn.functional.conv2d(x, down, None, conv.stride, conv.padding, conv.dilation)
        else:
            lx = nn.functional.linear(x, down)
        if self.dropout:
            lx = nn.functional.dropout(lx, p=self.dropout)
        out = nn.functional.conv2d(lx, up) if lx.dim() == 4 and up.dim() == 4 \
            else nn.functional.linear(lx, up)
        return base + (out * (self.multiplier * float(self.alpha) / high)).to(base.dtype)


@dataclass
class NetworkShape:
    """A plain LoRA/LoCon network's shape (older callers; build.build_network reads the
    profile's [network] section directly)."""

    rank: int
    alpha: float
    conv_rank: int | None = None
    conv_alpha: float | None = None
    dropout: float | None = None
    train_unet: bool = True
    train_text_encoder: bool = True
    rank_dropout: float | None = None
    module_dropout: float | None = None


class LoRANetwork(AdapterNetwork):
    """All LoRA modules of one model, registered under their kohya names."""

    def __init__(self, unet: nn.Module, text_encoders: list[nn.Module], shape: NetworkShape,
                 text_encoder_prefixes: list[str] | None = None) -> None:
        super().__init__("LoCon" if shape.conv_rank is not None else "LoRA")
        self.shape = shape
        if shape.train_text_encoder:
            prefixes = text_encoder_prefixes or ["lora_te"] * len(text_encoders)
            for encoder, prefix in zip(text_encoders, prefixes, strict=True):
                for target in text_encoder_targets(encoder, prefix):
                    self.add(self._module(target, shape), text_encoder=True)
        if shape.train_unet:
            for target in unet_targets(unet, with_conv=shape.conv_rank is not None):
                self.add(self._module(target, shape), text_encoder=False)

    @staticmethod
    def _module(target: Target, shape: NetworkShape) -> LoRAModule:
        if target.is_conv3x3:
            rank = shape.conv_rank
            alpha = shape.conv_alpha if shape.conv_alpha is not None else 1.0
        else:
            rank, alpha = shape.rank, shape.alpha
        return LoRAModule(target.lora_name, target.module, rank, alpha, shape.dropout,
                          rank_dropout=shape.rank_dropout, module_dropout=shape.module_dropout)
