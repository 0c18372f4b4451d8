"""Linear layers whose weights are stored as float8 (e4m3fn) and computed in a wider dtype.

sd-scripts' ``fp8_base``: the frozen base model's weights take one byte each instead of two
(bf16) or four (fp32); every forward upcasts the weight of the one layer being run to the
compute dtype (bf16 on a GPU, fp32 when mixed precision is off, so a CPU runs it), so only
one layer's wide copy exists at a time. Biases stay in their original dtype (they are
small). Nothing here is Flux-specific: ``to_fp8`` takes any module tree, so the SD / SDXL
U-Nets can use it too.

A LoRA wrapped around an ``Fp8Linear`` sees an ``nn.Linear`` (it subclasses it), so module
discovery and naming are unchanged. The weight is frozen: fp8 weights cannot be trained.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

FP8_DTYPE = torch.float8_e4m3fn
FP8_DTYPES = (torch.float8_e4m3fn,)  # sd-scripts refuses e4m3fnuz / e5m2 files


class Fp8Linear(nn.Linear):
    """``nn.Linear`` with an fp8 weight; ``forward`` computes in ``compute_dtype`` (or in the
    input's floating dtype when ``compute_dtype`` is None)."""

    compute_dtype: torch.dtype | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, compute_dtype: torch.dtype | None = None
                    ) -> Fp8Linear:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        if weight.dtype != FP8_DTYPE:
            weight = weight.to(FP8_DTYPE)
        new.weight = nn.Parameter(weight, requires_grad=False)
        new.bias = linear.bias
        new.compute_dtype = compute_dtype
        return new

    def forward(self, x: Tensor) -> Tensor:
        dtype = self.compute_dtype or (x.dtype if x.is_floating_point() else torch.float32)
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x.to(dtype), self.weight.to(dtype), bias)


def to_fp8(root: nn.Module, compute_dtype: torch.dtype | None = None,
           skip: tuple[str, ...] = ()) -> int:
    """Replace every ``nn.Linear`` under ``root`` (not under a path starting with one of
    ``skip``) by an ``Fp8Linear`` in place; returns how many were replaced.

    ``compute_dtype`` None computes in the input's dtype: fp32 without mixed precision,
    bf16/fp16 under a cast or autocast.
    """
    count = 0
    for parent_path, parent in list(root.named_modules()):
        for name, child in list(parent.named_children()):
            path = f"{parent_path}.{name}" if parent_path else name
            if any(path == s or path.startswith(s + ".") for s in skip):
                continue
            if type(child) is nn.Linear:
                setattr(parent, name, Fp8Linear.from_linear(child, compute_dtype))
                count += 1
            elif isinstance(child, Fp8Linear) and compute_dtype is not None:
                child.compute_dtype = compute_dtype
    return count


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2,
                     torch.float8_e5m2fnuz)
