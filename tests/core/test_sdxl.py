"""SDXL: U-Net layout mapping, LoRA names and counts, text conditioning, size conditioning,
training steps and previews on builtin:tiny-sdxl."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from lora_core.checks import scan_profile
from lora_core.dataset.loader import EpochBatches, size_conditioning
from lora_core.dataset.plan import make_plan
from lora_core.families.sd.builtin import training_noise_scheduler
from lora_core.families.sd.unet_layout import (
    diffusers_to_original,
    original_to_diffusers,
    state_dict_to_diffusers,
    state_dict_to_original,
)
from lora_core.families.sdxl import FAMILY as SDXL
from lora_core.families.sdxl import size_embedding
from lora_core.models.builtin import ensure_builtin
from lora_core.models.bundle import ModelBundle, TextConditioning
from lora_core.network.blocks import SDXL_BLOCKS, block_index, block_lr_weights
from lora_core.network.build import build_network
from lora_core.network.naming import text_encoder_targets, unet_targets
from lora_core.profile import NetworkSection
from lora_core.training.conditioning import LiveTextEncoder, build_cached_text_encoder
from lora_core.training.sample_prompts import SamplePrompt
from lora_core.training.sampling import generate_samples
from tests.core.dataset_helpers import profile_for
from tests.helpers.tiny_models import with_text

CONFIGS = Path(__file__).resolve().parents[2] / "lora_core" / "families" / "sd" / "configs"
CPU = torch.device("cpu")
TE_LAYERS = 2  # both tiny-sdxl text encoders


def config(family: str, part: str) -> dict:
    return json.loads((CONFIGS / family / f"{part}.json").read_text("utf-8"))


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    """tiny-sdxl loaded by hand (the model loader's SDXL support lives elsewhere)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = ensure_builtin("tiny-sdxl")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    return ModelBundle(
        "sdxl", UNet2DConditionModel.from_pretrained(folder, subfolder="unet"), vae,
        [CLIPTextModel.from_pretrained(folder / "text_encoder"),
         CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2")],
        [CLIPTokenizer.from_pretrained(folder / name, model_max_length=77)
         for name in ("tokenizer", "tokenizer_2")],
        training_noise_scheduler(), float(vae.config.scaling_factor), "tiny-sdxl")


@pytest.fixture(scope="module")
def meta_sdxl():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config("sdxl", "unet"))
        te1 = CLIPTextModel(CLIPTextConfig(**config("sdxl", "text_encoder")))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**config("sdxl", "text_encoder_2")))
    return unet, te1, te2


# ---------------------------------------------------------------------------------------
# U-Net layout


@pytest.mark.parametrize(("diffusers", "original"), [
    ("down_blocks.1.attentions.0.proj_in", "input_blocks.4.1.proj_in"),
    ("down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2",
     "input_blocks.8.1.transformer_blocks.9.ff.net.2"),
    ("mid_block.attentions.0.proj_out", "middle_block.1.proj_out"),
    ("mid_block.resnets.1.conv1", "middle_block.2.in_layers.2"),
    ("up_blocks.0.attentions.2.proj_in", "output_blocks.2.1.proj_in"),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
    ("down_blocks.0.resnets.0.conv1.weight", "input_blocks.1.0.in_layers.2.weight"),
    ("down_blocks.0.resnets.1.time_emb_proj", "input_blocks.2.0.emb_layers.1"),
    ("up_blocks.2.resnets.2.conv2", "output_blocks.8.0.out_layers.3"),
    ("down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection"),
    ("add_embedding.linear_2.bias", "label_emb.0.2.bias"),
    ("time_embedding.linear_1.weight", "time_embed.0.weight"),
    ("conv_out.weight", "out.2.weight"),
])
def test_sdxl_paths_map_both_ways(diffusers, original):
    cfg = config("sdxl", "unet")
    assert diffusers_to_original(diffusers, cfg) == original
    assert original_to_diffusers(original, cfg) == diffusers


def test_sd1_upsampler_after_a_block_without_attention_is_sub_module_1():
    cfg = config("sd1", "unet")
    assert diffusers_to_original("up_blocks.0.upsamplers.0.conv", cfg) == "output_blocks.2.1.conv"
    assert diffusers_to_original("up_blocks.1.attentions.2.proj_in", cfg) == \
        "output_blocks.5.1.proj_in"
    assert diffusers_to_original("down_blocks.2.downsamplers.0.conv", cfg) == \
        "input_blocks.9.0.op"


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_every_unet_key_round_trips(family, meta_sdxl):
    from diffusers import UNet2DConditionModel

    cfg = config(family, "unet")
    if family == "sdxl":
        unet = meta_sdxl[0]
    else:
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(cfg)
    keys = dict.fromkeys(unet.state_dict())
    original = state_dict_to_original(keys, cfg)
    assert len(original) == len(keys)  # no two keys collapse
    assert all(not k.startswith(("down_blocks", "up_blocks", "mid_block")) for k in original)
    assert list(state_dict_to_diffusers(original, cfg)) == list(keys)


