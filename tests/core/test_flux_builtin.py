"""tiny-flux as the four files users have; the AE key map, text encoding, sampler, metadata."""

from __future__ import annotations

import pytest
import torch

from lora_core.errors import ModelError
from lora_core.families.flux import builtin, latents, metadata, objective, sampler, text
from lora_core.families.flux.files import inspect_flux_file, load_flux_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flux") / "tiny-flux"
    folder.mkdir()
    builtin.build_tiny_flux(folder)
    return folder


def test_files_are_recognised_and_load(tiny):
    info = inspect_flux_file(tiny / builtin.DIT_FILE)
    assert (info.layout, info.variant, info.config) == ("bfl", "dev", builtin.TINY_CONFIG)
    ae = latents.load_ae(tiny / builtin.AE_FILE)
    assert ae.config.latent_channels == 16
    assert ae.config.scaling_factor == latents.AE_SCALE
    assert ae.config.shift_factor == latents.AE_SHIFT
    with pytest.raises(ModelError, match="clip_l"):
        text.load_clip_l(tiny / builtin.T5_FILE)
    with pytest.raises(ModelError, match="t5xxl"):
        text.load_t5(tiny / builtin.CLIP_L_FILE)
    with pytest.raises(ModelError, match="ae"):
        latents.load_ae(tiny / builtin.CLIP_L_FILE)


def test_tiny_chroma_and_fp8_t5(tiny):
    info = inspect_flux_file(tiny / builtin.CHROMA_FILE)
    assert (info.variant, info.config) == ("chroma", builtin.TINY_CHROMA_CONFIG)
    model, _ = load_flux_model(info.path, dtype=torch.float32)
    t5 = text.load_t5(tiny / builtin.T5_FILE)
    t5_fp8 = text.load_t5(tiny / builtin.T5_FILE, fp8=True)
    assert t5_fp8.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn
    assert t5_fp8.shared.weight.dtype == torch.float32
    _, t5_tok = text.load_tokenizers(None, tiny / builtin.T5_TOKENIZER_DIR, 16)
    cond = text.encode_text(["a cat"], None, t5_tok, None, t5, t5_max_length=16,
                            apply_t5_attn_mask=True)
    cond8 = text.encode_text(["a cat"], None, t5_tok, None, t5_fp8, t5_max_length=16,
                             apply_t5_attn_mask=True)
    assert cond.pooled is None
    err = (cond8.t5_states - cond.t5_states).abs().max()
    assert 0 < err < 0.1 * cond.t5_states.abs().max()
    out = sampler.sample_latents(model, width_px=64, height_px=64, num_steps=2,
                                 t5_states=cond.t5_states, txt_ids=cond.txt_ids, pooled=None,
                                 guidance_scale=0.0, t5_mask=cond.t5_mask, seed=1)
    assert out.shape == (1, 16, 8, 8) and torch.isfinite(out).all()


def test_ae_key_map_agrees_with_diffusers_ldm_converter(tiny):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    bfl = load_file(str(tiny / builtin.AE_FILE))
    ae = latents.load_ae(tiny / builtin.AE_FILE)
    theirs = convert_ldm_vae_checkpoint(bfl, dict(ae.config))
    ours = ae.state_dict()
    assert set(theirs) == set(ours)
    for key, tensor in theirs.items():
        assert torch.equal(tensor.reshape(ours[key].shape), ours[key]), key


def test_text_encoding_training_step_and_sampler(tiny):
    model, info = load_flux_model(tiny / builtin.DIT_FILE, dtype=torch.float32)
    clip = text.load_clip_l(tiny / builtin.CLIP_L_FILE)
    t5 = text.load_t5(tiny / builtin.T5_FILE)
    clip_tok, t5_tok = text.load_tokenizers(tiny / builtin.CLIP_TOKENIZER_DIR,
                                            tiny / builtin.T5_TOKENIZER_DIR, 32)
    cond = text.encode_text(["a photo of a cat", "red hair"], clip_tok, t5_tok, clip, t5,
                            t5_max_length=32, apply_t5_attn_mask=True)
    assert cond.pooled.shape == (2, builtin.CLIP_HIDDEN)
    assert cond.t5_states.shape == (2, 32, builtin.T5_HIDDEN)
    assert cond.t5_mask[0].sum() == 6  # five words and </s>
    ae = latents.load_ae(tiny / builtin.AE_FILE)
    x0 = latents.encode(ae, torch.rand(2, 3, 64, 64) * 2 - 1, torch.Generator().manual_seed(0))
    assert x0.shape == (2, 16, 8, 8)
    settings = objective.FlowSettings(timestep_sampling="shift", model_prediction_type="raw")
    sigmas = objective.draw_sigmas(settings, 2, (4, 4), torch.Generator().manual_seed(0))
    noise = torch.randn_like(x0)
    x_t = objective.noisy_latents(x0, noise, sigmas)
    model.requires_grad_(True).train()
    pred = model(latents.pack_latents(x_t), latents.image_ids(2, 4, 4), cond.t5_states,
                 cond.txt_ids, objective.model_timesteps(sigmas), cond.pooled,
                 objective.guidance_vector(1.0, 2, info.config.takes_guidance), cond.t5_mask)
    pred, weight = objective.apply_prediction_type(
        settings, latents.unpack_latents(pred, 4, 4), x_t, sigmas)
    loss = torch.nn.functional.mse_loss(pred, objective.flow_target(x0, noise))
    loss.backward()
    assert torch.isfinite(loss) and weight is None
    assert model.single_blocks[1].linear2.weight.grad.abs().sum() > 0
    model.eval()
    out = sampler.sample_latents(model, width_px=72, height_px=64, num_steps=3,
                                 t5_states=cond.t5_states[:1], txt_ids=cond.txt_ids[:1],
                                 pooled=cond.pooled[:1], seed=5)
    assert out.shape == (1, 16, 8, 8) and torch.isfinite(out).all()  # 72 rounds to 64
    again = sampler.sample_latents(model, width_px=64, height_px=64, num_steps=3,
                                   t5_states=cond.t5_states[:1], txt_ids=cond.txt_ids[:1],
                                   pooled=cond.pooled[:1], seed=5)
    assert torch.equal(out, again)
    assert latents.decode(ae, out).shape == (1, 3, 64, 64)


