"""sd-scripts' ``split_qkv`` LoRA module for Flux (``networks.lora_flux``, ``split_dims``).

Flux fuses q, k and v in one Linear (a double block's ``attn.qkv``; a single block's
``linear1`` also carries the MLP's input). With ``split_qkv`` each of the n output pieces
(sizes ``split_dims``: 3 × hidden, or 3 × hidden + mlp_hidden) gets a LoRA of its own:

    y = W x + concat_i(up_i(drop(down_i(x)))) · multiplier · scale,    scale = alpha / rank

with every ``down_i`` (rank × in) Kaiming-uniform (a = √5) and every ``up_i``
(split_dims[i] × rank) zero, so an untrained module changes nothing.

The file holds it merged, exactly as sd-scripts' ``LoRANetwork.state_dict`` writes it:
``lora_down.weight`` = cat(down_i) (n·rank × in), ``lora_up.weight`` block-diagonal
(out × n·rank: up_i at rows of piece i, columns i·rank …), ``alpha`` unchanged. Reading
such a file back (resume, ``network_weights``) splits it as sd-scripts' ``load_state_dict``
does: down by n equal row chunks, up by its diagonal blocks. The merge is lossless, so
resume is exact. A reader that does not split (ComfyUI, sd-scripts without split_qkv) sees
rank n·rank and so the scale alpha/(n·rank), which is what sd-scripts' files give there too.

sd-scripts (main, 2026-02) computes a double block's split as ``(split_dims,) =
get_qkv_mlp_split_dims()[:3]``, which fails to unpack, so there split_qkv trains only with
``train_blocks = "single"``; here a double block's qkv is split in its 3 pieces, in the form
sd-scripts' own ``state_dict`` / ``load_state_dict`` write and read (``[:3]``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lora_core.network.adapter import AdapterModule


class _Pieces:
    """The pieces of one side (every down, or every up) as one factor for max-norm."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self.dtype = params[0].dtype

    def mul_(self, value: torch.Tensor) -> None:
        for param in self.params:
            param.mul_(value)


class SplitLoRAModule(AdapterModule):
    """A LoRA per output piece of one fused Linear, saved as one merged LoRA."""

    kind = "LoRA"

    def __init__(self, lora_name: str, org_module: nn.Linear, rank: int, alpha: float | None,
                 split_dims: tuple[int, ...], dropout: float | None = None,
                 multiplier: float = 1.0, rank_dropout: float | None = None,
                 module_dropout: float | None = None) -> None:
        super().__init__(lora_name, org_module, multiplier, dropout, rank_dropout,
                         module_dropout)
        if not isinstance(org_module, nn.Linear) or sum(split_dims) != org_module.out_features:
            raise ValueError(f"{lora_name}: split_dims {split_dims} do not add up to the "
                             "Linear's output width")
        self.split_dims = tuple(split_dims)
        self.lora_down = nn.ModuleList(nn.Linear(org_module.in_features, rank, bias=False)
                                       for _ in split_dims)
        self.lora_up = nn.ModuleList(nn.Linear(rank, d, bias=False) for d in split_dims)
        for down in self.lora_down:
            nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
        for up in self.lora_up:
            nn.init.zeros_(up.weight)
        alpha = float(rank) if not alpha else float(alpha)
        self.register_buffer("alpha", torch.tensor(alpha))
        self.rank = rank
        self.scale = alpha / rank
        self._register_load_state_dict_pre_hook(self._split_merged)

    def refresh_scale(self) -> None:
        self.scale = float(self.alpha) / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self._org_forward(x)
        if self.module_dropped():
            return base
        x = x.to(self.lora_down[0].weight.dtype)
        scale = self.scale
        outs = []
        for down, up in zip(self.lora_down, self.lora_up, strict=True):
            lx = down(x)
            if self.dropout and self.training:
                lx = nn.functional.dropout(lx, p=self.dropout)
            if self.rank_dropout and self.training:
                keep = torch.rand(lx.shape[0], self.rank, device=lx.device) > self.rank_dropout
                keep = keep.to(lx.dtype)
                lx = lx * (keep.unsqueeze(1) if lx.dim() == 3 else keep)
            outs.append(up(lx))
        if self.rank_dropout and self.training:
            scale = scale / (1.0 - self.rank_dropout)
        return base + (torch.cat(outs, dim=-1) * (self.multiplier * scale)).to(base.dtype)

    def merged(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(down, up) as the file holds them: cat(down_i) and the block-diagonal up."""
        down = torch.cat([d.weight for d in self.lora_down], dim=0)
        up = torch.block_diag(*[u.weight for u in self.lora_up])
        return down, up

    def delta_weight(self) -> torch.Tensor:
        down, up = self.merged()
        return up @ down * self.scale

    def factors(self) -> list[_Pieces]:
        """ΔW is linear in all the downs together and in all the ups together (each piece
        is up_i·down_i), so max-norm scales two factors, each one side's pieces."""
        return [_Pieces([d.weight for d in self.lora_down]),
                _Pieces([u.weight for u in self.lora_up])]

    # --- the file's merged form ------------------------------------------------------------

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        if destination is None:
            destination = {}
        down, up = self.merged()
        if not keep_vars:
            down, up = down.detach(), up.detach()
        destination[f"{prefix}lora_down.weight"] = down
        destination[f"{prefix}lora_up.weight"] = up
        destination[f"{prefix}alpha"] = self.alpha if keep_vars else self.alpha.detach()
        return destination

    def _split_merged(self, state_dict, prefix, *args) -> None:
        """Merged ``lora_down.weight`` / ``lora_up.weight`` in ``state_dict`` -> the pieces
        (sd-scripts' ``load_state_dict``); keys already split are left as they are."""
        down = state_dict.pop(f"{prefix}lora_down.weight", None)
        up = state_dict.pop(f"{prefix}lora_up.weight", None)
        n = len(self.split_dims)
        if down is not None:
            for i, piece in enumerate(torch.chunk(down, n, dim=0)):
                state_dict[f"{prefix}lora_down.{i}.weight"] = piece
        if up is not None:
            rank = up.shape[1] // n
            row = 0
            for i, size in enumerate(self.split_dims):
                state_dict[f"{prefix}lora_up.{i}.weight"] = \
                    up[row:row + size, i * rank:(i + 1) * rank]
                row += size