# ---------------------------------------------------------------------------------------
# LoRA names and counts


def test_full_size_sdxl_module_counts_and_names(meta_sdxl):
    unet, te1, te2 = meta_sdxl
    plain, with_conv = unet_targets(unet, False, SDXL.naming), unet_targets(unet, True, SDXL.naming)
    te_names = [t.lora_name for t in text_encoder_targets(te1, "lora_te1")
                + text_encoder_targets(te2, "lora_te2")]
    assert (len(plain), len(with_conv), len(te_names)) == (722, 788, 264)
    names = {t.lora_name for t in with_conv}
    for expected in ("lora_unet_input_blocks_4_1_proj_in",
                     "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                     "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2",
                     "lora_unet_output_blocks_5_1_proj_out",
                     "lora_unet_input_blocks_1_0_in_layers_2",
                     "lora_unet_input_blocks_1_0_emb_layers_1",
                     "lora_unet_input_blocks_1_0_out_layers_3",
                     "lora_unet_input_blocks_4_0_skip_connection",
                     "lora_unet_input_blocks_3_0_op", "lora_unet_output_blocks_2_2_conv"):
        assert expected in names
    assert not any("down_blocks" in n or "up_blocks" in n for n in names)
    # Transformers live in input_blocks 4, 5, 7, 8; middle_block 1; output_blocks 0-5.
    blocks = {n.split("_transformer")[0] for n in names if "_transformer_blocks_" in n}
    assert blocks == {f"lora_unet_input_blocks_{i}_1" for i in (4, 5, 7, 8)} | {
        "lora_unet_middle_block_1"} | {f"lora_unet_output_blocks_{i}_1" for i in range(6)}
    assert te_names[0] == "lora_te1_text_model_encoder_layers_0_self_attn_k_proj"
    assert "lora_te2_text_model_encoder_layers_31_mlp_fc2" in te_names


def test_sdxl_block_slots():
    assert block_index("lora_unet_input_blocks_4_1_proj_in") == 5
    assert block_index("lora_unet_middle_block_1_proj_in") == 11
    assert block_index("lora_unet_output_blocks_2_2_conv") == 15
    assert block_index("lora_unet_down_blocks_1_attentions_0_proj_in") == 4  # SD1 unchanged
    weights = block_lr_weights("zeros", "0.5,0.5,0.5", "", 0.0, SDXL_BLOCKS)
    assert len(weights) == 23
    assert weights == [1.0] + [0.0] * 9 + [0.5] * 3 + [1.0] * 9 + [1.0]


def test_sdxl_block_lr_weight_zero_removes_the_input_blocks(bundle):
    net = NetworkSection(network_dim=2, network_alpha=1.0, network_train_unet_only=True)
    weights = block_lr_weights("zeros", "", "", 0.0, SDXL_BLOCKS)
    network = build_network(bundle.unet, bundle.text_encoders, net, weights, naming=SDXL.naming,
                            layout=SDXL.block_layout())
    names = list(network.unet_names)
    assert names and not any(n.startswith("lora_unet_input_blocks") for n in names)
    assert any(n.startswith("lora_unet_input_blocks") for n in network.skipped_names)


# ---------------------------------------------------------------------------------------
# Text conditioning


def test_encode_concatenates_penultimate_states_and_pools_te2(bundle):
    family = bundle.impl
    captions = ["a photo of a cat", "red hair, smile"]
    ids = family.tokenize(bundle, captions)
    assert ids[1][0, -1] == 0  # TE2 pads with "!" (id 0), TE1 with EOS
    assert ids[0][0, -1] == bundle.tokenizers[0].eos_token_id
    with torch.no_grad():
        cond = family.encode(with_text(bundle, clip_skip=None), ids)
        te1, te2 = bundle.text_encoders
        out2 = te2(ids[1], output_hidden_states=True)
        expected = torch.cat([te1(ids[0], output_hidden_states=True).hidden_states[-2],
                              out2.hidden_states[-2]], dim=-1)
    assert cond.hidden.shape == (2, 77, 32 + 48)
    torch.testing.assert_close(cond.hidden, expected)
    # transformers' own pooling (first EOS, projected) agrees with ours
    torch.testing.assert_close(cond.pooled, out2.text_embeds)
    assert not torch.allclose(cond.pooled[0], cond.pooled[1])


