"""SD 2.x: the family (text path, tokenizer fix-ups, clip_skip), v-prediction training
steps, LoRA names and shapes, and the metadata values (kohya-compat.md §5.1, §5.3, §5.4,
§6.1, §7.2, §7.4)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

from lora_core.errors import ModelError
from lora_core.families.sd2 import SD2Family, clip_skip_warning
from lora_core.family_registry import family as family_named
from lora_core.models.bundle import ModelBundle
from lora_core.models.clip_text import final_layer_norm
from lora_core.network.build import build_network
from lora_core.paths import cache_dir
from lora_core.profile import NetworkSection, TrainingSection
from lora_core.training.loss import diffusion_loss, prepare_schedule_and_loss, training_target
from tests.helpers.tiny_models import (
    SD2_TEXT_LAYERS,
    SD2_TEXT_WIDTH,
    tiny_sd2_folder,
    with_text,
)

LONG_CAPTION = " ".join(["red hair"] * 50)  # 100 tokens: more than one 75-token window


def _bundle(folder: Path, tokenizer_folder: Path | None = None) -> ModelBundle:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    return ModelBundle(
        family="sd2",
        unet=UNet2DConditionModel.from_pretrained(folder / "unet"),
        vae=AutoencoderKL.from_pretrained(folder / "vae"),
        text_encoders=[CLIPTextModel.from_pretrained(folder / "text_encoder")],
        tokenizers=[CLIPTokenizer.from_pretrained(tokenizer_folder or folder / "tokenizer")],
        noise_scheduler=scheduler,
        vae_scaling_factor=0.18215,
        model_name=folder.name,
        prediction_type=scheduler.config.prediction_type,
    )


@pytest.fixture(scope="module")
def sd2_folder() -> Path:
    # The session's test cache (conftest), so test files share one build.
    return tiny_sd2_folder(cache_dir() / "test-models")


@pytest.fixture(scope="module")
def sd2_v_folder() -> Path:
    return tiny_sd2_folder(cache_dir() / "test-models", v_pred=True)


@pytest.fixture(scope="module")
def bundle(sd2_folder: Path) -> ModelBundle:
    return _bundle(sd2_folder)


def test_tiny_sd2_has_the_sd2_shape_rules(bundle: ModelBundle, sd2_folder: Path,
                                          sd2_v_folder: Path) -> None:
    te, tok, unet = bundle.text_encoders[0], bundle.tokenizers[0], bundle.unet
    assert te.config.hidden_act == "gelu"
    assert (te.config.hidden_size, te.config.num_hidden_layers) == (SD2_TEXT_WIDTH,
                                                                    SD2_TEXT_LAYERS)
    assert tok.pad_token == "!" and tok.pad_token_id == 0 != tok.eos_token_id
    assert unet.config.use_linear_projection is True
    assert unet.config.cross_attention_dim == SD2_TEXT_WIDTH
    assert isinstance(unet.down_blocks[0].attentions[0].proj_in, torch.nn.Linear)
    assert list(unet.config.attention_head_dim) == [1, 2]
    assert bundle.prediction_type == "epsilon"
    # Deterministic: the second (v_pred) build has the same weights, bit for bit; v_pred
    # changes only the scheduler and upcast_attention.
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "vae/diffusion_pytorch_model.safetensors"):
        assert (sd2_v_folder / part).read_bytes() == (sd2_folder / part).read_bytes()
    scheduler = (sd2_v_folder / "scheduler" / "scheduler_config.json").read_text()
    assert '"v_prediction"' in scheduler


def test_long_caption_windows_get_the_pad_fixups(bundle: ModelBundle) -> None:
    """PAD ("!") ≠ EOS: a window ending on a word ends with EOS; a window after the caption
    starts BOS EOS PAD… (kohya-compat.md §5.4)."""
    tok = bundle.tokenizers[0]
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    family = SD2Family()
    short, long = family.tokenize(with_text(bundle, max_token_length=150),
                                  ["a photo of a cat", LONG_CAPTION])[0]
    assert short.shape == long.shape == (154,)
    first, second = short[:77], short[77:]
    n_words = len(tok("a photo of a cat").input_ids) - 2
    assert first[0] == bos and first[n_words + 1] == eos and first[-1] == pad
    assert second[:3].tolist() == [bos, eos, pad] and (second[2:] == pad).all()
    # The long caption: window 1 is 75 words, so its last id (PAD in the raw ids) is EOS.
    assert long[0] == bos and (long[1:76] != pad).all() and long[76] == eos
    assert long[77] == bos and eos in long[78:].tolist()


def test_encode_shapes_and_windows_match_separate_encoder_calls(bundle: ModelBundle) -> None:
    family = SD2Family()
    te = bundle.text_encoders[0]
    captions = ["a photo of a cat", LONG_CAPTION]
    with torch.no_grad():
        hidden75 = family.encode(bundle, family.tokenize(bundle, captions)).hidden
        long = with_text(bundle, max_token_length=150)
        ids150 = family.tokenize(long, captions)
        hidden150 = family.encode(long, ids150)
        assert hidden150.pooled is None
        windows = [te(ids150[0][:, k * 77:(k + 1) * 77]).last_hidden_state for k in (0, 1)]
    assert hidden75.shape == (2, 77, SD2_TEXT_WIDTH)
    assert hidden150.hidden.shape == (2, 152, SD2_TEXT_WIDTH)
    expected = torch.cat([windows[0][:, :76], windows[1][:, 1:]], dim=1)
    torch.testing.assert_close(hidden150.hidden, expected)
    assert family.unet_extra_conditioning(bundle) == {}


def test_clip_skip_works_as_sd1_and_warns_once(bundle: ModelBundle, caplog) -> None:
    family = SD2Family()
    te = bundle.text_encoders[0]
    ids = family.tokenize(bundle, ["a photo of a cat"])
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        skip1 = family.encode_text(bundle, ids)
        skip2 = family.encode_text(with_text(bundle, clip_skip=2), ids)
        family.encode_text(with_text(bundle, clip_skip=2), ids)
        manual = final_layer_norm(te)(te(ids[0], output_hidden_states=True).hidden_states[-2])
    torch.testing.assert_close(skip2, manual)
    assert not torch.allclose(skip1, skip2)
    warnings = [r for r in caplog.records if "clip_skip 2" in r.getMessage()]
    assert len(warnings) == 1
    assert clip_skip_warning(None) is None and clip_skip_warning(1) is None


def test_an_sd1_tokenizer_is_refused(sd2_folder: Path, tmp_path: Path) -> None:
    from lora_core.models.tokenizer_gen import write_tokenizer

    write_tokenizer(tmp_path / "sd1-tokenizer")  # pads with EOS, like SD 1.x's
    wrong = _bundle(sd2_folder, tmp_path / "sd1-tokenizer")
    with pytest.raises(ModelError) as info:
        SD2Family().tokenize(wrong, ["a cat"])
    assert "pads with EOS" in info.value.message
    assert "stabilityai/stable-diffusion-2" in info.value.hint


def test_v_prediction_steps_with_min_snr(sd2_v_folder: Path) -> None:
    """A few training steps as the trainer does them: v target, v min-SNR weights."""
    bundle = _bundle(sd2_v_folder)
    assert bundle.prediction_type == "v_prediction"
    family = SD2Family()
    scheduler = bundle.noise_scheduler
    for model in (bundle.unet, bundle.vae, *bundle.text_encoders):
        model.requires_grad_(False)
    network = build_network(bundle.unet, bundle.text_encoders,
                            NetworkSection(network_dim=4, network_alpha=2.0),
                            naming=family_named("sd2").naming)
    network.apply_to()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-2)
    training = dataclasses.replace(TrainingSection(), min_snr_gamma=5.0)
    weighting = prepare_schedule_and_loss(scheduler, training, v_parameterization=True)

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=generator) * 2 - 1
    with torch.no_grad():
        latents = bundle.vae.encode(images).latent_dist.mean * bundle.vae_scaling_factor
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.tensor([20, 700])
    ids = family.tokenize(bundle, ["a photo of a cat", "a red dress"])

    # Independent maths: ᾱ from the betas, v = √ᾱ·ε − √(1−ᾱ)·x₀, λ = min(snr, γ)/(snr + 1).
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)[timesteps].float().view(-1, 1, 1, 1)
    snr = (alpha_bar / (1 - alpha_bar)).flatten()
    target = training_target(scheduler, latents, noise, timesteps, v_parameterization=True)
    torch.testing.assert_close(target, alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents)
    torch.testing.assert_close(weighting.timestep_weight[timesteps],
                               snr.clamp(max=5.0) / (snr + 1))
    # At t=700 snr < γ: the ε-prediction weight min(snr, γ)/snr would be exactly 1.
    assert float(weighting.timestep_weight[700]) < 0.5

    noisy = scheduler.add_noise(latents, noise, timesteps)
    first_pred = None
    for step in range(3):
        hidden = family.encode(bundle, ids).hidden
        pred = bundle.unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        loss = diffusion_loss(pred, target, timesteps, torch.ones(2), weighting)
        manual = (((pred - target) ** 2).mean(dim=(1, 2, 3)) * snr.clamp(max=5.0)
                  / (snr + 1)).mean()
        torch.testing.assert_close(loss, manual)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        for names in (network.text_encoder_names, network.unet_names):
            ups = [getattr(network, n).lora_up.weight.grad for n in names]
            assert all(g is not None for g in ups)
            assert sum(float(g.abs().sum()) for g in ups) > 0
        if step > 0:  # lora_up starts at zero, so lora_down learns from the second step
            downs = [m.lora_down.weight.grad for m in network.lora_modules()]
            assert sum(float(g.abs().sum()) for g in downs) > 0
        optimizer.step()
        first_pred = pred.detach() if first_pred is None else first_pred
    assert not torch.allclose(pred.detach(), first_pred)  # the LoRA changed the model


def _proj_in_downs(unet) -> dict[str, torch.Size]:
    network = build_network(unet, [], NetworkSection(network_dim=4, network_alpha=4.0,
                                                     network_train_unet_only=True),
                            naming=family_named("sd2").naming)
    return {k: v.shape for k, v in network.state_dict().items()
            if k.endswith(("proj_in.lora_down.weight", "proj_out.lora_up.weight"))}


def test_lora_names_and_projection_shapes(bundle: ModelBundle) -> None:
    """Linear proj_in/out (diffusers folder) → 2-D LoRA tensors; 1x1 convs (how SD 2.x
    single files are built, use_linear_projection=False) → 4-D; the names are the same."""
    from diffusers import UNet2DConditionModel

    linear = _proj_in_downs(bundle.unet)
    config = {**bundle.unet.config, "use_linear_projection": False}
    conv = _proj_in_downs(UNet2DConditionModel.from_config(config))
    assert set(linear) == set(conv)
    assert "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight" in linear
    assert "lora_unet_up_blocks_1_attentions_2_proj_out.lora_up.weight" in linear
    assert linear["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"] == (4, 64)
    assert conv["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"] == (4, 64, 1, 1)
    assert all(len(s) == 2 for s in linear.values()) and all(len(s) == 4 for s in conv.values())

    network = build_network(bundle.unet, bundle.text_encoders,
                            NetworkSection(network_dim=4, network_alpha=4.0),
                            naming=family_named("sd2").naming)
    te = bundle.text_encoders[0]
    assert len(network.text_encoder_names) == te.config.num_hidden_layers * 6
    assert {f"lora_te_text_model_encoder_layers_{i}_{part}"
            for i in range(te.config.num_hidden_layers)
            for part in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj",
                         "self_attn_out_proj", "mlp_fc1", "mlp_fc2")} == set(
        network.text_encoder_names)
    transformers = sum(type(m).__name__ == "Transformer2DModel" for m in bundle.unet.modules())
    # Per transformer: proj_in, proj_out, attn1/attn2 q k v out, ff.net.0.proj, ff.net.2.
    assert len(network.unet_names) == transformers * 12


def test_single_file_load_gives_conv_projections_and_the_same_model(
        bundle: ModelBundle, sd2_folder: Path, tmp_path: Path) -> None:
    """An SD 2.x single file (A1111 layout, our writer) through the user's loading path:
    family sd2, 1x1-conv proj_in/out as sd-scripts builds them, so 4-D LoRA tensors under
    the same names, and the same U-Net and text-encoder outputs as the diffusers folder."""
    from lora_core.families.sd.loading import load_model
    from tests.helpers.ldm_export import write_single_file

    path = write_single_file(sd2_folder, tmp_path / "tiny-sd2.safetensors", "sd2")
    loaded = load_model(str(path), tmp_path, tokenizer_dir=sd2_folder / "tokenizer")
    assert loaded.family == "sd2"
    proj_in = loaded.unet.down_blocks[0].attentions[0].proj_in
    assert isinstance(proj_in, torch.nn.Conv2d) and proj_in.kernel_size == (1, 1)
    folder_shapes, file_shapes = _proj_in_downs(bundle.unet), _proj_in_downs(loaded.unet)
    assert folder_shapes.keys() == file_shapes.keys()
    assert all(len(file_shapes[k]) == 4 and file_shapes[k][:2] == folder_shapes[k]
               for k in folder_shapes)

    family = SD2Family()
    ids = family.tokenize(loaded, ["a photo of a cat"])
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = []
        for b in (bundle, loaded):
            hidden = family.encode(b, ids).hidden
            outputs.append((hidden, b.unet(latents, torch.tensor([10]),
                                           encoder_hidden_states=hidden).sample))
    torch.testing.assert_close(outputs[1][0], outputs[0][0])
    torch.testing.assert_close(outputs[1][1], outputs[0][1])


@pytest.mark.parametrize(("v_pred", "version", "architecture"), [
    (False, "sd_v2", "stable-diffusion-v2-512/lora"),
    (True, "sd_v2_v", "stable-diffusion-v2-768-v/lora"),
])
def test_metadata_values(v_pred: bool, version: str, architecture: str) -> None:
    assert family_named("sd2").base_model_version(v_pred) == version
    assert family_named("sd2").modelspec_architecture(v_pred) == architecture


def test_the_registry_gives_this_family(bundle: ModelBundle) -> None:
    assert isinstance(family_named("sd2"), SD2Family)
    assert isinstance(bundle.impl, SD2Family)
