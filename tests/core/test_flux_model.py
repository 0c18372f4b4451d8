"""The Flux DiT: BFL key layout, config read from tensors, forward/backward, checkpointing.

Expected key names and shapes are written out here from Black Forest Labs' layout
(flux/model.py + modules/layers.py), not taken from our model.
"""

from __future__ import annotations

import pytest
import torch

from lora_core.families.flux.config import FluxConfig, config_from_shapes, default_axes_dim
from lora_core.families.flux.model import Flux

# Widths and depths other than the built-in's (64 wide, 4 heads, 2 + 2 blocks).
OTHER = FluxConfig(in_channels=64, vec_in_dim=40, context_in_dim=56, hidden_size=96,
                   mlp_ratio=2.0, num_heads=2, depth=3, depth_single_blocks=1,
                   axes_dim=default_axes_dim(48), qkv_bias=True, guidance_embed=True)


def bfl_layout(depth: int, single: int, hidden: int, mlp: int, head: int, vec: int, ctx: int,
               guidance: bool, qkv_bias: bool = True) -> dict[str, tuple[int, ...]]:
    """BFL's flux1 state dict keys and shapes, from the layout description."""
    out: dict[str, tuple[int, ...]] = {}

    def lin(name: str, n_out: int, n_in: int, bias: bool = True) -> None:
        out[f"{name}.weight"] = (n_out, n_in)
        if bias:
            out[f"{name}.bias"] = (n_out,)

    lin("img_in", hidden, 64)
    lin("time_in.in_layer", hidden, 256)
    lin("time_in.out_layer", hidden, hidden)
    lin("vector_in.in_layer", hidden, vec)
    lin("vector_in.out_layer", hidden, hidden)
    if guidance:
        lin("guidance_in.in_layer", hidden, 256)
        lin("guidance_in.out_layer", hidden, hidden)
    lin("txt_in", hidden, ctx)
    for n in range(depth):
        for s in ("img", "txt"):
            p = f"double_blocks.{n}.{s}"
            lin(f"{p}_mod.lin", 6 * hidden, hidden)
            lin(f"{p}_attn.qkv", 3 * hidden, hidden, bias=qkv_bias)
            out[f"{p}_attn.norm.query_norm.scale"] = (head,)
            out[f"{p}_attn.norm.key_norm.scale"] = (head,)
            lin(f"{p}_attn.proj", hidden, hidden)
            lin(f"{p}_mlp.0", mlp, hidden)
            lin(f"{p}_mlp.2", hidden, mlp)
    for n in range(single):
        p = f"single_blocks.{n}"
        lin(f"{p}.linear1", 3 * hidden + mlp, hidden)
        lin(f"{p}.linear2", hidden, hidden + mlp)
        out[f"{p}.norm.query_norm.scale"] = (head,)
        out[f"{p}.norm.key_norm.scale"] = (head,)
        lin(f"{p}.modulation.lin", 3 * hidden, hidden)
    lin("final_layer.linear", 64, hidden)
    lin("final_layer.adaLN_modulation.1", 2 * hidden, hidden)
    return out


def shapes_of(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("guidance", [True, False])
def test_state_dict_keys_and_shapes_are_bfl_layout(guidance):
    config = FluxConfig(**{**OTHER.__dict__, "guidance_embed": guidance})
    expected = bfl_layout(3, 1, 96, 192, 48, 40, 56, guidance)
    assert shapes_of(Flux(config)) == expected


def test_config_is_read_from_tensor_shapes_not_assumed():
    shapes = bfl_layout(depth=5, single=7, hidden=160, mlp=480, head=32, vec=24, ctx=72,
                        guidance=False, qkv_bias=False)
    config = config_from_shapes(shapes)
    assert (config.depth, config.depth_single_blocks) == (5, 7)
    assert (config.hidden_size, config.num_heads, config.head_dim) == (160, 5, 32)
    assert (config.mlp_ratio, config.vec_in_dim, config.context_in_dim) == (3.0, 24, 72)
    assert config.guidance_embed is False and config.qkv_bias is False
    assert sum(config.axes_dim) == 32


def test_real_flux_shapes_give_the_reference_config():
    shapes = bfl_layout(19, 38, 3072, 12288, 128, 768, 4096, guidance=True)
    config = config_from_shapes(shapes)
    assert (config.num_heads, config.axes_dim, config.mlp_ratio) == (24, (16, 56, 56), 4.0)
    assert (config.depth, config.depth_single_blocks, config.guidance_embed) == (19, 38, True)


def _inputs(batch: int = 2, h: int = 3, w: int = 2, txt_len: int = 5):
    gen = torch.Generator().manual_seed(0)
    ids = torch.zeros(batch, h * w, 3)
    ids[..., 1] = torch.arange(h).repeat_interleave(w)
    ids[..., 2] = torch.arange(w).repeat(h)
    return dict(img=torch.randn(batch, h * w, 64, generator=gen), img_ids=ids,
                txt=torch.randn(batch, txt_len, OTHER.context_in_dim, generator=gen),
                txt_ids=torch.zeros(batch, txt_len, 3), timesteps=torch.tensor([0.3, 0.8]),
                y=torch.randn(batch, OTHER.vec_in_dim, generator=gen),
                guidance=torch.full((batch,), 3.5))


def test_forward_backward_and_checkpointing_give_the_same_gradients():
    torch.manual_seed(0)
    model = Flux(OTHER).train()
    inputs = _inputs()
    out = model(**inputs)
    assert out.shape == (2, 6, 64) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    assert grads["double_blocks.2.img_attn.qkv.weight"].abs().sum() > 0
    assert grads["single_blocks.0.linear1.weight"].abs().sum() > 0
    model.zero_grad()
    model.enable_gradient_checkpointing()
    out2 = model(**inputs)
    out2.square().mean().backward()
    assert torch.equal(out, out2)
    for key, grad in grads.items():
        torch.testing.assert_close(model.get_parameter(key).grad, grad)


def test_dev_model_refuses_a_missing_guidance_and_mask_hides_padding():
    torch.manual_seed(0)
    model = Flux(OTHER).eval()
    inputs = _inputs()
    with pytest.raises(ValueError, match="guidance"):
        model(**{**inputs, "guidance": None})
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]])
    masked = model(**inputs, txt_attention_mask=mask)
    changed = dict(inputs, txt=inputs["txt"].clone())
    changed["txt"][:, 2:] = 100.0  # only padded positions change
    assert torch.allclose(model(**changed, txt_attention_mask=mask), masked, atol=1e-5)
    assert not torch.allclose(model(**changed), model(**inputs), atol=1e-3)