def test_long_prompts_use_the_first_windows_pool_and_ignore_clip_skip(bundle, caplog):
    family = bundle.impl
    captions = ["a photo of a cat"]
    with torch.no_grad():
        short = family.encode(bundle, family.tokenize(bundle, captions))
        reading = with_text(bundle, max_token_length=150)
        long = family.encode(reading, family.tokenize(reading, captions))
        with caplog.at_level(logging.WARNING):
            skipped = family.encode(with_text(bundle, clip_skip=2),
                                    family.tokenize(bundle, captions))
    assert long.hidden.shape == (1, 152, 80)
    torch.testing.assert_close(long.pooled, short.pooled)
    torch.testing.assert_close(long.hidden[:, :76], short.hidden[:, :76])
    torch.testing.assert_close(skipped.hidden, short.hidden)
    assert "clip_skip 2 is ignored" in caplog.text


def test_size_embedding_is_what_the_unet_computes(bundle):
    from diffusers.models.embeddings import Timesteps

    time_ids = torch.tensor([[1024.0, 768.0, 8.0, 0.0, 896.0, 1152.0]])
    diffusers_256 = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(size_embedding(time_ids),
                               diffusers_256(time_ids.flatten()).reshape(1, -1))
    dim = bundle.unet.config.addition_time_embed_dim
    torch.testing.assert_close(size_embedding(time_ids, dim),
                               bundle.unet.add_time_proj(time_ids.flatten()).reshape(1, -1))
    # cos half first: x = 0 gives [1…1, 0…0]
    zero = size_embedding(torch.zeros(1, 1), 8)
    assert zero.tolist() == [[1.0] * 4 + [0.0] * 4]


def test_size_conditioning_of_a_cropped_flipped_sample():
    # 501x500 into a 576x448 bucket: fitted inside, the image is 448.896 wide, so
    # left = (576 - 448.896) // 2 = 63, right = 511.896; mirrored left = 576 - 511.896.
    assert size_conditioning((501, 500), (576, 448), False) == ((500, 501), (0, 63),
                                                                 (448, 576))
    assert size_conditioning((501, 500), (576, 448), True) == ((500, 501), (0, 64),
                                                               (448, 576))
    # taller than the bucket: crop from the top
    assert size_conditioning((1000, 750), (576, 448), False)[1] == (8, 0)


