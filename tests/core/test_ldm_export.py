"""The test helper that writes single-file (A1111 / LDM layout) checkpoints.

Two independent proofs that ``tests/helpers/ldm_export.py`` writes what users' files hold:

* the key names are those of the released checkpoints (prefixes, names at small indices,
  and for the full-size architectures, built on the meta device, the names and shapes of
  SD 1.5 / SD 2.1 / SDXL base 1.0 files, which diffusers itself also classifies as
  ``v1`` / ``v2`` / ``xl_base``);
* diffusers' own single-file loader (not ours) reads the tiny models back bit-identically.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_core.models.builtin import ensure_builtin
from lora_core.paths import cache_dir
from tests.helpers.ldm_export import checkpoint_state_dict, write_single_file
from tests.helpers.tiny_models import full_size_meta, tiny_sd2_folder

PREFIXES = {
    "sd1": ("model.diffusion_model.", "first_stage_model.",
            "cond_stage_model.transformer.text_model."),
    "sd2": ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.model."),
    "sdxl": ("model.diffusion_model.", "first_stage_model.",
             "conditioner.embedders.0.transformer.text_model.",
             "conditioner.embedders.1.model."),
}
# LDM noise-schedule buffers SD 1.x / 2.x files carry at the top level.
SCHEDULE_KEYS = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                 "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
                 "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                 "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2"}

# Names every checkpoint of the family has (they exist in the tiny models too).
KNOWN_KEYS = {
    "all": [
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.time_embed.2.bias",
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
        "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight",
        "model.diffusion_model.input_blocks.1.0.out_layers.3.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.middle_block.0.in_layers.2.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.middle_block.2.out_layers.3.bias",
        "model.diffusion_model.output_blocks.0.0.skip_connection.weight",
        "model.diffusion_model.out.0.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.encoder.conv_in.weight",
        "first_stage_model.encoder.down.0.block.0.norm1.weight",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.encoder.mid.block_1.conv1.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.encoder.mid.attn_1.proj_out.weight",
        "first_stage_model.encoder.norm_out.weight",
        "first_stage_model.decoder.up.0.block.0.conv2.weight",
        "first_stage_model.decoder.up.1.upsample.conv.weight",
        "first_stage_model.decoder.mid.attn_1.norm.weight",
        "first_stage_model.quant_conv.weight",
        "first_stage_model.post_quant_conv.bias",
    ],
    "sd1": [
        "model.diffusion_model.input_blocks.1.1.proj_in.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_out.0.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.norm3.weight",
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.3.1.proj_out.weight",
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_ids",
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc2.bias",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ],
    "sd2": [
        "model.diffusion_model.input_blocks.1.1.proj_in.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "cond_stage_model.model.token_embedding.weight",
        "cond_stage_model.model.positional_embedding",
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_bias",
        "cond_stage_model.model.transformer.resblocks.0.attn.out_proj.weight",
        "cond_stage_model.model.transformer.resblocks.0.ln_1.weight",
        "cond_stage_model.model.transformer.resblocks.0.ln_2.bias",
        "cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.weight",
        "cond_stage_model.model.transformer.resblocks.0.mlp.c_proj.bias",
        "cond_stage_model.model.ln_final.weight",
        "cond_stage_model.model.text_projection",
        "cond_stage_model.model.logit_scale",
    ],
    "sdxl": [
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.label_emb.0.2.weight",
        "model.diffusion_model.input_blocks.4.1.proj_in.weight",
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.output_blocks.0.1.proj_out.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
        "conditioner.embedders.1.model.transformer.resblocks.1.mlp.c_proj.bias",
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
        "conditioner.embedders.1.model.ln_final.weight",
        "conditioner.embedders.1.model.text_projection",
        "conditioner.embedders.1.model.positional_embedding",
        "conditioner.embedders.1.model.logit_scale",
    ],
}
# Diffusers-only names that must never reach an A1111-layout file.
DIFFUSERS_WORDS = ("down_blocks", "up_blocks", "mid_block", "resnets", "time_embedding",
                   "conv_norm_out", "group_norm", "conv_shortcut", "layer_norm1",
                   "self_attn", "fc1")


@pytest.fixture(scope="module")
def folders() -> dict[str, Path]:
    # The session's test cache (conftest): built once, shared with the other test files.
    return {"sd1": ensure_builtin("tiny-sd1"), "sd2": tiny_sd2_folder(cache_dir() / "test-models"),
            "sdxl": ensure_builtin("tiny-sdxl")}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_key_layout_is_a1111(folders, family: str, tmp_path: Path) -> None:
    path = write_single_file(folders[family], tmp_path / "model.safetensors", family)
    sd = load_file(str(path))
    stray = [k for k in sd if not k.startswith(PREFIXES[family])
             and not (family != "sdxl" and k in SCHEDULE_KEYS)]
    assert stray == []
    missing = [k for k in KNOWN_KEYS["all"] + KNOWN_KEYS[family] if k not in sd]
    assert missing == []
    unet_and_vae = [k for k in sd if k.startswith(("model.", "first_stage_model."))]
    text_keys = [k for k in sd if k.startswith(("cond_stage_model.model.",
                                                "conditioner.embedders.1."))]
    for word in DIFFUSERS_WORDS:
        assert not [k for k in unet_and_vae if word in k], word
        if family != "sd1":  # OpenCLIP names only in the OpenCLIP part
            assert not [k for k in text_keys if word in k], word
    # Projections: 1x1 conv in SD 1.x files, Linear in SD 2.x and SDXL files.
    proj_in = next(v for k, v in sd.items() if k.endswith(".1.proj_in.weight"))
    assert proj_in.dim() == (4 if family == "sd1" else 2)
    # VAE mid-attention: LDM names (q, k, v, proj_out) and the original 1x1 conv weights.
    assert not [k for k in sd if k.startswith("first_stage_model.") and ".to_" in k]
    assert sd["first_stage_model.decoder.mid.attn_1.v.weight"].dim() == 4
    assert set(sd) & SCHEDULE_KEYS == (set() if family == "sdxl" else SCHEDULE_KEYS)


def test_openclip_in_proj_and_extra_layer(folders, tmp_path: Path) -> None:
    """SD2: q, k, v stacked in that order; one dummy resblock after the real ones."""
    from transformers import CLIPTextModel

    te = CLIPTextModel.from_pretrained(folders["sd2"] / "text_encoder")
    sd = checkpoint_state_dict(folders["sd2"], "sd2")
    layers = te.config.num_hidden_layers
    width = te.config.hidden_size
    blocks = {int(k.split(".")[4]) for k in sd if ".resblocks." in k}
    assert blocks == set(range(layers + 1))
    inner = te.get_submodule("text_model") if hasattr(te, "text_model") else te
    attn = inner.encoder.layers[1].self_attn
    fused = sd["cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"]
    assert fused.shape == (3 * width, width)
    assert torch.equal(fused[:width], attn.q_proj.weight)
    assert torch.equal(fused[width:2 * width], attn.k_proj.weight)
    assert torch.equal(fused[2 * width:], attn.v_proj.weight)
    dummy = sd[f"cond_stage_model.model.transformer.resblocks.{layers}.attn.in_proj_weight"]
    assert all(not torch.equal(dummy, sd[f"cond_stage_model.model.transformer.resblocks.{i}"
                                         ".attn.in_proj_weight"]) for i in range(layers))
    assert sd["cond_stage_model.model.text_projection"].shape == (width, width)
    # The writer is deterministic: the same file twice.
    again = checkpoint_state_dict(folders["sd2"], "sd2")
    assert all(torch.equal(again[k], v) for k, v in sd.items())


def test_sdxl_text_projection_is_transposed(folders) -> None:
    from transformers import CLIPTextModelWithProjection

    te2 = CLIPTextModelWithProjection.from_pretrained(folders["sdxl"] / "text_encoder_2")
    sd = checkpoint_state_dict(folders["sdxl"], "sdxl")
    assert torch.equal(sd["conditioner.embedders.1.model.text_projection"],
                       te2.text_projection.weight.T)


def test_dtype_and_ckpt_form(folders, tmp_path: Path) -> None:
    path = write_single_file("builtin:tiny-sd1", tmp_path / "model.ckpt", "sd1",
                             dtype=torch.float16)
    loaded = torch.load(path, weights_only=True)
    assert set(loaded) == {"state_dict"}
    sd = loaded["state_dict"]
    floats = {v.dtype for v in sd.values() if v.is_floating_point()}
    assert floats == {torch.float16}
    ids = sd["cond_stage_model.transformer.text_model.embeddings.position_ids"]
    assert ids.dtype == torch.int64 and torch.equal(ids, torch.arange(77)[None])


def _assert_same_weights(reference, loaded, names: tuple[str, ...]) -> int:
    compared = 0
    for name in names:
        ref = getattr(reference, name, None)
        if ref is None:
            continue
        a, b = ref.state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys(), name
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert different == [], f"{name}: {different[:3]}"
        compared += len(a)
    return compared


@pytest.mark.parametrize(("family", "suffix"), [("sd1", ".safetensors"), ("sd2", ".ckpt"),
                                                ("sdxl", ".safetensors")])
def test_diffusers_reads_the_file_back_bit_identical(folders, family: str, suffix: str,
                                                     tmp_path: Path) -> None:
    """diffusers' from_single_file (its converter, not ours) gives back every weight."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    path = write_single_file(folders[family], tmp_path / f"model{suffix}", family)
    reference = cls.from_pretrained(folders[family])
    loaded = cls.from_single_file(str(path), config=str(folders[family]),
                                  local_files_only=True)
    compared = _assert_same_weights(reference, loaded,
                                    ("unet", "vae", "text_encoder", "text_encoder_2"))
    assert compared > 500


