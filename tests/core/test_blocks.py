"""Block indices, block LR weights and per-block ranks (kohya-compat.md §6.5)."""

from __future__ import annotations

import math

import pytest

from lora_core.errors import ProfileError
from lora_core.network.blocks import (
    NUM_BLOCKS_SD,
    block_dims_and_alphas,
    block_index,
    block_lr_weights,
    parse_block_values,
    preset_lr_weights,
)


@pytest.mark.parametrize(("name", "slot"), [
    # down_blocks.i.{resnets|attentions}.j -> 1 + 3i + j; downsamplers -> 1 + 3i + 2
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 1),
    ("lora_unet_down_blocks_0_resnets_1_conv1", 2),
    ("lora_unet_down_blocks_0_downsamplers_0_conv", 3),
    ("lora_unet_down_blocks_1_attentions_0_proj_in", 4),
    ("lora_unet_down_blocks_2_downsamplers_0_conv", 9),
    ("lora_unet_down_blocks_3_resnets_1_conv2", 11),
    # mid_block -> 12, whatever part
    ("lora_unet_mid_block_attentions_0_proj_out", 12),
    ("lora_unet_mid_block_resnets_1_time_emb_proj", 12),
    # up_blocks.i.{resnets|attentions}.j -> 13 + 3i + j (j up to 2); upsamplers -> 13 + 3i + 2
    ("lora_unet_up_blocks_0_resnets_0_conv1", 13),
    ("lora_unet_up_blocks_0_resnets_2_conv_shortcut", 15),
    ("lora_unet_up_blocks_0_upsamplers_0_conv", 15),
    ("lora_unet_up_blocks_1_attentions_2_proj_out", 18),
    ("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2", 24),
])
def test_block_index_of_unet_names(name, slot):
    assert block_index(name) == slot


@pytest.mark.parametrize("name", [
    "lora_te_text_model_encoder_layers_0_mlp_fc1",
    "lora_te1_text_model_encoder_layers_3_self_attn_q_proj",
    "lora_unet_conv_in",
])
def test_block_index_is_none_outside_the_unet_blocks(name):
    assert block_index(name) is None


def test_every_real_sd15_unet_module_has_a_slot():
    import torch
    from diffusers import UNet2DConditionModel

    from lora_core.network.naming import unet_targets
    from tests.helpers.sd15_meta import SD15_UNET_CONFIG

    with torch.device("meta"):  # SD1.5's real architecture, no weights allocated
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    attn_slots = {block_index(t.lora_name) for t in unet_targets(unet, with_conv=False)}
    # Attentions: down_blocks 0-2 (j 0..1), mid, up_blocks 1-3 (j 0..2); down_blocks_3 and
    # up_blocks_0 have none.
    assert attn_slots == {1, 2, 4, 5, 7, 8, 12} | set(range(16, 25))
    all_slots = {block_index(t.lora_name) for t in unet_targets(unet, with_conv=True)}
    assert all_slots == set(range(1, NUM_BLOCKS_SD))  # BASE (0) never holds a module


def test_presets_follow_sd_scripts_formulas():
    # t_k = k / 11 over 12 blocks
    sine = preset_lr_weights("sine", "f")
    assert sine[0] == 0.0 and sine[11] == pytest.approx(1.0)
    assert sine[5] == pytest.approx(math.sin(math.pi * 5 / 22))
    cosine = preset_lr_weights("cosine", "f")
    assert cosine[0] == pytest.approx(1.0) and cosine[11] == pytest.approx(0.0)
    assert cosine[6] == pytest.approx(math.sin(math.pi * 5 / 22))
    assert preset_lr_weights("linear", "f")[1] == pytest.approx(1 / 11)
    assert preset_lr_weights("reverse_linear", "f")[1] == pytest.approx(10 / 11)
    assert preset_lr_weights("zeros+0.5", "f") == [0.5] * 12
    assert preset_lr_weights("cosine+.25", "f")[0] == pytest.approx(1.25)


def test_block_lr_weights_concatenate_down_mid_up():
    weights = block_lr_weights("sine", "0.5", "linear", 0.0)
    assert len(weights) == NUM_BLOCKS_SD
    # slot 0 (BASE) is down's first value; down_blocks_0_resnets_0 (slot 1) its second
    assert weights[0] == 0.0  # sine at t=0, and 0 <= threshold 0 stays 0
    assert weights[1] == pytest.approx(math.sin(math.pi / 22))
    assert weights[12] == 0.5
    assert weights[13] == 0.0 and weights[24] == pytest.approx(1.0)