def test_schedule_matches_sd_scripts_get_schedule():
    times = sampler.get_schedule(4, 256)  # mu 0.5
    expected = [1.0] + [pow(2.718281828459045, 0.5) / (pow(2.718281828459045, 0.5)
                                                         + (1 / t - 1)) for t in
                        (0.75, 0.5, 0.25)] + [0.0]
    assert times == pytest.approx(expected, abs=1e-6)
    assert sampler.get_schedule(2, 256, shift=False) == pytest.approx([1.0, 0.5, 0.0])
    assert (sampler.round_size_px(72), sampler.round_size_px(40)) == (64, 64)


def test_metadata_keys():
    keys = metadata.training_keys("schnell", objective.FlowSettings(), False)
    assert keys["ss_base_model_version"] == "flux1" and keys["ss_model_type"] == "flux"
    assert keys["ss_guidance_scale"] == "3.5" and keys["ss_discrete_flow_shift"] == "3.0"
    assert keys["ss_apply_t5_attn_mask"] == "False"
    assert keys["ss_timestep_sampling"] == "sigma"
    assert keys["ss_model_prediction_type"] == "sigma_scaled"
    assert metadata.modelspec_keys("dev")["modelspec.architecture"] == "flux-1-dev/lora"
    chroma = metadata.training_keys("chroma", objective.FlowSettings(), True)
    assert chroma["ss_base_model_version"] == "chroma"
    assert metadata.modelspec_keys("chroma")["modelspec.architecture"] == "chroma/lora"


def test_tokenizers_are_found_offline_or_named(tiny, tmp_path, monkeypatch):
    import shutil

    from lora_core.families.flux import tokenizers

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert tokenizers.find_t5_tokenizer(None, tiny) == tiny / builtin.T5_TOKENIZER_DIR
    assert tokenizers.find_clip_l_tokenizer(None, tiny) == tiny / builtin.CLIP_TOKENIZER_DIR
    cache = tmp_path / "tokenizers"
    with pytest.raises(ModelError) as err:
        tokenizers.find_t5_tokenizer(cache)
    assert "tokenizer_cache_dir" in err.value.message
    assert err.value.hint.count("hf download google/t5-v1_1-xxl") == 1
    assert str(cache / "google_t5-v1_1-xxl") in err.value.hint
    shutil.copytree(tiny / builtin.T5_TOKENIZER_DIR, cache / "google_t5-v1_1-xxl")
    found = tokenizers.find_t5_tokenizer(cache)
    assert found == cache / "google_t5-v1_1-xxl"
    t5_tok = tokenizers.load_t5_tokenizer(found, 256)
    assert t5_tok("a cat", padding="max_length")["input_ids"][:3] == [3, 159, 1]
    snapshot = tmp_path / "hub" / "models--google--t5-v1_1-xxl" / "snapshots" / "abc"
    shutil.copytree(tiny / builtin.T5_TOKENIZER_DIR, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc")
    assert tokenizers.find_t5_tokenizer(tmp_path / "elsewhere") == snapshot
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "spiece.model").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="T5 tokenizer"):
        tokenizers.load_t5_tokenizer(broken, 256)


def test_ensure_tiny_flux_builds_once_and_names_a_broken_cache(tmp_path):
    folder = builtin.ensure_tiny_flux(tmp_path)
    assert folder == builtin.tiny_flux_folder(tmp_path)
    stamp = (folder / builtin.DIT_FILE).stat().st_mtime_ns
    assert builtin.ensure_tiny_flux(tmp_path) == folder
    assert (folder / builtin.DIT_FILE).stat().st_mtime_ns == stamp
    (folder / builtin.T5_FILE).unlink()
    with pytest.raises(ModelError, match="incomplete"):
        builtin.ensure_tiny_flux(tmp_path)


def test_recognition_and_metadata_import_no_torch():
    import subprocess
    import sys

    code = ("import sys; import lora_core.families.flux, lora_core.families.flux.files, "
            "lora_core.families.flux.metadata, lora_core.families.flux.config; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
