"""LoHa: a low-rank Hadamard-product update (Hyeon-Woo et al., 2021, "FedPara: Low-Rank
Hadamard Product for Communication-Efficient Federated Learning", arXiv:2108.06098), with
LyCORIS's key names and shapes so A1111, ComfyUI and LyCORIS read the files:

    ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b) · scale,    scale = alpha / rank

with ``w1_a, w2_a: [out, rank]`` and ``w1_b, w2_b: [rank, in·kh·kw]`` (``in`` per group). For
a Linear ``kh = kw = 1``; for a conv the [out, in·kh·kw] product is reshaped to the kernel
``[out, in, kh, kw]`` (LyCORIS' non-Tucker conv layout, which ComfyUI's
``weight_adapter/loha.py`` rebuilds as ``(m1 * m2).reshape(weight.shape)``). A rank-r LoHa
reaches rank r² with the parameters of a rank-2r LoRA.

Init (LyCORIS and sd-scripts' LoHa): ``w1_a ~ N(0, 0.1²)``, ``w1_b ~ N(0, 1)``,
``w2_a = 0``, ``w2_b ~ N(0, 1)``: ``w2_a = 0`` makes ΔW = 0, so an untrained network changes
nothing, while the other three factors start random so every factor gets a gradient once
``w2_a`` moves.

File keys per module: ``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b``, ``alpha``
(kohya-compat.md §6.7). Tucker (``hada_t1``/``hada_t2``) is not produced.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lora_core.network.adapter import DeltaWeightModule


class _HadamardProduct(torch.autograd.Function):
    """``(a1 @ b1) ⊙ (a2 @ b2) · s`` with a backward that recomputes the two products
    instead of keeping them: autograd would hold two full-size [out, in] matrices per module
    until the backward pass. With G = s · ∂L/∂ΔW, P1 = a1 b1 and P2 = a2 b2:

        ∂L/∂a1 = (G ⊙ P2) b1ᵀ    ∂L/∂b1 = a1ᵀ (G ⊙ P2)
        ∂L/∂a2 = (G ⊙ P1) b2ᵀ    ∂L/∂b2 = a2ᵀ (G ⊙ P1)
    """

    @staticmethod
    def forward(ctx, a1, b1, a2, b2, scale: float):
        ctx.save_for_backward(a1, b1, a2, b2)
        ctx.scale = scale
        return (a1 @ b1) * (a2 @ b2) * scale

    @staticmethod
    def backward(ctx, grad):
        a1, b1, a2, b2 = ctx.saved_tensors
        grad = grad * ctx.scale
        g2 = grad * (a2 @ b2)
        grad_a1, grad_b1 = g2 @ b1.T, a1.T @ g2
        del g2
        g1 = grad * (a1 @ b1)
        return grad_a1, grad_b1, g1 @ b2.T, a2.T @ g1, None


def hadamard_product(a1: torch.Tensor, b1: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """``(a1 @ b1) ⊙ (a2 @ b2) · scale`` (memory-lean gradient, see _HadamardProduct)."""
    return _HadamardProduct.apply(a1, b1, a2, b2, scale)


class LoHaModule(DeltaWeightModule):
    """A LoHa update added to one Linear or Conv2d (see the module docstring)."""

    kind = "LoHa"

    def __init__(self, lora_name: str, org_module: nn.Module, rank: int, alpha: float | None,
                 dropout: float | None = None, multiplier: float = 1.0,
                 rank_dropout: float | None = None,
                 module_dropout: float | None = None) -> None:
        super().__init__(lora_name, org_module, multiplier, dropout, rank_dropout,
                         module_dropout)
        out_dim = self.weight_shape[0]
        in_dim = math.prod(self.weight_shape[1:])  # in/groups · kh · kw
        self.hada_w1_a = nn.Parameter(torch.empty(out_dim, rank))
        self.hada_w1_b = nn.Parameter(torch.empty(rank, in_dim))
        self.hada_w2_a = nn.Parameter(torch.empty(out_dim, rank))
        self.hada_w2_b = nn.Parameter(torch.empty(rank, in_dim))
        nn.init.normal_(self.hada_w1_a, std=0.1)
        nn.init.normal_(self.hada_w1_b, std=1.0)
        nn.init.zeros_(self.hada_w2_a)
        nn.init.normal_(self.hada_w2_b, std=1.0)
        alpha = float(rank) if not alpha else float(alpha)  # alpha 0/None means alpha = rank
        self.register_buffer("alpha", torch.tensor(alpha))
        self.rank = rank
        self.scale = alpha / rank

    def refresh_scale(self) -> None:
        self.scale = float(self.alpha) / self.rank

    def delta_weight(self) -> torch.Tensor:
        delta = hadamard_product(self.hada_w1_a, self.hada_w1_b, self.hada_w2_a,
                                 self.hada_w2_b, self.scale)
        return delta.reshape(self.weight_shape)

    def factors(self) -> list[nn.Parameter]:
        return [self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b]