def test_empty_parts_are_one_and_all_empty_is_none():
    assert block_lr_weights("", "", "", 0.0) is None
    assert block_lr_weights("", "0.25", "", 0.0) == [1.0] * 12 + [0.25] + [1.0] * 12


def test_short_lists_pad_with_one_long_lists_truncate_empty_items_are_zero():
    weights = block_lr_weights("1,,0.5", "0.3,0.7", ",".join(["2"] * 14), 0.0)
    assert weights[:4] == [1.0, 0.0, 0.5, 1.0]
    assert weights[:12] == [1.0, 0.0, 0.5] + [1.0] * 9
    assert weights[12] == 0.3
    assert weights[13:] == [2.0] * 12


def test_zero_threshold_applies_to_given_values_only():
    # padded 1.0s are given values (<= 1.0 -> 0); the empty up part stays 1.0, as in sd-scripts
    weights = block_lr_weights("0.5,2", "", "", 1.0)
    assert weights[:12] == [0.0, 2.0] + [0.0] * 10
    assert weights[12:] == [1.0] * 13


@pytest.mark.parametrize(("down", "mid", "field"), [
    ("bogus", "", "down_lr_weight"),
    ("0.5", "", "down_lr_weight"),  # one number: neither a preset nor a list
    ("cosine+x", "", "down_lr_weight"),
    ("", "cosine", "mid_lr_weight"),
    ("1,a", "", "down_lr_weight"),
])
def test_bad_lr_weights_name_the_field(down, mid, field):
    with pytest.raises(ProfileError) as info:
        block_lr_weights(down, mid, "", 0.0)
    assert field in info.value.message


def test_parse_block_values_counts_and_names_the_field():
    assert parse_block_values(",".join(["2"] * 25), "[network] block_dims") == [2.0] * 25
    with pytest.raises(ProfileError, match="block_dims.*24 values"):
        parse_block_values(",".join(["2"] * 24), "[network] block_dims")
    with pytest.raises(ProfileError, match="block_alphas"):
        parse_block_values("1,x" + ",1" * 23, "[network] block_alphas")


def test_block_dims_off_without_block_dims_or_lr_weights():
    assert block_dims_and_alphas("", "", "", "", 8, 4.0, None, None, None) is None


def test_block_dims_defaults_follow_sd_scripts():
    dims = ",".join(str(i) for i in range(25))
    shape = block_dims_and_alphas(dims, "", "", "", 8, 4.0, conv_dim=3, conv_alpha=None)
    assert shape.dims == list(range(25))
    assert shape.alphas == [4.0] * 25  # missing alphas -> network_alpha
    assert shape.conv_dims == [3] * 25 and shape.conv_alphas == [1.0] * 25  # conv_alpha -> 1
    # LR weights alone switch block mode on: network_dim everywhere, no 3x3 convs
    weights = [1.0] * 25
    shape = block_dims_and_alphas("", "", "", "", 8, 4.0, None, None, weights)
    assert shape.dims == [8] * 25 and shape.conv_dims is None


def test_conv_block_dims_take_conv_alpha_when_alphas_missing():
    conv = ",".join(["2"] * 25)
    shape = block_dims_and_alphas("", "", conv, "", 8, 4.0, conv_dim=None, conv_alpha=0.5,
                                  lr_weights=[1.0] * 25)
    assert shape.conv_dims == [2] * 25 and shape.conv_alphas == [0.5] * 25


def test_zero_lr_weight_removes_the_block():
    weights = block_lr_weights("1,1,1,1,0", "", "", 0.0)
    shape = block_dims_and_alphas("", "", "", "", 8, 4.0, conv_dim=4, conv_alpha=1.0,
                                  lr_weights=weights)
    assert shape.dims[4] == 0 and shape.conv_dims[4] == 0 and shape.dims[5] == 8
    assert shape.for_module("lora_unet_down_blocks_1_attentions_0_proj_in", False) is None
    assert shape.for_module("lora_unet_down_blocks_1_resnets_1_conv1", True) == (4, 1.0)
    assert shape.for_module("lora_te_text_model_encoder_layers_0_mlp_fc1", False) is None


def test_block_dims_count_is_checked():
    with pytest.raises(ProfileError, match="conv_block_dims"):
        block_dims_and_alphas("", "", "1,2", "", 8, 4.0, None, None, [1.0] * 25)
