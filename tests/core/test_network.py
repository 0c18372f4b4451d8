"""LoRA network: sd-scripts' module targets and key names, and the maths."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lora_core.network.lora import LoRAModule, LoRANetwork, NetworkShape
from lora_core.network.naming import text_encoder_targets, unet_targets
from tests.helpers.sd15_meta import build_sd15_meta


@pytest.fixture(scope="module")
def sd15():
    return build_sd15_meta()


def test_sd15_module_counts_match_sd_scripts(sd15):
    unet, text_encoder = sd15
    assert len(text_encoder_targets(text_encoder)) == 72
    assert len(unet_targets(unet, with_conv=False)) == 192
    assert len(unet_targets(unet, with_conv=True)) == 278


def test_sd15_names_match_the_reference_examples(sd15):
    unet, text_encoder = sd15
    names = {t.lora_name for t in text_encoder_targets(text_encoder)}
    names |= {t.lora_name for t in unet_targets(unet, with_conv=True)}
    for expected in [
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_te_text_model_encoder_layers_0_self_attn_out_proj",
        "lora_te_text_model_encoder_layers_0_mlp_fc1",
        "lora_te_text_model_encoder_layers_11_mlp_fc2",
        "lora_unet_down_blocks_0_attentions_0_proj_in",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_out_0",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2",
        "lora_unet_mid_block_attentions_0_proj_out",
        "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn1_to_v",
        # LoCon extras
        "lora_unet_down_blocks_0_resnets_0_conv1",
        "lora_unet_down_blocks_0_resnets_0_conv2",
        "lora_unet_down_blocks_0_resnets_0_time_emb_proj",
        "lora_unet_down_blocks_1_resnets_0_conv_shortcut",
        "lora_unet_down_blocks_0_downsamplers_0_conv",
        "lora_unet_up_blocks_0_upsamplers_0_conv",
        "lora_unet_mid_block_resnets_0_conv1",
    ]:
        assert expected in names, expected
    assert not any(n.startswith("lora_te_encoder") for n in names)


def test_text_model_segment_present_whatever_transformers_does(sd15):
    _, text_encoder = sd15
    for target in text_encoder_targets(text_encoder):
        assert target.lora_name.startswith("lora_te_text_model_encoder_layers_")


def test_conv3x3_targets_are_flagged_for_conv_rank(sd15):
    unet, _ = sd15
    by_name = {t.lora_name: t for t in unet_targets(unet, with_conv=True)}
    assert by_name["lora_unet_down_blocks_0_resnets_0_conv1"].is_conv3x3
    assert not by_name["lora_unet_down_blocks_0_resnets_0_time_emb_proj"].is_conv3x3
    assert not by_name["lora_unet_down_blocks_1_resnets_0_conv_shortcut"].is_conv3x3


def test_lora_module_starts_as_identity_and_applies_scaled_low_rank_update():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    x = torch.randn(5, 16)
    before = base(x).detach()
    lora = LoRAModule("lora_te_x", base, rank=4, alpha=2.0)
    lora.apply_to()
    assert torch.equal(base(x), before)  # up starts at zero: nothing changes
    nn.init.normal_(lora.lora_up.weight)
    expected = before + (x @ lora.lora_down.weight.T @ lora.lora_up.weight.T) * (2.0 / 4)
    assert torch.allclose(base(x), expected, atol=1e-5)
    assert torch.allclose(lora.delta_weight(),
                          lora.lora_up.weight @ lora.lora_down.weight * 0.5)
    lora.remove()
    assert torch.equal(base(x), before)


def test_down_init_is_kaiming_uniform_a_sqrt5():
    torch.manual_seed(0)
    lora = LoRAModule("n", nn.Linear(400, 300), rank=64, alpha=1)
    bound = 1 / math.sqrt(400)  # kaiming_uniform(a=√5) bound = sqrt(6/((1+5)·fan_in))
    w = lora.lora_down.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert torch.count_nonzero(lora.lora_up.weight) == 0


def test_conv_lora_shapes_and_delta():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, padding=1)
    lora = LoRAModule("c", conv, rank=2, alpha=1.0)
    assert lora.lora_down.weight.shape == (2, 8, 3, 3)
    assert lora.lora_up.weight.shape == (6, 2, 1, 1)
    nn.init.normal_(lora.lora_up.weight)
    lora.apply_to()
    x = torch.randn(1, 8, 5, 5)
    merged = nn.functional.conv2d(x, conv.weight + lora.delta_weight(), conv.bias, padding=1)
    assert torch.allclose(conv(x), merged, atol=1e-4)


def test_network_state_dict_keys_are_kohya_keys_and_unet_only_saves_no_te():
    unet, text_encoder = build_sd15_meta()
    shape = NetworkShape(rank=4, alpha=1.0, train_text_encoder=False)
    with torch.device("meta"):
        net = LoRANetwork(unet, [text_encoder], shape)
    keys = set(net.state_dict())
    assert len(keys) == 192 * 3
    assert "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight" in keys
    assert "lora_unet_mid_block_attentions_0_proj_in.alpha" in keys
    assert not any(k.startswith("lora_te") for k in keys)
