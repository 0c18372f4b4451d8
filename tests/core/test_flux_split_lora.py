"""Flux's split_qkv LoRA module (sd-scripts' lora_flux ``split_dims``) and the
networks.lora_flux args the Flux family builds its network from: the maths, the merged file
form sd-scripts' ``state_dict`` writes, reading such a file back, and T5's learning rate."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lora_core.families.flux.config import FluxConfig, default_axes_dim
from lora_core.families.flux.family import FluxFamily
from lora_core.families.flux.model import Flux
from lora_core.families.flux.naming import FluxNetworkArgs
from lora_core.families.flux.split_lora import SplitLoRAModule
from lora_core.network.adapter import AdapterNetwork
from lora_core.network.weights import load_network_weights, module_shapes
from lora_core.profile import NetworkSection, OptimizerSection

NAME = "lora_unet_single_blocks_0_linear1"
PIECES = (4, 4, 4, 6)  # q, k, v (hidden 4) and the MLP input (6)


def split_network(seed: int) -> tuple[AdapterNetwork, nn.Linear, SplitLoRAModule]:
    torch.manual_seed(seed)
    linear = nn.Linear(8, sum(PIECES))
    module = SplitLoRAModule(NAME, linear, 2, 1.0, PIECES)
    network = AdapterNetwork("LoRA")
    network.add(module, text_encoder=False)
    return network, linear, module


def test_split_pieces_train_apart_and_save_merged_as_sd_scripts():
    network, linear, module = split_network(0)
    for up in module.lora_up:
        assert torch.count_nonzero(up.weight) == 0  # an untrained module changes nothing
        nn.init.normal_(up.weight)
    network.apply_to()
    x = torch.randn(3, 5, 8)
    state = network.state_dict()
    assert set(state) == {f"{NAME}.lora_down.weight", f"{NAME}.lora_up.weight",
                          f"{NAME}.alpha"}
    down, up = state[f"{NAME}.lora_down.weight"], state[f"{NAME}.lora_up.weight"]
    assert (tuple(down.shape), tuple(up.shape)) == ((8, 8), (18, 8))  # n·rank
    # sd-scripts' merge: down = cat(down_i); up block-diagonal, piece i at its rows and at
    # columns 2i, 2i+1; alpha unchanged (1.0).
    assert torch.equal(down, torch.cat([d.weight for d in module.lora_down]))
    row = 0
    for i, size in enumerate(PIECES):
        block = up[row:row + size]
        assert torch.equal(block[:, 2 * i:2 * i + 2], module.lora_up[i].weight)
        assert torch.count_nonzero(block[:, :2 * i]) + torch.count_nonzero(block[:, 2 * i + 2:]) \
            == 0
        row += size
    assert float(state[f"{NAME}.alpha"]) == 1.0
    # Trained at sd-scripts' scale alpha / rank (rank of one piece: 2).
    expected = x @ linear.weight.T + linear.bias + (x @ down.T @ up.T) * (1.0 / 2)
    assert torch.allclose(linear(x), expected, atol=1e-5)


def test_a_merged_file_reads_back_split_for_resume_and_network_weights(tmp_path):
    trained, _, module = split_network(0)
    for up in module.lora_up:
        nn.init.normal_(up.weight)
    path = tmp_path / "split.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(path))
    fresh, _, again = split_network(1)
    load_network_weights(fresh, path)
    for mine, theirs in zip(again.parameters(), module.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    fresh.load_training_state(trained.training_state())  # resume's path
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                   trained.state_dict().values(), strict=True))
    assert module_shapes(path)[NAME] == (8, 1.0)  # rank as any reader sees it: n·rank


CONFIG = FluxConfig(in_channels=64, vec_in_dim=32, context_in_dim=40, hidden_size=32,
                    mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=2,
                    axes_dim=default_axes_dim(16))


def flux_bundle(args: FluxNetworkArgs) -> SimpleNamespace:
    torch.manual_seed(0)
    return SimpleNamespace(unet=Flux(CONFIG), text_encoders=[nn.Identity()],
                           family_state=SimpleNamespace(has_clip=False, network_args=args))


def test_the_family_builds_the_network_its_args_describe(tmp_path):
    args = FluxNetworkArgs(train_blocks="single", split_qkv=True,
                           train_single_block_indices="1", type_dims=(("single_mod_dim", 0),))
    net = NetworkSection(network_dim=4, network_alpha=2.0, network_train_unet_only=True)
    network = FluxFamily().build_network(flux_bundle(args), net)
    shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    assert shapes == {
        "lora_unet_single_blocks_1_linear1.lora_down.weight": (16, 32),
        "lora_unet_single_blocks_1_linear1.lora_up.weight": (3 * 32 + 64, 16),
        "lora_unet_single_blocks_1_linear1.alpha": (),
        "lora_unet_single_blocks_1_linear2.lora_down.weight": (4, 32 + 64),
        "lora_unet_single_blocks_1_linear2.lora_up.weight": (32, 4),
        "lora_unet_single_blocks_1_linear2.alpha": ()}
    # dim_from_weights: the file's rank 16 is 4 pieces of 4, read back exactly
    path = tmp_path / "flux.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    again = FluxFamily().build_network(flux_bundle(args), net, shapes=module_shapes(path))
    split = again.lora_unet_single_blocks_1_linear1
    assert isinstance(split, SplitLoRAModule) and split.rank == 4 and split.scale == 0.5
    load_network_weights(again, path)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                   network.state_dict().values(), strict=True))


@pytest.mark.parametrize(("rates", "t5_lr"), [((1e-4, 3e-4), 3e-4), (2e-4, 2e-4)])
def test_t5s_lora_takes_the_second_text_encoder_rate(rates, t5_lr):
    """sd-scripts' lora_flux: text_encoder_lr [CLIP-L, T5]; one value for both."""
    from lora_core.training.optim import param_groups

    network = AdapterNetwork("LoRA")
    from lora_core.network.lora import LoRAModule

    for name in ("lora_te1_text_model_encoder_layers_0_mlp_fc1",
                 "lora_te3_encoder_block_0_layer_0_SelfAttention_q"):
        network.add(LoRAModule(name, nn.Linear(4, 4), 2, 1.0), text_encoder=True)
    network.add(LoRAModule("lora_unet_single_blocks_0_linear2", nn.Linear(4, 4), 2, 1.0),
                text_encoder=False)
    opt = OptimizerSection(learning_rate=1e-3, text_encoder_lr=rates)
    groups = {g.name: (g.lr, len(g.params)) for g in param_groups(network, opt)}
    if isinstance(rates, tuple):
        assert groups == {"textencoder1": (1e-4, 2), "textencoder2": (t5_lr, 2),
                          "unet": (1e-3, 2)}
    else:
        assert groups == {"textencoder": (t5_lr, 4), "unet": (1e-3, 2)}


def test_max_norm_caps_a_split_modules_whole_update():
    from lora_core.network.max_norm import apply_max_norm

    network, _, module = split_network(0)
    for up in module.lora_up:
        nn.init.normal_(up.weight)
    before = module.delta_weight().norm()
    with torch.no_grad():
        scaled, _, _ = apply_max_norm(network, float(before) / 4)
    assert scaled == 1
    assert torch.isclose(module.delta_weight().norm(), before / 4, rtol=1e-4)
