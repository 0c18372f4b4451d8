"""LoRA module names and shapes as sd-scripts' networks/lora_flux.py gives them.

The expected names are written out from lora_flux's rules (prefix + module path, dots to
underscores, Linears in DoubleStreamBlock / SingleStreamBlock), not from our naming code.
"""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from lora_core.errors import ProfileError
from lora_core.families.flux.config import FluxConfig, default_axes_dim
from lora_core.families.flux.model import Flux
from lora_core.families.flux.naming import FluxNetworkArgs, network_targets

CONFIG = FluxConfig(in_channels=64, vec_in_dim=32, context_in_dim=40, hidden_size=96,
                    mlp_ratio=2.0, num_heads=2, depth=3, depth_single_blocks=2,
                    axes_dim=default_axes_dim(48))
H, MLP = 96, 192


def expected_dit(doubles=range(3), singles=range(2)) -> dict[str, tuple[int, int]]:
    """name -> (in, out) of every lora_flux DiT module."""
    out = {}
    for n in doubles:
        for s in ("img", "txt"):
            p = f"lora_unet_double_blocks_{n}_{s}"
            out[f"{p}_mod_lin"] = (H, 6 * H)
            out[f"{p}_attn_qkv"] = (H, 3 * H)
            out[f"{p}_attn_proj"] = (H, H)
            out[f"{p}_mlp_0"] = (H, MLP)
            out[f"{p}_mlp_2"] = (MLP, H)
    for n in singles:
        p = f"lora_unet_single_blocks_{n}"
        out[f"{p}_linear1"] = (H, 3 * H + MLP)
        out[f"{p}_linear2"] = (H + MLP, H)
        out[f"{p}_modulation_lin"] = (H, 3 * H)
    return out


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2,
                                        max_position_embeddings=77))
    t5 = T5EncoderModel(T5Config(vocab_size=50, d_model=40, d_kv=20, d_ff=48, num_layers=2,
                                 num_heads=2, feed_forward_proj="gated-gelu"))
    return Flux(CONFIG), clip, t5


def _shapes(targets):
    out = {}
    for t in targets:
        out.update({k: s for k, s in t.file_shapes().items()})
    return out


def test_default_network_names_and_shapes(models):
    flux, clip, t5 = models
    targets = network_targets(flux, clip, t5, rank=4, alpha=1.0)
    te1 = [f"lora_te1_text_model_encoder_layers_{i}_{m}" for i in range(2)
           for m in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj",
                     "self_attn_out_proj", "mlp_fc1", "mlp_fc2")]
    names = [t.lora_name for t in targets]
    assert set(names[:12]) == set(te1)  # text encoder first, no T5 without train_t5xxl
    dit = expected_dit()
    assert names[12:] == list(dit)  # model order: double blocks then single blocks
    shapes = _shapes(targets)
    for name, (n_in, n_out) in dit.items():
        assert shapes[f"{name}.lora_down.weight"] == (4, n_in)
        assert shapes[f"{name}.lora_up.weight"] == (n_out, 4)
        assert shapes[f"{name}.alpha"] == ()


def test_train_t5xxl_and_train_blocks(models):
    flux, clip, t5 = models
    names = {t.lora_name for t in network_targets(flux, clip, t5, 4, 1.0,
                                                   FluxNetworkArgs(train_t5xxl=True))}
    te3 = {f"lora_te3_encoder_block_{i}_layer_0_SelfAttention_{m}" for i in range(2)
           for m in "qkvo"} | {f"lora_te3_encoder_block_{i}_layer_1_DenseReluDense_{m}"
                               for i in range(2) for m in ("wi_0", "wi_1", "wo")}
    assert te3 <= names
    single = network_targets(flux, None, None, 4, 1.0, FluxNetworkArgs(train_blocks="single"))
    assert [t.lora_name for t in single] == list(expected_dit(doubles=()))
    double = network_targets(flux, clip, t5, 4, 1.0, FluxNetworkArgs(train_blocks="double"),
                             train_text_encoder=False)
    assert [t.lora_name for t in double] == list(expected_dit(singles=()))


