"""The LyCORIS family and DoRA as a profile says them: sd-scripts' spellings read, options of
another type refused by name, and DyLoRA's maths (our module: see network/lycoris_family)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_core.network.lora import DyLoRAModule, LoRAModule
from lora_core.profile import uses_lycoris
from lora_core.profile_load import read_profile

BASE = {"profile_version": 1, "model": {"pretrained_model_name_or_path": "/m/sd15"},
        "dataset": {"train_data_dir": "/d"}, "saving": {"output_dir": "/o"}}


def read(network: dict, **more):
    profile, problems = read_profile({**BASE, "network": network, **more})
    return profile, [p.message for p in problems if p.severity == "error"]


@pytest.mark.parametrize(("args", "kind", "lycoris"), [
    (["algo=dylora"], "DyLoRA", False), (["algo=full"], "Full", True),
    (["algo=ia3"], "IA3", True), (["algo=diag-oft"], "DiagOFT", True),
    (["algo=boft"], "BOFT", True), (["algo=glora"], "GLoRA", True),
    (["algo=locon", "dora_wd=True"], "LoCon", True), (["algo=loha"], "LoHa", False),
])
def test_lycoris_kohya_algos_are_read_as_their_types(args, kind, lycoris):
    profile, errors = read({"network_module": "lycoris.kohya", "network_args": args})
    assert errors == []
    assert profile.network.network_module == kind
    assert uses_lycoris(profile.network) == lycoris


def test_sd_scripts_dylora_and_its_unit_are_read():
    profile, errors = read({"network_module": "networks.dylora", "network_dim": 16,
                            "network_args": ["unit=8"]})
    assert errors == [] and profile.network.network_module == "DyLoRA"
    assert profile.network.dylora_unit == 8


def test_an_algo_that_does_not_exist_is_refused_with_the_choices():
    _, errors = read({"network_module": "lycoris.kohya", "network_args": ["algo=lokra"]})
    (message,) = errors
    assert "algo 'lokra' is not supported" in message
    for name in ("lora", "locon", "loha", "lokr", "dylora", "full", "ia3", "diag-oft",
                 "boft", "glora"):
        assert name in message


@pytest.mark.parametrize(("network", "expected"), [
    ({"network_module": "Full", "dora_wd": True},
     "`[network] dora_wd` only applies to LoRA / LoCon / LoHa / LoKr (network_module is Full)"),
    ({"network_module": "LoCon", "constraint": 0.1},
     "`[network] constraint` only applies to DiagOFT / BOFT"),
    ({"network_module": "LoRA", "train_on_input": True},
     "`[network] train_on_input` only applies to IA3"),
    ({"network_module": "DyLoRA", "network_dim": 6, "dylora_unit": 4},
     "`[network] network_dim` = 6 must be a multiple of dylora_unit = 4"),
    ({"network_module": "DyLoRA", "rank_dropout": 0.1}, "rank_dropout` does not work with"),
    ({"network_module": "IA3", "block_dims": ",".join(["4"] * 25)},
     "`[network] block_dims` only applies to LoRA / LoCon (network_module is IA3)"),
])
def test_options_of_another_type_are_refused_by_name(network, expected):
    _, errors = read(network)
    assert any(expected in e for e in errors), errors


def test_scale_weight_norms_is_refused_where_a_type_has_no_norm_to_cap():
    _, errors = read({"network_module": "GLoRA"}, optimizer={"scale_weight_norms": 1.0})
    assert any("scale_weight_norms` only applies to LoRA / LoCon / LoHa / LoKr / DyLoRA / "
               "DiagOFT / BOFT (network_module is GLoRA)" in e for e in errors), errors
    _, errors = read({"network_module": "BOFT"}, optimizer={"scale_weight_norms": 1.0})
    assert errors == []


# ---------------------------------------------------------------------------------------
# DyLoRA


def dylora(rank=8, unit=2):
    torch.manual_seed(0)
    layer = nn.Linear(12, 10)
    module = DyLoRAModule("lora_unet_x", layer, rank, 4.0, unit=unit)
    with torch.no_grad():
        module.lora_up.weight.normal_()
    module.apply_to()
    return layer, module


def test_dylora_trains_one_rank_block_per_step_on_top_of_the_lower_ones():
    layer, module = dylora()
    x = torch.randn(3, 12)
    torch.manual_seed(5)
    block = int(torch.randint(4, ()).item())  # the draw the forward will make
    torch.manual_seed(5)
    layer(x).sum().backward()
    down_grad, up_grad = module.lora_down.weight.grad, module.lora_up.weight.grad
    trained = range(block * 2, block * 2 + 2)
    for rank in range(8):
        assert (down_grad[rank].abs().sum() > 0) == (rank in trained), rank
        assert (up_grad[:, rank].abs().sum() > 0) == (rank in trained), rank


def test_dylora_at_a_drawn_rank_is_exactly_the_file_cut_to_that_rank():
    """Cutting the saved file to its first r ranks (keeping alpha) gives the LoRA that
    trained at rank r: DyLoRA's promise, kept by scaling with alpha / r."""
    layer, module = dylora()
    x = torch.randn(3, 12)
    torch.manual_seed(9)
    block = int(torch.randint(4, ()).item())
    torch.manual_seed(9)
    with torch.no_grad():
        trained = layer(x)
    module.remove()
    rank = (block + 1) * 2
    cut = LoRAModule("lora_unet_x", layer, rank, 4.0)
    with torch.no_grad():
        cut.lora_down.weight.copy_(module.lora_down.weight[:rank])
        cut.lora_up.weight.copy_(module.lora_up.weight[:, :rank])
    cut.apply_to()
    torch.testing.assert_close(layer(x), trained)
    cut.remove()


def test_dylora_evaluates_at_its_full_rank():
    layer, module = dylora()
    module.eval()
    x = torch.randn(3, 12)
    with torch.no_grad():
        first, second = layer(x), layer(x)
    assert torch.equal(first, second)
    expected = nn.functional.linear(x, layer.weight, layer.bias) + \
        x @ module.delta_weight().T
    torch.testing.assert_close(first, expected)
