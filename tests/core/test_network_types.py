"""Network types LoRA / LoCon / LoHa / LoKr on the built-in tiny SD1 model: file keys and
shapes as LyCORIS and ComfyUI read them, the maths, training, save/load, dropouts, block
ranks and max-norm."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lora_core.errors import ProfileError
from lora_core.families.sd.loading import load_model
from lora_core.network.build import build_network, conv_rank_and_alpha
from lora_core.network.loha import LoHaModule, hadamard_product
from lora_core.network.lokr import LoKrModule, factorization
from lora_core.network.lora import LoRAModule
from lora_core.network.max_norm import apply_max_norm
from lora_core.network.naming import text_encoder_targets, unet_targets
from lora_core.network.weights import load_network_weights
from lora_core.profile import NetworkSection
from lora_core.saving.lora_file import read_lora, save_lora

KINDS = ("LoRA", "LoCon", "LoHa", "LoKr")
LORA_FIELDS = {"lora_down.weight", "lora_up.weight", "alpha"}
LOHA_FIELDS = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}


@pytest.fixture(scope="module")
def bundle():
    # Tiny tensors: one thread is faster than several competing for a shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_model("builtin:tiny-sd1", Path("."), torch.float32)
    finally:
        torch.set_num_threads(threads)


def section(kind: str, **fields) -> NetworkSection:
    return NetworkSection(network_module=kind, **{"network_dim": 4, "network_alpha": 2.0,
                                                  **fields})


@contextlib.contextmanager
def applied(network):
    network.apply_to()
    try:
        yield network
    finally:
        network.remove()


def build(bundle, kind: str, seed: int = 0, lr_weights=None, **fields):
    torch.manual_seed(seed)
    return build_network(bundle.unet, bundle.text_encoders, section(kind, **fields), lr_weights)


def unet_inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]),
            torch.randn(2, 77, 32, generator=g))


def run_unet(bundle, inputs) -> torch.Tensor:
    latents, t, context = inputs
    return bundle.unet(latents, t, encoder_hidden_states=context).sample


def run_text(bundle) -> torch.Tensor:
    ids = torch.arange(1, 17).unsqueeze(0)
    return bundle.text_encoders[0](ids).last_hidden_state


def randomise(network, seed: int = 3) -> None:
    """Give every factor non-zero values (an untrained network has ΔW = 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def fields_of(network) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for key in network.state_dict():
        name, _, field = key.partition(".")
        out.setdefault(name, set()).add(field)
    return out


# --- independent reconstruction, the way ComfyUI's weight_adapter reads the tensors ---------

def comfy_delta(sd: dict[str, torch.Tensor], name: str, weight_shape) -> torch.Tensor:
    """ΔW from a module's saved tensors with the consumer's formulas (kohya-compat.md §6.3,
    §6.7; ComfyUI comfy/weight_adapter/{lora,loha,lokr}.py), written independently."""
    get = {k.partition(".")[2]: v for k, v in sd.items() if k.partition(".")[0] == name}
    alpha = float(get["alpha"])
    if "lora_down.weight" in get:
        down, up = get["lora_down.weight"], get["lora_up.weight"]
        rank = down.shape[0]
        delta = up.flatten(1) @ down.flatten(1)
        return delta.reshape(weight_shape) * (alpha / rank)
    if "hada_w1_a" in get:
        rank = get["hada_w1_b"].shape[0]
        m1 = get["hada_w1_a"] @ get["hada_w1_b"]
        m2 = get["hada_w2_a"] @ get["hada_w2_b"]
        return (m1 * m2).reshape(weight_shape) * (alpha / rank)
    dim = None
    w1 = get.get("lokr_w1")
    if w1 is None:
        dim = get["lokr_w1_b"].shape[0]
        w1 = get["lokr_w1_a"] @ get["lokr_w1_b"]
    w2 = get.get("lokr_w2")
    if w2 is None:
        dim = get["lokr_w2_b"].shape[0]
        w2 = get["lokr_w2_a"] @ get["lokr_w2_b"]
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    scale = alpha / dim if dim is not None else 1.0
    return torch.kron(w1, w2).reshape(weight_shape) * scale


# --- keys, shapes, maths ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_every_module_has_exactly_the_keys_of_its_algo(bundle, kind):
    net = build(bundle, kind)
    fields = fields_of(net)
    with_conv = kind != "LoRA"
    expected_names = {t.lora_name for t in text_encoder_targets(bundle.text_encoders[0])}
    expected_names |= {t.lora_name for t in unet_targets(bundle.unet, with_conv=with_conv)}
    assert set(fields) == expected_names
    assert ("lora_unet_down_blocks_0_resnets_0_conv1" in fields) == with_conv
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in fields
    for name, got in fields.items():
        if kind in ("LoRA", "LoCon"):
            assert got == LORA_FIELDS, name
        elif kind == "LoHa":
            assert got == LOHA_FIELDS, name
        else:
            assert got in ({"lokr_w1", "lokr_w2", "alpha"},
                           {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"}), name
    if kind == "LoKr":  # rank 4 makes both forms appear on this model
        assert {frozenset(f) for f in fields.values()} == {
            frozenset({"lokr_w1", "lokr_w2", "alpha"}),
            frozenset({"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"})}


def test_loha_and_lokr_shapes_follow_lycoris():
    conv = nn.Conv2d(32, 64, 3, padding=1)
    loha = LoHaModule("c", conv, rank=4, alpha=2)
    assert loha.hada_w1_a.shape == loha.hada_w2_a.shape == (64, 4)
    assert loha.hada_w1_b.shape == loha.hada_w2_b.shape == (4, 32 * 9)  # [r, in·k·k]
    linear = nn.Linear(128, 256)
    # 256 = 16·16, 128 = 8·16; rank 4 < 16/2 → w2 low-rank
    lokr = LoKrModule("l", linear, rank=4, alpha=2)
    assert lokr.lokr_w1.shape == (16, 8)
    assert lokr.lokr_w2_a.shape == (16, 4) and lokr.lokr_w2_b.shape == (4, 16)
    assert lokr.scale == 0.5
    lokr_conv = LoKrModule("c", conv, rank=2, alpha=1)  # 64 = 8·8, 32 = 4·8
    assert lokr_conv.lokr_w1.shape == (8, 4)
    assert lokr_conv.lokr_w2_a.shape == (8, 2) and lokr_conv.lokr_w2_b.shape == (2, 8 * 9)
    # rank >= max(b, d) / 2: full w2 with the kernel; both factors full → scale 1, alpha=rank
    full = LoKrModule("f", conv, rank=4, alpha=1)
    assert full.lokr_w2.shape == (8, 8, 3, 3)
    assert full.scale == 1.0 and float(full.alpha) == 4.0
    decomposed = LoKrModule("d", nn.Linear(1024, 1024), rank=2, alpha=1, decompose_both=True)
    assert decomposed.lokr_w1_a.shape == (32, 2) and decomposed.lokr_w1_b.shape == (2, 32)


def test_factorization_matches_lycoris_table():
    assert factorization(128) == (8, 16)
    assert factorization(250) == (10, 25)
    assert factorization(1024) == (32, 32)
    assert factorization(127) == (1, 127)
    assert factorization(128, 2) == (2, 64)
    assert factorization(128, 4) == (4, 32)
    assert factorization(250, 4) == (2, 125)   # 4 does not divide: largest divisor ≤ 4
    assert factorization(250, 8) == (5, 50)
    assert factorization(512, 16) == (16, 32)


@pytest.mark.parametrize("kind", KINDS)
def test_module_delta_equals_what_a_consumer_rebuilds_from_the_file(bundle, kind):
    # rank 4 on this model: LoKr gets both full-w2 (scale 1) and low-rank-w2 modules
    net = build(bundle, kind, network_dim=4, network_alpha=2.0)
    randomise(net)
    sd = net.state_dict()
    kinds_seen = set()
    for module in net.lora_modules():
        expected = comfy_delta(sd, module.lora_name, module.weight_shape)
        assert torch.allclose(module.delta_weight(), expected, rtol=1e-5, atol=1e-7), \
            module.lora_name
        kinds_seen.add((module.is_conv, module.is_conv3x3, getattr(module, "w2_full", None)))
    layer_kinds = {k[:2] for k in kinds_seen}
    if kind != "LoRA":
        assert layer_kinds == {(False, False), (True, False), (True, True)}
    if kind == "LoKr":
        assert {k[2] for k in kinds_seen} == {True, False}


@pytest.mark.parametrize("kind", KINDS)
def test_forward_adds_delta_applied_like_the_layer(bundle, kind):
    """y = W x + ΔW x · multiplier, with the conv's own stride and padding."""
    net = build(bundle, kind, network_dim=2)
    randomise(net)
    picks = {"lora_te_text_model_encoder_layers_0_mlp_fc1": torch.randn(2, 5, 32),
             "lora_unet_down_blocks_0_attentions_0_proj_in": torch.randn(1, 32, 8, 8)}
    if kind != "LoRA":
        picks["lora_unet_down_blocks_0_downsamplers_0_conv"] = torch.randn(1, 32, 8, 8)
    for name, x in picks.items():
        module = getattr(net, name)
        module.multiplier = 0.7
        layer = module._org[0]
        merged = layer.weight + 0.7 * module.delta_weight()
        if isinstance(layer, nn.Conv2d):
            expected = F.conv2d(x, merged, layer.bias, layer.stride, layer.padding)
        else:
            expected = F.linear(x, merged, layer.bias)
        with applied(net), torch.no_grad():
            assert torch.allclose(layer(x), expected, atol=1e-5), name


def test_hadamard_product_gradient_is_the_product_rule():
    torch.manual_seed(0)
    a1, b1, a2, b2 = (torch.randn(s, dtype=torch.float64, requires_grad=True)
                      for s in ((5, 3), (3, 7), (5, 3), (3, 7)))
    assert torch.autograd.gradcheck(lambda *w: hadamard_product(*w, 0.5), (a1, b1, a2, b2))
    out = hadamard_product(a1, b1, a2, b2, 0.5)
    assert torch.allclose(out, (a1 @ b1) * (a2 @ b2) * 0.5)


# --- behaviour on the model -------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_untrained_network_changes_nothing_and_training_changes_output(bundle, kind):
    inputs = unet_inputs()
    with torch.no_grad():
        base_unet, base_text = run_unet(bundle, inputs), run_text(bundle)
    base_weight = bundle.unet.down_blocks[0].attentions[0].proj_in.weight.clone()
    net = build(bundle, kind)
    with applied(net):
        with torch.no_grad():
            assert torch.equal(run_unet(bundle, inputs), base_unet)
            assert torch.equal(run_text(bundle), base_text)
        net.train()
        bundle.unet.requires_grad_(False)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
        target = torch.randn_like(base_unet)
        for _ in range(3):
            loss = F.mse_loss(run_unet(bundle, inputs), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            assert not torch.allclose(run_unet(bundle, inputs), base_unet, atol=1e-4)
    assert torch.equal(bundle.unet.down_blocks[0].attentions[0].proj_in.weight, base_weight)
    with torch.no_grad():
        assert torch.equal(run_unet(bundle, inputs), base_unet)  # removed: base again


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_restores_identical_tensors_and_outputs(bundle, kind, tmp_path):
    net = build(bundle, kind, network_dim=4, seed=0)
    randomise(net, seed=5)
    path = save_lora(tmp_path / f"{kind}.safetensors", net.state_dict(),
                     {"ss_network_dim": "4"}, "float")
    saved, _ = read_lora(path)
    assert set(saved) == set(net.state_dict())
    again = build(bundle, kind, network_dim=4, seed=99)
    assert load_network_weights(again, path) == []
    for key, value in net.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    inputs = unet_inputs()
    with torch.no_grad():
        with applied(net):
            first = run_unet(bundle, inputs)
        with applied(again):
            second = run_unet(bundle, inputs)
    assert torch.equal(first, second)


def test_loading_alpha_from_a_file_updates_the_scale(bundle, tmp_path):
    net = build(bundle, "LoHa", network_dim=2, network_alpha=1.0)
    path = save_lora(tmp_path / "a.safetensors", net.state_dict(), {}, "float")
    other = build(bundle, "LoHa", network_dim=2, network_alpha=2.0)
    load_network_weights(other, path)
    assert all(m.scale == 0.5 for m in other.lora_modules())


def test_loading_another_type_or_rank_is_an_error_naming_the_field(bundle, tmp_path):
    loha = build(bundle, "LoHa", network_dim=2)
    path = save_lora(tmp_path / "loha.safetensors", loha.state_dict(), {}, "float")
    with pytest.raises(ProfileError, match="hada_w1_a.*LoHa.*lora_down.weight") as info:
        load_network_weights(build(bundle, "LoCon", network_dim=2), path)
    assert "network_module" in info.value.hint
    with pytest.raises(ProfileError, match=r"hada_w1_\w of shape \(32, 2\)") as info:
        load_network_weights(build(bundle, "LoHa", network_dim=3), path)
    assert "network_dim" in info.value.hint
    lokr = build(bundle, "LoKr", network_dim=2)
    path = save_lora(tmp_path / "lokr.safetensors", lokr.state_dict(), {}, "float")
    with pytest.raises(ProfileError, match="lokr_w2") as info:
        load_network_weights(build(bundle, "LoKr", network_dim=16), path)  # all full here
    assert "factor" in info.value.hint


# --- dropouts ---------------------------------------------------------------------------------

def test_lora_rank_dropout_masks_rank_channels_per_sample_and_rescales():
    torch.manual_seed(0)
    layer = nn.Linear(8, 6)
    module = LoRAModule("n", layer, rank=4, alpha=2.0, rank_dropout=0.5)
    nn.init.normal_(module.lora_up.weight)
    module.apply_to()
    x = torch.randn(3, 5, 8)  # (batch, tokens, features) as in a text encoder
    with torch.no_grad():
        module.eval()
        assert torch.allclose(layer(x), F.linear(x, layer.weight + module.delta_weight(),
                                                 layer.bias), atol=1e-5)
        module.train()
        torch.manual_seed(7)
        got = layer(x)
        torch.manual_seed(7)
        keep = (torch.rand(3, 4) > 0.5).float()  # the draw the module makes
        down = x @ module.lora_down.weight.T * keep[:, None, :]
        expected = F.linear(x, layer.weight, layer.bias) \
            + down @ module.lora_up.weight.T * (2.0 / 4) / (1 - 0.5)
    assert 0 < keep.sum() < keep.numel() and not torch.equal(keep[0], keep[1])
    assert torch.allclose(got, expected, atol=1e-5)


def test_loha_rank_dropout_masks_rows_of_delta_and_rescales():
    torch.manual_seed(0)
    layer = nn.Linear(8, 6)
    module = LoHaModule("n", layer, rank=2, alpha=2.0, rank_dropout=0.25)
    nn.init.normal_(module.hada_w2_a)
    module.apply_to()
    x = torch.randn(4, 8)
    module.train()
    with torch.no_grad():
        torch.manual_seed(3)
        got = layer(x)
        torch.manual_seed(3)
        keep = (torch.rand(6) > 0.25).float()
        delta = module.delta_weight() * keep[:, None] / (1 - 0.25)
    assert 0 < keep.sum() < 6
    assert torch.allclose(got, F.linear(x, layer.weight + delta, layer.bias), atol=1e-5)


@pytest.mark.parametrize("cls", [LoRAModule, LoHaModule, LoKrModule])
def test_dropouts_act_only_in_training_mode(cls):
    torch.manual_seed(0)
    layer = nn.Linear(16, 16)
    noisy = cls("n", layer, rank=2, alpha=1.0, dropout=0.5, rank_dropout=0.5,
                module_dropout=0.5)
    for p in noisy.parameters():  # a trained-looking module: ΔW ≠ 0
        with torch.no_grad():
            p.add_(torch.randn_like(p))
    x = torch.randn(4, 16)
    noisy.apply_to()
    with torch.no_grad():
        noisy.eval()
        reference = layer(x)
        assert all(torch.equal(layer(x), reference) for _ in range(5))
        assert not torch.allclose(reference, F.linear(x, layer.weight, layer.bias))
        noisy.train()
        outputs = [layer(x) for _ in range(40)]
    noisy.remove()
    base = F.linear(x, layer.weight, layer.bias)
    skipped = sum(torch.equal(o, base) for o in outputs)  # module dropout: ≈ half
    assert 8 <= skipped <= 32
    assert any(not torch.equal(o, base) and not torch.allclose(o, reference) for o in outputs)


def test_module_dropout_skips_the_whole_module():
    torch.manual_seed(0)
    layer = nn.Linear(4, 4)
    module = LoKrModule("n", layer, rank=1, alpha=1.0, module_dropout=0.3)
    nn.init.normal_(module.lokr_w2)
    module.apply_to()
    module.train()
    x = torch.randn(2, 4)
    with torch.no_grad():
        base = F.linear(x, layer.weight, layer.bias)
        outputs = [layer(x) for _ in range(200)]
    skipped = sum(torch.equal(o, base) for o in outputs)
    assert 40 <= skipped <= 80  # 0.3 · 200 = 60


# --- blocks -----------------------------------------------------------------------------------

def test_block_dims_zero_means_no_module_and_ranks_follow_blocks(bundle):
    dims = ["4"] * 25
    dims[1] = "0"            # down_blocks.0 resnets.0 / attentions.0
    dims[4] = "2"            # down_blocks.1 resnets.0
    alphas = ["1"] * 25
    alphas[4] = "3"
    conv = ["0"] * 25
    conv[2] = "5"            # down_blocks.0 resnets.1 / attentions.1: 3x3 convs only there
    net = build(bundle, "LoCon", block_dims=",".join(dims), block_alphas=",".join(alphas),
                conv_block_dims=",".join(conv))
    names = set(net.unet_names)
    assert not any(n.startswith(("lora_unet_down_blocks_0_attentions_0_",
                                 "lora_unet_down_blocks_0_resnets_0_")) for n in names)
    assert "lora_unet_down_blocks_0_attentions_0_proj_in" in net.skipped_names
    module = net.lora_unet_down_blocks_1_resnets_0_time_emb_proj
    assert module.rank == 2 and float(module.alpha) == 3.0
    assert net.lora_unet_down_blocks_0_resnets_1_conv1.rank == 5
    assert not hasattr(net, "lora_unet_down_blocks_1_resnets_0_conv1")  # conv rank 0 there
    assert net.lora_unet_down_blocks_0_attentions_1_proj_in.rank == 4
    assert len(net.text_encoder_names) == 12  # text encoders are not block-addressed


@pytest.mark.parametrize("kind", ["LoRA", "LoHa", "LoKr"])
def test_zero_learning_rate_weight_removes_the_block(bundle, kind):
    weights = [1.0] * 25
    weights[12] = 0.0  # mid block
    net = build(bundle, kind, lr_weights=weights)
    assert not any(n.startswith("lora_unet_mid_block") for n in net.unet_names)
    assert any(n.startswith("lora_unet_mid_block") for n in net.skipped_names)
    assert any(n.startswith("lora_unet_up_blocks") for n in net.unet_names)


def test_conv_rank_and_alpha_defaults():
    assert conv_rank_and_alpha(section("LoRA")) == (None, None)
    assert conv_rank_and_alpha(section("LoCon")) == (4, 2.0)             # LyCORIS: from network
    assert conv_rank_and_alpha(section("LoCon", conv_dim=8)) == (8, 1.0)  # sd-scripts: alpha 1
    assert conv_rank_and_alpha(section("LoHa", conv_dim=8)) == (8, 2.0)   # LyCORIS
    assert conv_rank_and_alpha(section("LoKr", conv_dim=8, conv_alpha=3.0)) == (8, 3.0)


def test_train_unet_only_and_text_encoder_only(bundle):
    unet_only = build(bundle, "LoHa", network_train_unet_only=True)
    assert unet_only.unet_names and not unet_only.text_encoder_names
    assert not any(k.startswith("lora_te") for k in unet_only.state_dict())
    te_only = build(bundle, "LoKr", network_train_text_encoder_only=True)
    assert te_only.text_encoder_names and not te_only.unet_names


def test_rank_dropout_of_one_is_refused(bundle):
    """By the profile's declaration (max 0.99, one place); the network only asserts it."""
    from lora_core.profile_load import profile_from_dict

    with pytest.raises(ProfileError, match="rank_dropout` = 1.0 is out of range"):
        profile_from_dict({"model": {"pretrained_model_name_or_path": "builtin:tiny-sd1"},
                           "dataset": {"train_data_dir": "d"}, "saving": {"output_dir": "o"},
                           "network": {"rank_dropout": 1.0}})
    with pytest.raises(AssertionError, match="rank_dropout"):
        build(bundle, "LoRA", rank_dropout=1.0)


# --- max-norm ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_max_norm_caps_every_delta_norm(bundle, kind):
    net = build(bundle, kind, network_dim=2)
    randomise(net, seed=11)
    with torch.no_grad():  # make a few modules large, leave one tiny
        for p in net.lora_unet_down_blocks_0_attentions_0_proj_in.factors():
            p.mul_(20)
        for p in net.lora_te_text_model_encoder_layers_0_mlp_fc1.factors():
            p.mul_(20)
        for p in net.lora_te_text_model_encoder_layers_1_mlp_fc2.factors():
            p.mul_(0.01)
    before = {m.lora_name: m.delta_weight().norm().item() for m in net.lora_modules()}
    cap = sorted(before.values())[len(before) // 2]  # half the modules are above it
    tiny = net.lora_te_text_model_encoder_layers_1_mlp_fc2
    tiny_factors = [p.clone() for p in tiny.factors()]
    scaled, mean_norm, max_norm = apply_max_norm(net, cap)
    after = {m.lora_name: m.delta_weight().norm().item() for m in net.lora_modules()}
    assert scaled == sum(n > cap for n in before.values()) > 0
    for name, norm in after.items():
        expected = cap if before[name] > cap else before[name]
        assert math.isclose(norm, expected, rel_tol=1e-4), name
    assert math.isclose(max_norm, max(after.values()), rel_tol=1e-4)
    assert math.isclose(mean_norm, sum(after.values()) / len(after), rel_tol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(tiny.factors(), tiny_factors, strict=True))


def test_lora_max_norm_scales_up_and_down_by_the_square_root():
    """sd-scripts: both by √(m/‖ΔW‖)."""
    torch.manual_seed(0)
    module = LoRAModule("n", nn.Linear(8, 8), rank=2, alpha=2.0)
    nn.init.normal_(module.lora_up.weight)
    up, down = module.lora_up.weight.clone(), module.lora_down.weight.clone()
    norm = module.delta_weight().norm().item()

    class One(nn.Module):
        def lora_modules(self):
            return [module]

    apply_max_norm(One(), norm / 4)
    assert torch.allclose(module.lora_up.weight, up * 0.5)
    assert torch.allclose(module.lora_down.weight, down * 0.5)