def test_type_dims_block_indices_in_dims_and_reg_dims(models):
    flux = models[0]
    args = FluxNetworkArgs(type_dims=(("img_attn_dim", 8), ("single_mod_dim", 0),
                                      ("single_dim", 2)),
                           train_double_block_indices="0,2", in_dims=(3, 0, 0, 2, 5),
                           reg_dims=(("txt_mlp_0$", 6),))
    ranks = {t.lora_name: t.rank for t in network_targets(flux, None, None, 4, 1.0, args)}
    assert ranks["lora_unet_double_blocks_0_img_attn_qkv"] == 8
    assert ranks["lora_unet_double_blocks_0_img_attn_proj"] == 8
    assert ranks["lora_unet_double_blocks_0_img_mlp_0"] == 4
    assert ranks["lora_unet_double_blocks_2_txt_mlp_0"] == 6
    assert not any(n.startswith("lora_unet_double_blocks_1_") and n != "lora_unet_double_"
                   "blocks_1_txt_mlp_0" for n in ranks)  # block 1 dropped but for the regex
    assert "lora_unet_single_blocks_0_modulation_lin" not in ranks
    assert ranks["lora_unet_single_blocks_1_linear1"] == 2
    assert ranks["lora_unet_img_in"] == 3 and ranks["lora_unet_txt_in"] == 5
    assert ranks["lora_unet_guidance_in_in_layer"] == 2
    assert ranks["lora_unet_guidance_in_out_layer"] == 2
    assert not any(n.startswith(("lora_unet_time_in", "lora_unet_vector_in")) for n in ranks)


def test_split_qkv_file_shapes(models):
    flux = models[0]
    targets = {t.lora_name: t for t in network_targets(
        flux, None, None, 4, 1.0, FluxNetworkArgs(split_qkv=True))}
    shapes = targets["lora_unet_double_blocks_0_img_attn_qkv"].file_shapes()
    assert shapes["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"] == (12, H)
    assert shapes["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"] == (3 * H, 12)
    single = targets["lora_unet_single_blocks_0_linear1"]
    assert single.split_dims == (H, H, H, MLP)
    assert single.file_shapes()["lora_unet_single_blocks_0_linear1.lora_down.weight"] == (16, H)
    assert targets["lora_unet_double_blocks_0_img_mlp_0"].split_dims is None


def test_bad_network_args_name_the_field(models):
    with pytest.raises(ProfileError, match="train_blocks"):
        FluxNetworkArgs(train_blocks="both")
    with pytest.raises(ProfileError, match="train_single_block_indices"):
        network_targets(models[0], None, None, 4, 1.0,
                        FluxNetworkArgs(train_single_block_indices="0-5"))


def test_chroma_has_no_modulation_modules():
    chroma = Flux(FluxConfig(**{**CONFIG.__dict__, "vec_in_dim": 0, "guidance_embed": False,
                                "approximator": (16, 32, 1)}))
    names = [t.lora_name for t in network_targets(chroma, None, None, 4, 1.0)]
    assert names == [n for n in expected_dit() if not n.endswith(("_mod_lin",
                                                                   "_modulation_lin"))]


def test_reg_dims_reach_the_text_encoders_and_the_input_layers(models):
    """sd-scripts applies network_reg_dims in every create_modules call: CLIP-L's and T5's
    modules and the in_dims layers too (a match there makes a module even at in_dims 0)."""
    flux, clip, t5 = models
    args = FluxNetworkArgs(train_t5xxl=True, in_dims=(0, 0, 0, 0, 2),
                           reg_dims=(("mlp_fc1", 8), ("SelfAttention_o", 0), ("img_in", 3)))
    ranks = {t.lora_name: t.rank for t in network_targets(flux, clip, t5, 4, 1.0, args)}
    assert ranks["lora_te1_text_model_encoder_layers_0_mlp_fc1"] == 8
    assert ranks["lora_te1_text_model_encoder_layers_0_mlp_fc2"] == 4
    assert "lora_te3_encoder_block_0_layer_0_SelfAttention_o" not in ranks
    assert ranks["lora_te3_encoder_block_0_layer_0_SelfAttention_q"] == 4
    assert (ranks["lora_unet_img_in"], ranks["lora_unet_txt_in"]) == (3, 2)
    assert "lora_unet_time_in_in_layer" not in ranks


def test_the_flux_section_becomes_the_network_args():
    from lora_core.families.flux.naming import lora_flux_args
    from lora_core.profile_flux import FluxSection

    fx = FluxSection(train_blocks="single", split_qkv=True, img_mod_dim=0, single_dim=2,
                     in_dims=(1, 0, 0, 0, 1), train_single_block_indices="0",
                     network_reg_dims="txt_mlp=8, img_(attn|mlp)=2")
    assert lora_flux_args(fx) == FluxNetworkArgs(
        train_blocks="single", split_qkv=True, type_dims=(("img_mod_dim", 0), ("single_dim", 2)),
        in_dims=(1, 0, 0, 0, 1), train_single_block_indices="0",
        reg_dims=(("txt_mlp", 8), ("img_(attn|mlp)", 2)))
    assert lora_flux_args(FluxSection()) == FluxNetworkArgs()