def test_diffusers_takes_the_weights_from_the_file(folders, tmp_path: Path) -> None:
    """Control for the test above: a change made only in the file shows up after loading
    (so the weights come from the file, not from the config folder)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folders["sd2"])
    inner = getattr(pipe.text_encoder, "text_model", pipe.text_encoder)
    with torch.no_grad():
        inner.encoder.layers[0].self_attn.k_proj.weight.mul_(-1.0)
        pipe.unet.conv_in.bias.add_(1.0)
    path = write_single_file(pipe, tmp_path / "changed.safetensors", "sd2")
    loaded = StableDiffusionPipeline.from_single_file(str(path), config=str(folders["sd2"]),
                                                      local_files_only=True)
    _assert_same_weights(pipe, loaded, ("unet", "text_encoder"))


# ---------------------------------------------------------------------------------------
# Full size, on the meta device: the names and shapes of the released files
# ---------------------------------------------------------------------------------------

FULL_SIZE_SHAPES = {
    "sd1": {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight":
            (1280, 768),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight":
            (768, 3072),
    },
    "sd2": {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320),
        "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight":
            (320, 1024),
        "model.diffusion_model.output_blocks.11.1.proj_out.weight": (320, 320),
        "cond_stage_model.model.token_embedding.weight": (49408, 1024),
        "cond_stage_model.model.positional_embedding": (77, 1024),
        "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight": (3072, 1024),
        "cond_stage_model.model.transformer.resblocks.23.mlp.c_fc.weight": (4096, 1024),
        "cond_stage_model.model.text_projection": (1024, 1024),
        "cond_stage_model.model.ln_final.bias": (1024,),
    },
    "sdxl": {
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "model.diffusion_model.input_blocks.4.1.proj_in.weight": (640, 640),
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight":
            (1280, 2048),
        "model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.2.weight":
            (1280, 5120),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (640, 640, 3, 3),
        "conditioner.embedders.0.transformer.text_model.encoder.layers.11.self_attn"
        ".q_proj.weight": (768, 768),
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight":
            (3840, 1280),
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,),
        "conditioner.embedders.1.model.text_projection": (1280, 1280),
        "conditioner.embedders.1.model.positional_embedding": (77, 1280),
    },
}
# One past the last block / layer of each real file: must not exist.
FULL_SIZE_ABSENT = {
    "sd1": ["model.diffusion_model.input_blocks.12.0.in_layers.0.weight",
            "model.diffusion_model.output_blocks.11.1.conv.weight",
            "cond_stage_model.transformer.text_model.encoder.layers.12.mlp.fc1.weight"],
    "sd2": ["cond_stage_model.model.transformer.resblocks.24.ln_1.weight"],
    "sdxl": ["model.diffusion_model.input_blocks.9.0.in_layers.0.weight",
             "model.diffusion_model.output_blocks.8.2.conv.weight",
             "conditioner.embedders.1.model.transformer.resblocks.32.ln_1.weight"],
}


@pytest.mark.parametrize(("family", "model_type"), [("sd1", "v1"), ("sd2", "v2"),
                                                    ("sdxl", "xl_base")])
def test_full_size_layout_matches_the_released_files(family: str, model_type: str) -> None:
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        infer_diffusers_model_type,
    )

    parts = full_size_meta(family)
    sd = checkpoint_state_dict(parts, family)
    shapes = {k: tuple(sd[k].shape) for k in FULL_SIZE_SHAPES[family] if k in sd}
    assert shapes == FULL_SIZE_SHAPES[family]
    assert [k for k in FULL_SIZE_ABSENT[family] if k in sd] == []
    # diffusers recognises the file as the real model type from its keys and shapes...
    assert infer_diffusers_model_type(sd) == model_type
    # ...and its converters map every U-Net / VAE tensor back onto the architecture.
    for name, convert in (("unet", convert_ldm_unet_checkpoint),
                          ("vae", convert_ldm_vae_checkpoint)):
        model = parts[name]
        converted = convert(sd, dict(model.config))
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in converted.items()} == expected