def test_rope_rotates_pairs_by_position():
    from lora_core.families.flux.model import apply_rope, rope_angles

    ids = torch.tensor([[[0.0, 2.0, 0.0]]])  # row 2
    cos, sin = rope_angles(ids, (2, 2, 2), theta=10_000)
    x = torch.tensor([[[[1.0, 0.0, 1.0, 0.0, 1.0, 0.0]]]])
    out = apply_rope(x, (cos, sin))
    # axis 1 pair rotated by angle 2 (frequency 1); axes 0 and 2 sit at 0 (no rotation)
    expected = torch.tensor([1.0, 0.0, torch.cos(torch.tensor(2.0)),
                             torch.sin(torch.tensor(2.0)), 1.0, 0.0])
    torch.testing.assert_close(out.flatten(), expected)


CHROMA = FluxConfig(**{**OTHER.__dict__, "vec_in_dim": 0, "guidance_embed": False,
                       "approximator": (16, 48, 2)})


def test_chroma_layout_has_the_distilled_guidance_layer_instead_of_modulation():
    expected = {k: v for k, v in bfl_layout(3, 1, 96, 192, 48, 40, 56, guidance=False).items()
                if not k.startswith(("time_in.", "vector_in.", "final_layer.adaLN"))
                and "_mod.lin" not in k and ".modulation.lin" not in k}
    expected.update({"distilled_guidance_layer.in_proj.weight": (48, 16),
                     "distilled_guidance_layer.in_proj.bias": (48,),
                     "distilled_guidance_layer.out_proj.weight": (96, 48),
                     "distilled_guidance_layer.out_proj.bias": (96,)})
    for n in range(2):
        p = f"distilled_guidance_layer.layers.{n}"
        expected.update({f"{p}.in_layer.weight": (48, 48), f"{p}.in_layer.bias": (48,),
                         f"{p}.out_layer.weight": (48, 48), f"{p}.out_layer.bias": (48,),
                         f"distilled_guidance_layer.norms.{n}.scale": (48,)})
    assert shapes_of(Flux(CHROMA)) == expected
    assert config_from_shapes(expected, axes_dim=CHROMA.axes_dim) == CHROMA
    assert CHROMA.num_mod_vectors == 3 * 1 + 12 * 3 + 2


def test_chroma_sees_text_up_to_one_token_past_the_mask_and_trains():
    torch.manual_seed(0)
    model = Flux(CHROMA).train()
    inputs = {**_inputs(), "y": None, "guidance": torch.zeros(2)}
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    out = model(**inputs, txt_attention_mask=mask)
    late = dict(inputs, txt=inputs["txt"].clone())
    late["txt"][0, 3:] = 50.0  # beyond the one extra token: ignored
    late["txt"][1, 4:] = 50.0
    torch.testing.assert_close(model(**late, txt_attention_mask=mask), out)
    first_pad = dict(inputs, txt=inputs["txt"].clone())
    first_pad["txt"][0, 2] = 50.0  # the one padding token Chroma attends to
    assert not torch.allclose(model(**first_pad, txt_attention_mask=mask)[0], out[0])
    out.square().mean().backward()
    assert model.double_blocks[0].img_attn.qkv.weight.grad.abs().sum() > 0
    assert model.distilled_guidance_layer.in_proj.weight.grad is None  # no_grad, as sd-scripts
