"""Linear layers stored as float8_e4m3fn and computed in a wider dtype."""

from __future__ import annotations

import torch
from torch import nn

from lora_core.models.fp8 import Fp8Linear, to_fp8


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


def test_fp8_linear_keeps_only_the_fp8_weight_for_the_backward():
    """The backward of an Fp8Linear gets the same input gradient as a plain Linear with the
    widened weight, while autograd holds the one-byte weight, not a widened copy (which for
    a whole model would be its full fp32 size again)."""
    import torch
    from torch import nn

    from lora_core.models.fp8 import Fp8Linear

    torch.manual_seed(0)
    plain = nn.Linear(32, 48).requires_grad_(False)
    fp8 = Fp8Linear.from_linear(plain)
    widened = nn.Linear(32, 48).requires_grad_(False)
    widened.weight.copy_(fp8.weight.to(torch.float32))
    widened.bias.copy_(plain.bias)
    x1 = torch.randn(3, 5, 32, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fp8(x1)
    out2 = widened(x2)
    assert torch.equal(out, out2)
    (out * out).sum().backward()
    (out2 * out2).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)
    weights = [t for t in saved if t.dim() == 2 and t.shape == (48, 32)]
    assert weights and all(t.dtype == torch.float8_e4m3fn for t in weights)