def _dataset(root: Path, sizes: list[tuple[int, int]], captions: list[str]) -> Path:
    folder = root / "train" / "1_thing"
    folder.mkdir(parents=True)
    for i, (size, caption) in enumerate(zip(sizes, captions, strict=True)):
        Image.new("RGB", size, (40 * i, 90, 200)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(caption, encoding="utf-8")
    return root / "train"


def test_loader_batches_carry_the_size_conditioning(tmp_path):
    train = _dataset(tmp_path, [(96, 64), (64, 96)], ["a cat", "a dog"])
    profile = profile_for(train, resolution=64, min_bucket_reso=32, max_bucket_reso=128,
                          bucket_reso_steps=32, train_batch_size=1, flip_aug=True)
    plan = make_plan(profile, scan_profile(profile))
    batches = [[i] for i in range(len(plan.items))]
    loaded = EpochBatches(plan, batches, seed=3, epoch=0, first_position=0)
    for index, (item_index,) in enumerate(batches):
        batch = loaded[index]
        item = plan.items[item_index]
        original, crop, target = size_conditioning((item.record.width, item.record.height),
                                                   item.bucket_reso, batch["flipped"][0])
        assert batch["original_size"].tolist() == [[item.record.height, item.record.width]]
        assert batch["original_size"].tolist() == [list(original)]
        assert batch["crop_top_left"].tolist() == [list(crop)]
        assert batch["target_size"].tolist() == [[item.bucket_reso[1], item.bucket_reso[0]]]
        assert target == tuple(batch["pixel_values"].shape[-2:])


# ---------------------------------------------------------------------------------------
# Training, caching, previews


def test_training_steps_with_added_conditioning_and_sai_named_lora(bundle):
    net = NetworkSection(network_module="LoCon", network_dim=4, network_alpha=2.0, conv_dim=2,
                         conv_alpha=1.0)
    network = build_network(bundle.unet, bundle.text_encoders, net, naming=SDXL.naming,
                            layout=SDXL.block_layout())
    names = list(network.unet_names)
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
    assert "lora_unet_output_blocks_2_2_conv" in names
    te_names = list(network.text_encoder_names)
    assert {n.split("_text_model_")[0] for n in te_names} == {"lora_te1", "lora_te2"}
    network.apply_to()
    try:
        optimizer = torch.optim.SGD(network.parameters(), lr=1.0)
        family, scheduler = bundle.impl, bundle.noise_scheduler
        batch = {"captions": ["a cat", "a dog"],
                 "original_size": torch.tensor([[100, 150], [64, 64]]),
                 "crop_top_left": torch.tensor([[0, 12], [0, 0]]),
                 "target_size": torch.tensor([[64, 96], [64, 64]])}
        latents = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(0))
        before = {k: v.clone() for k, v in network.state_dict().items()}
        for step in range(2):
            text = LiveTextEncoder(bundle, CPU).conditioning(batch, True)
            extra = family.unet_extra_conditioning(bundle, batch=batch, text=text,
                                                   device=CPU, dtype=torch.float32)
            noise = torch.randn_like(latents)
            timesteps = torch.tensor([100, 800])
            noisy = scheduler.add_noise(latents, noise, timesteps)
            pred = bundle.unet(noisy, timesteps, text.hidden, **extra).sample
            loss = torch.nn.functional.mse_loss(pred, noise)
            assert torch.isfinite(loss)
            optimizer.zero_grad()
            loss.backward()
            if step == 0:
                # TE1's last layer feeds nothing (its penultimate states are used, and
                # the pool comes from TE2), as in sd-scripts; every other module learns.
                last = f"lora_te1_text_model_encoder_layers_{TE_LAYERS - 1}_"
                ups = {n: p for n, p in network.named_parameters() if "lora_up" in n}
                no_grad = sorted(n for n, p in ups.items() if p.grad is None)
                assert no_grad and all(n.startswith(last) for n in no_grad)
                assert all(float(p.grad.abs().sum()) > 0 for n, p in ups.items()
                           if p.grad is not None)
            optimizer.step()
        changed = [k for k, v in network.state_dict().items() if not torch.equal(v, before[k])]
        assert any("input_blocks_4_1" in k for k in changed)
        assert any(k.startswith("lora_te2_") for k in changed)
        # the size conditioning reaches the U-Net: other time_ids, other prediction
        with torch.no_grad():
            moved = dict(batch, crop_top_left=torch.tensor([[40, 0], [0, 0]]))
            a = bundle.unet(noisy, timesteps, text.hidden, **extra).sample
            b = bundle.unet(noisy, timesteps, text.hidden, **family.unet_extra_conditioning(
                bundle, batch=moved, text=text)).sample
        assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1], atol=1e-6)
    finally:
        network.remove()


def test_text_encoder_cache_keeps_the_pooled_output(tmp_path, bundle):
    train = _dataset(tmp_path, [(64, 64), (64, 64)], ["a red cat", "a blue dog"])
    profile = profile_for(train, resolution=64, min_bucket_reso=64, max_bucket_reso=64,
                          train_batch_size=2)
    plan = make_plan(profile, scan_profile(profile))
    cached = build_cached_text_encoder(plan, bundle, CPU, batch_size=1)
    batch = {"captions": ["a blue dog", "a red cat", "a blue dog"]}
    got = cached.conditioning(batch, False)
    with torch.no_grad():
        live = LiveTextEncoder(bundle, CPU).conditioning(batch, False)
    assert isinstance(got, TextConditioning) and got.pooled is not None
    assert got.pooled.shape == (3, 32)
    torch.testing.assert_close(got.pooled, live.pooled)
    torch.testing.assert_close(got.hidden, live.hidden)
    torch.testing.assert_close(cached.hidden_states(batch, False), live.hidden)


def test_sdxl_preview_writes_a_png(tmp_path, bundle):
    events = []
    prompts = [SamplePrompt("a red cat", "blurry", 64, 96, 5, 2, 5.0, "euler")]
    paths = generate_samples(bundle, prompts, output_dir=tmp_path, output_name="xl", step=3,
                             epoch=None, device="cpu", emit=events.append)
    assert len(paths) == 1 and paths[0].is_file() and len(events) == 1
    with Image.open(paths[0]) as image:
        assert image.format == "PNG" and image.size == (64, 96)
