"""Recognising Flux DiT files (BFL / diffusers / ComfyUI prefix / fp8; dev / schnell / Chroma)
and loading them."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lora_core.errors import ModelError, ProfileError
from lora_core.families.flux import diffusers_layout
from lora_core.families.flux.config import FluxConfig, default_axes_dim
from lora_core.families.flux.files import (
    check_variant_settings,
    inspect_flux_file,
    load_flux_model,
    resolve_variant,
)
from lora_core.families.flux.model import Flux

CONFIG = FluxConfig(in_channels=64, vec_in_dim=40, context_in_dim=56, hidden_size=96,
                    mlp_ratio=2.0, num_heads=2, depth=3, depth_single_blocks=2,
                    axes_dim=default_axes_dim(48), qkv_bias=True, guidance_embed=True)


@pytest.fixture(scope="module")
def dev_state():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return {k: v.contiguous() for k, v in Flux(CONFIG).state_dict().items()}


def _save(tmp_path, name, state):
    path = tmp_path / name
    save_file(state, str(path))
    return path


def _run(model):
    gen = torch.Generator().manual_seed(0)
    ids = torch.zeros(1, 4, 3)
    ids[0, :, 1] = torch.tensor([0.0, 0, 1, 1])
    ids[0, :, 2] = torch.tensor([0.0, 1, 0, 1])
    return model(torch.randn(1, 4, 64, generator=gen), ids,
                 torch.randn(1, 3, 56, generator=gen), torch.zeros(1, 3, 3),
                 torch.tensor([0.5]), torch.randn(1, 40, generator=gen), torch.tensor([3.5]))


CHROMA = FluxConfig(**{**CONFIG.__dict__, "vec_in_dim": 0, "guidance_embed": False,
                        "approximator": (16, 48, 2)})


def test_dev_schnell_and_chroma_are_told_from_the_weights(tmp_path, dev_state):
    dev = inspect_flux_file(_save(tmp_path, "a.safetensors", dev_state))
    assert (dev.layout, dev.variant, dev.config) == ("bfl", "dev", CONFIG)
    schnell_state = {k: v for k, v in dev_state.items() if not k.startswith("guidance_in.")}
    schnell = inspect_flux_file(_save(tmp_path, "b.safetensors", schnell_state))
    assert schnell.variant == "schnell" and schnell.config.guidance_embed is False
    assert not schnell.config.takes_guidance
    torch.manual_seed(2)
    chroma_model = Flux(CHROMA).eval()
    chroma_state = {k: v.contiguous() for k, v in chroma_model.state_dict().items()}
    assert not any(k.startswith(("guidance_in.", "vector_in.", "time_in.")) for k in chroma_state)
    chroma = inspect_flux_file(_save(tmp_path, "c.safetensors", chroma_state))
    assert (chroma.variant, chroma.model_type, chroma.config) == ("chroma", "chroma", CHROMA)
    assert resolve_variant(chroma, "chroma") == "chroma"
    with pytest.raises(ModelError, match="model_type"):
        resolve_variant(dev, "chroma")
    with pytest.raises(ModelError, match="model_type"):
        resolve_variant(chroma, "flux")
    with pytest.raises(ProfileError, match="apply_t5_attn_mask"):
        check_variant_settings("chroma", apply_t5_attn_mask=False)
    check_variant_settings("dev", apply_t5_attn_mask=False)
    loaded, _ = load_flux_model(chroma.path, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    args = (torch.randn(1, 4, 64, generator=gen), torch.zeros(1, 4, 3),
            torch.randn(1, 3, 56, generator=gen), torch.zeros(1, 3, 3), torch.tensor([0.5]),
            None, torch.tensor([0.0]), torch.tensor([[1, 0, 0]]))
    torch.testing.assert_close(loaded(*args), chroma_model(*args))


def test_comfy_prefix_and_fp8_files_load(tmp_path, dev_state):
    reference = Flux(CONFIG)
    reference.load_state_dict(dev_state)
    expected = _run(reference.eval())
    prefixed = {f"model.diffusion_model.{k}": v for k, v in dev_state.items()}
    model, info = load_flux_model(_save(tmp_path, "p.safetensors", prefixed),
                                  dtype=torch.float32)
    assert info.key_prefix == "model.diffusion_model."
    torch.testing.assert_close(_run(model), expected)
    fp8_state = {k: (v.to(torch.float8_e4m3fn) if v.ndim == 2 else v)
                 for k, v in dev_state.items()}
    path = _save(tmp_path, "flux1-dev-fp8.safetensors", fp8_state)
    assert inspect_flux_file(path).is_fp8
    upcast, _ = load_flux_model(path, dtype=torch.float32)
    kept, _ = load_flux_model(path, dtype=torch.float32, fp8_base=True)
    assert kept.double_blocks[0].img_attn.qkv.weight.dtype == torch.float8_e4m3fn
    torch.testing.assert_close(_run(kept), _run(upcast))  # same fp8 values, same maths
    assert (_run(kept) - expected).abs().max() < 0.2 * expected.abs().max()


def test_diffusers_layout_round_trip_and_loading(tmp_path, dev_state):
    d_state = diffusers_layout.convert_bfl_to_diffusers(dev_state, CONFIG.hidden_size)
    assert "transformer_blocks.0.attn.add_k_proj.bias" in d_state
    assert d_state["single_transformer_blocks.1.proj_mlp.weight"].shape == (192, 96)
    assert not any(k.startswith(("double_blocks", "single_blocks")) for k in d_state)
    back = dict(diffusers_layout.convert_diffusers_to_bfl(d_state.__getitem__, d_state))
    assert back.keys() == dev_state.keys()
    for key, tensor in dev_state.items():
        assert torch.equal(back[key], tensor), key
    path = _save(tmp_path, "diffusers.safetensors", d_state)
    info = inspect_flux_file(path)
    assert (info.layout, info.variant, info.config) == ("diffusers", "dev", CONFIG)
    model, _ = load_flux_model(path, dtype=torch.float32)
    reference = Flux(CONFIG)
    reference.load_state_dict(dev_state)
    torch.testing.assert_close(_run(model), _run(reference.eval()))


def test_diffusers_final_layer_stores_scale_before_shift(dev_state):
    d_state = diffusers_layout.convert_bfl_to_diffusers(dev_state, CONFIG.hidden_size)
    bfl = dev_state["final_layer.adaLN_modulation.1.weight"]
    diff = d_state["norm_out.linear.weight"]
    assert torch.equal(diff[:96], bfl[96:]) and torch.equal(diff[96:], bfl[:96])
    qkv = dev_state["double_blocks.1.txt_attn.qkv.weight"]
    assert torch.equal(d_state["transformer_blocks.1.attn.add_v_proj.weight"], qkv[192:])


@pytest.mark.parametrize(("keys", "said"), [
    ({"model.diffusion_model.input_blocks.0.0.weight": (4, 4)}, "Stable Diffusion"),
    ({"encoder.down.0.block.0.conv1.weight": (4, 4)}, "ae"),
    ({"encoder.block.0.layer.0.SelfAttention.q.weight": (4, 4)}, "t5xxl"),
    ({"text_model.embeddings.token_embedding.weight": (4, 4)}, "clip_l"),
    ({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (4, 4)}, "LoRA"),
])
def test_wrong_files_are_named(tmp_path, keys, said):
    path = _save(tmp_path, "x.safetensors", {k: torch.zeros(s) for k, s in keys.items()})
    with pytest.raises(ModelError) as err:
        inspect_flux_file(path, where="pretrained_model_name_or_path")
    assert "pretrained_model_name_or_path" in err.value.message
    assert said in err.value.message and err.value.hint


def test_missing_file_and_e5m2_are_refused(tmp_path, dev_state):
    with pytest.raises(ModelError, match="does not exist"):
        inspect_flux_file(tmp_path / "nope.safetensors")
    e5 = {k: (v.to(torch.float8_e5m2) if v.ndim == 2 else v) for k, v in dev_state.items()}
    with pytest.raises(ModelError, match="F8_E5M2"):
        inspect_flux_file(_save(tmp_path, "e5.safetensors", e5))
