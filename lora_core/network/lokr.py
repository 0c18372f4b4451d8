"""LoKr: a Kronecker-product update (Yeh et al., 2023, "Navigating Text-To-Image
Customization: From LyCORIS Fine-Tuning to Model Evaluation", arXiv:2309.14859), with
LyCORIS's key names and shapes so A1111, ComfyUI and LyCORIS read the files.

The layer's weight [out, in, (kh, kw)] is split along both axes, ``out = a·b`` and
``in = c·d`` (see :func:`factorization`), and

    ΔW = kron(w1, w2) · scale,    w1: [a, c],    w2: [b, d, (kh, kw)]

so ``ΔW[i·b + p, j·d + q] = w1[i, j] · w2[p, q]`` (for a conv w1 is broadcast over the
kernel, as ComfyUI's ``weight_adapter/lokr.py`` does with ``w1.unsqueeze(2).unsqueeze(2)``).

* ``w1`` (the small factor) is a full matrix ``lokr_w1`` (LyCORIS' default; with
  ``decompose_both`` and a small enough rank it is ``lokr_w1_a [a, r] @ lokr_w1_b [r, c]``).
* ``w2`` (the large factor) is low-rank, ``lokr_w2_a [b, r] @ lokr_w2_b [r, d·kh·kw]``
  reshaped to ``[b, d, kh, kw]``, unless ``rank >= max(b, d) / 2``, when a low-rank pair
  would not be smaller than the matrix: then it is a full ``lokr_w2 [b, d, (kh, kw)]``
  (LyCORIS' rule).
* ``scale = alpha / rank`` when a factor is low-rank; when both factors are full matrices
  there is no rank and ``scale = 1`` — ``alpha`` is then saved as ``rank``, as LyCORIS does,
  and ComfyUI ignores it.

Init (LyCORIS): ``w1`` (or ``w1_a``, ``w1_b``) and ``w2_a`` Kaiming-uniform (a = √5);
``w2`` or ``w2_b`` zero, so ΔW = 0 and an untrained network changes nothing.

File keys per module (kohya-compat.md §6.7): ``lokr_w1`` or ``lokr_w1_a`` + ``lokr_w1_b``;
``lokr_w2`` or ``lokr_w2_a`` + ``lokr_w2_b``; ``alpha``. Tucker (``lokr_t2``) is not produced.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lora_core.network.adapter import DeltaWeightModule


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dimension`` into ``(m, n)``, ``m <= n``, ``m · n = dimension`` (LyCORIS' rule).

    * ``factor > 0`` dividing ``dimension``: ``{factor, dimension / factor}`` ordered.
    * otherwise ``m`` is the largest divisor of ``dimension`` that is at most ``√dimension``
      and, when ``factor > 0``, at most ``factor`` (``factor = -1``: the most balanced
      split). E.g. 320 → (16, 20), 1280 → (32, 40), 768 → (24, 32), 127 → (1, 127).
    """
    if factor > 0 and dimension % factor == 0:
        return min(factor, dimension // factor), max(factor, dimension // factor)
    limit = math.isqrt(dimension) if factor < 0 else min(factor, math.isqrt(dimension))
    m = max(d for d in range(1, limit + 1) if dimension % d == 0)
    return m, dimension // m


class LoKrModule(DeltaWeightModule):
    """A LoKr update added to one Linear or Conv2d (see the module docstring)."""

    kind = "LoKr"

    def __init__(self, lora_name: str, org_module: nn.Module, rank: int, alpha: float | None,
                 dropout: float | None = None, multiplier: float = 1.0,
                 rank_dropout: float | None = None, module_dropout: float | None = None,
                 factor: int = -1, decompose_both: bool = False) -> None:
        super().__init__(lora_name, org_module, multiplier, dropout, rank_dropout,
                         module_dropout)
        out_dim, in_dim, *kernel = self.weight_shape  # in_dim is per group
        a, b = factorization(out_dim, factor)
        c, d = factorization(in_dim, factor)
        self.kernel = tuple(kernel)
        self.w2_shape = (b, d, *kernel)

        if decompose_both and rank < max(a, c) / 2:
            self.lokr_w1_a = nn.Parameter(torch.empty(a, rank))
            self.lokr_w1_b = nn.Parameter(torch.empty(rank, c))
            nn.init.kaiming_uniform_(self.lokr_w1_a, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.lokr_w1_b, a=math.sqrt(5))
            self.w1_full = False
        else:
            self.lokr_w1 = nn.Parameter(torch.empty(a, c))
            nn.init.kaiming_uniform_(self.lokr_w1, a=math.sqrt(5))
            self.w1_full = True

        if rank >= max(b, d) / 2:
            self.lokr_w2 = nn.Parameter(torch.zeros(self.w2_shape))
            self.w2_full = True
        else:
            self.lokr_w2_a = nn.Parameter(torch.empty(b, rank))
            self.lokr_w2_b = nn.Parameter(torch.zeros(rank, d * math.prod(kernel)))
            nn.init.kaiming_uniform_(self.lokr_w2_a, a=math.sqrt(5))
            self.w2_full = False

        alpha = float(rank) if not alpha else float(alpha)  # alpha 0/None means alpha = rank
        if self.w1_full and self.w2_full:
            alpha = float(rank)  # no low-rank factor: scale 1, saved as alpha = rank
        self.register_buffer("alpha", torch.tensor(alpha))
        self.rank = rank
        self.refresh_scale()

    def refresh_scale(self) -> None:
        self.scale = 1.0 if self.w1_full and self.w2_full else float(self.alpha) / self.rank

    def w1(self) -> torch.Tensor:
        return self.lokr_w1 if self.w1_full else self.lokr_w1_a @ self.lokr_w1_b

    def w2(self) -> torch.Tensor:
        if self.w2_full:
            return self.lokr_w2
        return (self.lokr_w2_a @ self.lokr_w2_b).reshape(self.w2_shape)

    def delta_weight(self) -> torch.Tensor:
        w1 = self.w1()
        if self.kernel:
            w1 = w1.reshape(*w1.shape, *[1] * len(self.kernel))
        return torch.kron(w1, self.w2()) * self.scale

    def factors(self) -> list[nn.Parameter]:
        first = [self.lokr_w1] if self.w1_full else [self.lokr_w1_a, self.lokr_w1_b]
        second = [self.lokr_w2] if self.w2_full else [self.lokr_w2_a, self.lokr_w2_b]
        return first + second
