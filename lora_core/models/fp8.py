"""Linear and Conv2d layers whose weights are stored as float8 (e4m3fn) and computed in a
wider dtype (any model family: the Flux transformer, the SD 1.x / 2.x / SDXL U-Nets and
their text encoders).

sd-scripts' ``fp8_base``: the frozen base model's weights take one byte each instead of two
(bf16) or four (fp32); every forward upcasts the weight of the one layer being run to the
compute dtype (bf16 on a GPU, fp32 when mixed precision is off, so a CPU runs it), so only
one layer's wide copy exists at a time. Biases stay in their original dtype (they are
small). Nothing here is family-specific: ``to_fp8`` takes any module tree.

A LoRA wrapped around an ``Fp8Linear`` / ``Fp8Conv2d`` sees an ``nn.Linear`` / ``nn.Conv2d``
(they subclass them), so module discovery and naming are unchanged. The weight is frozen:
fp8 weights cannot be trained. Each keeps only its fp8 weight for the backward (not the
widened copy), so the saving holds through the backward too.
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
        if torch.is_grad_enabled() and x.requires_grad and not self.weight.requires_grad \
                and (bias is None or not bias.requires_grad):
            return _Fp8Linear.apply(x.to(dtype), self.weight, bias, dtype)
        return F.linear(x.to(dtype), self.weight.to(dtype), bias)


class _Fp8Linear(torch.autograd.Function):
    """``F.linear`` with a frozen fp8 weight that keeps only the fp8 weight for the backward
    (plain autograd would keep the widened copy of every layer until the backward, and the
    model would need its full width in memory again), widening it once more there."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype
                ) -> Tensor:
        ctx.save_for_backward(weight)
        ctx.dtype = dtype
        return F.linear(x, weight.to(dtype), bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (weight,) = ctx.saved_tensors
        return grad_out.matmul(weight.to(grad_out.dtype)), None, None, None


class Fp8Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with an fp8 weight (zero padding); ``forward`` computes in
    ``compute_dtype`` (or in the input's floating dtype when ``compute_dtype`` is None)."""

    compute_dtype: torch.dtype | None = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, compute_dtype: torch.dtype | None = None
                  ) -> Fp8Conv2d:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                     "dilation", "transposed", "output_padding", "groups", "padding_mode",
                     "_reversed_padding_repeated_twice"):
            setattr(new, name, getattr(conv, name))
        weight = conv.weight.detach()
        if weight.dtype != FP8_DTYPE:
            weight = weight.to(FP8_DTYPE)
        new.weight = nn.Parameter(weight, requires_grad=False)
        new.bias = conv.bias
        new.compute_dtype = compute_dtype
        return new

    def forward(self, x: Tensor) -> Tensor:
        dtype = self.compute_dtype or (x.dtype if x.is_floating_point() else torch.float32)
        bias = None if self.bias is None else self.bias.to(dtype)
        geometry = (self.stride, self.padding, self.dilation, self.groups)
        if torch.is_grad_enabled() and x.requires_grad and not self.weight.requires_grad \
                and (bias is None or not bias.requires_grad):
            return _Fp8Conv2d.apply(x.to(dtype), self.weight, bias, dtype, geometry)
        return F.conv2d(x.to(dtype), self.weight.to(dtype), bias, *geometry)


class _Fp8Conv2d(torch.autograd.Function):
    """``F.conv2d`` with a frozen fp8 weight that keeps only the fp8 weight (and the input's
    shape) for the backward: the input's gradient is the transposed convolution with the
    weight widened again there."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype,
                geometry: tuple) -> Tensor:
        ctx.save_for_backward(weight)
        ctx.dtype, ctx.geometry, ctx.input_shape = dtype, geometry, x.shape
        return F.conv2d(x, weight.to(dtype), bias, *geometry)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (weight,) = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        grad_x = torch.nn.grad.conv2d_input(ctx.input_shape, weight.to(grad_out.dtype),
                                            grad_out, stride, padding, dilation, groups)
        return grad_x, None, None, None, None


def to_fp8(root: nn.Module, compute_dtype: torch.dtype | None = None,
           skip: tuple[str, ...] = (), convs: bool = False) -> int:
    """Replace every ``nn.Linear`` under ``root`` (and with ``convs`` every zero-padded
    ``nn.Conv2d``; not under a path starting with one of ``skip``) by its fp8 form in place;
    returns how many were replaced.

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
            elif convs and type(child) is nn.Conv2d and child.padding_mode == "zeros" \
                    and not isinstance(child.padding, str):
                setattr(parent, name, Fp8Conv2d.from_conv(child, compute_dtype))
                count += 1
            elif isinstance(child, (Fp8Linear, Fp8Conv2d)) and compute_dtype is not None:
                child.compute_dtype = compute_dtype
    return count


def move_keeping_fp8(module: nn.Module, device: torch.device | str, dtype: torch.dtype
                     ) -> nn.Module:
    """``module.to(device, dtype)`` for every tensor but the float8 ones, which only move:
    a plain ``.to(dtype)`` would widen the fp8 weights back and undo ``fp8_base``."""
    def convert(t: Tensor) -> Tensor:
        if is_fp8(t.dtype):
            return t.to(device)
        return t.to(device, dtype if t.is_floating_point() else None)

    return module._apply(convert)


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2,
                     torch.float8_e5m2fnuz)
