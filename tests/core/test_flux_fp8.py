"""Linear layers stored as float8_e4m3fn and computed in a wider dtype."""

from __future__ import annotations

import torch
from torch import nn

from lora_core.families.flux.fp8 import Fp8Linear, to_fp8


def test_fp8_linear_numerics():
    torch.manual_seed(0)
    plain = nn.Linear(64, 32)
    x = torch.randn(8, 64)
    fp8 = Fp8Linear.from_linear(plain)
    assert fp8.weight.dtype == torch.float8_e4m3fn and fp8.weight.element_size() == 1
    assert not fp8.weight.requires_grad and fp8.bias.dtype == torch.float32
    # exactly a plain Linear whose weight was rounded to fp8
    rounded = plain.weight.detach().to(torch.float8_e4m3fn).float()
    out = fp8(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x @ rounded.T + plain.bias.detach())
    # and close to the unrounded one (e4m3 keeps 3 mantissa bits: relative error <= 1/16)
    ref = plain(x).detach()
    assert (out - ref).abs().max() < 0.08 * ref.abs().max()
    # bf16 inputs compute in bf16; gradients still reach the input (LoRA training)
    xb = x.to(torch.bfloat16).requires_grad_()
    yb = fp8(xb)
    assert yb.dtype == torch.bfloat16
    yb.sum().backward()
    assert xb.grad is not None and fp8.weight.grad is None


def test_to_fp8_replaces_linears_in_a_tree_and_keeps_skipped_ones():
    tree = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)),
                         nn.Conv2d(1, 1, 1))
    assert to_fp8(tree, skip=("1",)) == 1
    assert isinstance(tree[0], Fp8Linear) and isinstance(tree[0], nn.Linear)
    assert type(tree[1][0]) is nn.Linear and type(tree[2]) is nn.Conv2d
    assert to_fp8(tree, compute_dtype=torch.bfloat16) == 1
    assert tree[0].compute_dtype == torch.bfloat16
    assert tree[0](torch.randn(2, 4)).dtype == torch.bfloat16
