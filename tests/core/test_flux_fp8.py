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


def test_fp8_conv2d_numerics_and_input_gradient():
    """The SD U-Nets' convolutions (issue 28): exactly a Conv2d whose weight was rounded to
    fp8, computed in the input's dtype; the input's gradient is the one autograd gives for
    that rounded weight, and the weight gets none."""
    from lora_core.models.fp8 import Fp8Conv2d

    torch.manual_seed(0)
    plain = nn.Conv2d(6, 5, 3, stride=2, padding=1)
    fp8 = Fp8Conv2d.from_conv(plain)
    assert isinstance(fp8, nn.Conv2d) and fp8.weight.dtype == torch.float8_e4m3fn
    rounded = nn.Conv2d(6, 5, 3, stride=2, padding=1)
    with torch.no_grad():
        rounded.weight.copy_(plain.weight.to(torch.float8_e4m3fn).float())
        rounded.bias.copy_(plain.bias)
    x = torch.randn(2, 6, 9, 9, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out, ref = fp8(x), rounded(x_ref)
    torch.testing.assert_close(out, ref)
    out.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert fp8.weight.grad is None
    assert fp8(x.detach().to(torch.bfloat16)).dtype == torch.bfloat16


def test_to_fp8_takes_convs_only_when_asked():
    tree = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding="same"),
                         nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    assert to_fp8(tree) == 0
    assert to_fp8(tree, convs=True) == 1  # zero padding given as numbers only
    assert type(tree[1]) is nn.Conv2d and type(tree[2]) is nn.Conv2d


def test_fp8_base_stores_an_sd_unet_and_its_text_encoder_in_a_byte_per_weight(tmp_path):
    """``fp8_base`` on an SD model: every Linear and zero-padded Conv2d of the U-Net and the
    text encoder's Linears in float8 (their weights a quarter of fp32's bytes), the output
    close to the fp32 model's; ``fp8_base_unet`` leaves the text encoder as it is."""
    from pathlib import Path

    from lora_core.families.sd.loading import load_model
    from lora_core.profile import TrainingSection

    def weight_bytes(module):
        return sum(p.numel() * p.element_size() for p in module.parameters())

    for key in ("fp8_base", "fp8_base_unet"):
        bundle = load_model("builtin:tiny-sd1", Path("."), torch.float32)
        unet_before, te_before = weight_bytes(bundle.unet), weight_bytes(bundle.text_encoders[0])
        sample = torch.randn(1, 4, 8, 8)
        context = torch.randn(1, 77, bundle.unet.config.cross_attention_dim)
        with torch.no_grad():
            ref = bundle.unet(sample, 10, context).sample
        placed = bundle.impl.place_transformer(bundle, TrainingSection(**{key: True}), "cpu",
                                               torch.float32)
        assert placed is False  # the trainer places it (keeping the fp8 weights)
        convs = [m for m in bundle.unet.modules() if type(m) is nn.Conv2d]
        assert convs == [], convs  # every conv of the diffusers U-Net is zero-padded
        assert weight_bytes(bundle.unet) < 0.4 * unet_before
        te = bundle.text_encoders[0]
        linears = [m for m in te.modules() if isinstance(m, nn.Linear)]
        if key == "fp8_base":  # its Linears (not the token embeddings, as sd-scripts' cast)
            assert all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
            assert weight_bytes(te) < te_before
        else:
            assert all(m.weight.dtype == torch.float32 for m in linears)
            assert weight_bytes(te) == te_before
        with torch.no_grad():
            out = bundle.unet(sample, 10, context).sample
        assert (out - ref).abs().max() < 0.1 * ref.abs().max()
