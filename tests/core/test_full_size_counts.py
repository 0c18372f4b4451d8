"""LoRA module counts and names on the full-size SD 1.5, SD 2.1 and SDXL architectures.

The architectures are built on the ``meta`` device from the shipped configs
(``lora_core/families/sd/configs``), so this needs no weights and no memory; the network is
built by the project's own ``build_network``. Expected values: kohya-compat.md §6.1
(counts, verified against sd-scripts) and §6.2 (names).
"""

from __future__ import annotations

import pytest
import torch

from lora_core.family_registry import family as family_named
from lora_core.network.build import build_network
from lora_core.profile import NetworkSection
from tests.helpers.tiny_models import full_size_meta

LORA = NetworkSection(network_module="LoRA", network_dim=4, network_alpha=1.0)
LOCON = NetworkSection(network_module="LoCon", network_dim=4, network_alpha=1.0, conv_dim=4,
                       conv_alpha=1.0)

# family: (text-encoder modules, U-Net modules, U-Net modules with conv_dim)
COUNTS = {"sd1": (72, 192, 278), "sd2": (138, 192, 278), "sdxl": (264, 722, 788)}

NAMES = {
    "sd1": [
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_te_text_model_encoder_layers_0_self_attn_out_proj",
        "lora_te_text_model_encoder_layers_11_mlp_fc2",
        "lora_unet_down_blocks_0_attentions_0_proj_in",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_out_0",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k",
        "lora_unet_up_blocks_1_attentions_2_proj_out",
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_v",
    ],
    "sd2": [
        "lora_te_text_model_encoder_layers_0_self_attn_k_proj",
        "lora_te_text_model_encoder_layers_22_mlp_fc1",
        "lora_unet_down_blocks_2_attentions_1_proj_in",
        "lora_unet_mid_block_attentions_0_proj_out",
        "lora_unet_up_blocks_3_attentions_0_transformer_blocks_0_attn2_to_v",
    ],
    "sdxl": [
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_te1_text_model_encoder_layers_11_mlp_fc2",
        "lora_te2_text_model_encoder_layers_0_self_attn_v_proj",
        "lora_te2_text_model_encoder_layers_31_mlp_fc2",
        "lora_unet_input_blocks_4_1_proj_in",
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_out_0",
        "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2",
        "lora_unet_output_blocks_0_1_transformer_blocks_9_ff_net_0_proj",
        "lora_unet_output_blocks_5_1_proj_out",
    ],
}
CONV_NAMES = {
    "sd1": [
        "lora_unet_down_blocks_0_resnets_0_conv1",
        "lora_unet_down_blocks_0_resnets_0_conv2",
        "lora_unet_down_blocks_0_resnets_0_time_emb_proj",
        "lora_unet_down_blocks_1_resnets_0_conv_shortcut",
        "lora_unet_down_blocks_0_downsamplers_0_conv",
        "lora_unet_up_blocks_0_upsamplers_0_conv",
        "lora_unet_mid_block_resnets_0_conv1",
    ],
    "sd2": ["lora_unet_up_blocks_2_upsamplers_0_conv"],
    "sdxl": [
        "lora_unet_input_blocks_1_0_in_layers_2",
        "lora_unet_input_blocks_1_0_emb_layers_1",
        "lora_unet_input_blocks_1_0_out_layers_3",
        "lora_unet_input_blocks_4_0_skip_connection",
        "lora_unet_input_blocks_3_0_op",
        "lora_unet_output_blocks_2_2_conv",
        "lora_unet_middle_block_0_in_layers_2",
    ],
}
# Names that would mean the wrong layout, depth or prefix.
ABSENT = {
    "sd1": ["lora_te_text_model_encoder_layers_12_mlp_fc1",
            "lora_unet_down_blocks_3_attentions_0_proj_in"],
    "sd2": ["lora_te_text_model_encoder_layers_23_mlp_fc1"],
    "sdxl": ["lora_te_text_model_encoder_layers_0_self_attn_q_proj",
             "lora_te2_text_model_encoder_layers_32_mlp_fc1",
             "lora_unet_down_blocks_1_attentions_0_proj_in"],
}


@pytest.fixture(scope="module")
def models() -> dict[str, dict]:
    return {family: full_size_meta(family) for family in COUNTS}


def _network(parts: dict, family: str, net: NetworkSection):
    encoders = [parts["text_encoder"]] + (
        [parts["text_encoder_2"]] if "text_encoder_2" in parts else [])
    with torch.device("meta"):  # the LoRA tensors too: shapes only, no memory
        fam = family_named(family)
        return build_network(parts["unet"], encoders, net, naming=fam.naming,
                             layout=fam.block_layout())


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_lora_counts_and_names(models, family: str) -> None:
    te_count, unet_count, unet_conv_count = COUNTS[family]
    network = _network(models[family], family, LORA)
    assert len(network.text_encoder_names) == te_count
    assert len(network.unet_names) == unet_count
    names = set(network.text_encoder_names) | set(network.unet_names)
    assert len(names) == te_count + unet_count  # no two modules share a name
    assert [n for n in NAMES[family] if n not in names] == []
    assert [n for n in ABSENT[family] if n in names] == []

    conv = _network(models[family], family, LOCON)
    assert len(conv.unet_names) == unet_conv_count
    assert [n for n in CONV_NAMES[family] if n not in set(conv.unet_names)] == []


def test_sd2_text_encoder_depth_and_projection_shapes(models) -> None:
    """SD 2.1: 23 text-encoder layers × 6; Linear proj_in (diffusers config) → 2-D."""
    te = models["sd2"]["text_encoder"]
    assert te.config.num_hidden_layers == 23
    network = _network(models["sd2"], "sd2", LORA)
    shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    assert shapes["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"] == (4, 320)
    assert shapes["lora_te_text_model_encoder_layers_22_mlp_fc1.lora_up.weight"] == (4096, 4)
    sd1 = {k: tuple(v.shape) for k, v in _network(models["sd1"], "sd1", LORA)
           .state_dict().items()}
    assert sd1["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"] == (
        4, 320, 1, 1)
