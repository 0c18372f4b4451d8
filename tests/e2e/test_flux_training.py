"""Flux.1 and Chroma LoRAs trained end to end on a CPU from the four files a Flux user has.

The expected module names and shapes are computed here from the model files' own tensor
names, by the rule sd-scripts' ``networks/lora_flux.py`` states (every Linear of a double or
single block, CLIP-L's attention and MLP Linears; ``lora_unet_`` / ``lora_te1_`` + the path
with dots as underscores), not by the project's naming code.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.e2e.conftest import (
    kill_9_then_resume,
    run_reference,
    write_profile,
)

FLUX = {"t5xxl_max_token_length": 32}  # short T5 windows keep the tiny runs fast
DIT_LINEAR = re.compile(r"^(double_blocks\.\d+\.(img|txt)_(attn\.qkv|attn\.proj|mlp\.0|mlp\.2|"
                        r"mod\.lin)|single_blocks\.\d+\.(linear1|linear2|modulation\.lin))"
                        r"\.weight$")
CLIP_LINEAR = re.compile(r"^text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|"
                         r"mlp\.fc1|mlp\.fc2)\.weight$")


@pytest.fixture(scope="module")
def tiny_flux() -> Path:
    from lora_core.families.flux.builtin import ensure_tiny_flux

    return ensure_tiny_flux()


def expected_modules(dit: Path, clip_l: Path | None, dim: int) -> dict[str, tuple]:
    """lora name -> (down shape, up shape), from the files' Linear weights."""
    expected = {}
    for path, pattern, prefix in ((dit, DIT_LINEAR, "lora_unet"),
                                  (clip_l, CLIP_LINEAR, "lora_te1")):
        if path is None:
            continue
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():
                if pattern.match(key):
                    out_features, in_features = handle.get_slice(key).get_shape()
                    name = f"{prefix}_{key[:-len('.weight')]}".replace(".", "_")
                    expected[name] = ((dim, in_features), (out_features, dim))
    return expected


def modules_in(lora: Path) -> dict[str, tuple]:
    with safe_open(str(lora), "pt") as handle:
        names = {k.split(".")[0] for k in handle.keys()}
        return {n: (tuple(handle.get_slice(f"{n}.lora_down.weight").get_shape()),
                    tuple(handle.get_slice(f"{n}.lora_up.weight").get_shape()))
                for n in names}


def metadata_of(lora: Path) -> dict[str, str]:
    with safe_open(str(lora), "pt") as handle:
        return handle.metadata()


def other_sized_flux(folder: Path, tiny: Path, depth: int = 1, single: int = 3) -> Path:
    """A dev DiT of other widths and depths than the built-in's (width 96, 3 heads of 32,
    1 double + 3 single blocks, MLP ratio 2), reading the built-in's CLIP (64) and T5 (48)."""
    from lora_core.families.flux.config import FluxConfig, default_axes_dim
    from lora_core.families.flux.model import Flux

    torch.manual_seed(5)
    config = FluxConfig(in_channels=64, vec_in_dim=64, context_in_dim=48, hidden_size=96,
                        mlp_ratio=2.0, num_heads=3, depth=depth, depth_single_blocks=single,
                        axes_dim=default_axes_dim(32), qkv_bias=True, guidance_embed=True)
    model = Flux(config)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "flux-other.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    # sd-scripts' tokenizer_cache_dir layout: <dir>/<repo id with "/" as "_">
    tokens = folder / "tokenizers"
    shutil.copytree(tiny / "tokenizer_clip_l", tokens / "openai_clip-vit-large-patch14")
    shutil.copytree(tiny / "tokenizer_t5xxl", tokens / "google_t5-v1_1-xxl")
    return path


def test_a_flux_of_other_sizes_trains_with_sd_scripts_names_shapes_and_metadata(
        tmp_path, tiny_flux, train_profile):
    from lora_core.families.flux.builtin import AE_FILE, CLIP_L_FILE, T5_FILE

    dit = other_sized_flux(tmp_path / "model", tiny_flux)
    run = train_profile(tmp_path, "other", model={
        "pretrained_model_name_or_path": str(dit),
        "tokenizer_cache_dir": str(tmp_path / "model" / "tokenizers")},
        flux={**FLUX, "ae": str(tiny_flux / AE_FILE), "clip_l": str(tiny_flux / CLIP_L_FILE),
              "t5xxl": str(tiny_flux / T5_FILE), "guidance_scale": 1.0,
              "timestep_sampling": "shift", "model_prediction_type": "raw"})
    expected = expected_modules(dit, tiny_flux / CLIP_L_FILE, 4)
    assert len([n for n in expected if n.startswith("lora_unet_single")]) == 9  # 3 x 3
    assert modules_in(run) == expected
    meta = metadata_of(run)
    assert meta["ss_network_module"] == "networks.lora_flux"
    assert meta["ss_base_model_version"] == "flux1"
    assert meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert (meta["ss_guidance_scale"], meta["ss_timestep_sampling"],
            meta["ss_model_prediction_type"]) == ("1.0", "shift", "raw")
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"


def test_chroma_trains_without_clip_l(tmp_path, tiny_flux, train_profile):
    from lora_core.families.flux.builtin import CHROMA_FILE

    run = train_profile(tmp_path, "chroma", model={
        "pretrained_model_name_or_path": "builtin:tiny-chroma"},
        flux={**FLUX, "apply_t5_attn_mask": True})
    expected = expected_modules(tiny_flux / CHROMA_FILE, None, 4)
    assert modules_in(run) == expected
    assert not any("mod" in n for n in expected)  # Chroma's blocks have no modulation
    meta = metadata_of(run)
    assert (meta["ss_base_model_version"], meta["ss_model_type"],
            meta["modelspec.architecture"], meta["ss_apply_t5_attn_mask"],
            meta["ss_guidance_scale"]) == ("chroma", "chroma", "chroma/lora", "True", "0.0")


T5_LINEAR = re.compile(r"^encoder\.block\.\d+\.layer\.(0\.SelfAttention\.(q|k|v|o)|"
                       r"1\.DenseReluDense\.(wi_0|wi_1|wo))\.weight$")


def test_lora_flux_network_args_shape_the_file(tmp_path, tiny_flux, train_profile):
    """train_blocks=single, a per-type rank, block indices, train_t5xxl and split_qkv in one
    run, given as sd-scripts' network_args: the file has exactly the modules and shapes
    sd-scripts' lora_flux gives (computed here from the files' tensors), linear1 merged with
    a block-diagonal up as its state_dict writes it, T5's LoRA trained, and the args in
    ss_network_args."""
    import json

    from lora_core.families.flux.builtin import CLIP_L_FILE, DIT_FILE, T5_FILE

    args = ["train_blocks=single", "single_dim=2", "train_single_block_indices=1",
            "train_t5xxl=True", "split_qkv=True"]
    run = train_profile(tmp_path, "args", network={"network_args": args})
    # Expected: CLIP-L's and T5's Linears at network_dim 4; of the DiT only single block 1
    # (indices), linear1 / linear2 at single_dim 2 and modulation.lin at 4; linear1 split
    # in q, k, v (hidden each) and the MLP input (the rest), so 4 pieces of rank 2.
    expected = {}
    for path, pattern, prefix in ((tiny_flux / CLIP_L_FILE, CLIP_LINEAR, "lora_te1"),
                                  (tiny_flux / T5_FILE, T5_LINEAR, "lora_te3")):
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():
                if pattern.match(key):
                    out_features, in_features = handle.get_slice(key).get_shape()
                    name = f"{prefix}_{key[:-len('.weight')]}".replace(".", "_")
                    expected[name] = ((4, in_features), (out_features, 4))
    with safe_open(str(tiny_flux / DIT_FILE), "pt") as handle:
        shape = {k: handle.get_slice(k).get_shape() for k in handle.keys()}
    hidden = shape["single_blocks.1.linear2.weight"][0]
    pieces = (hidden,) * 3 + (shape["single_blocks.1.linear1.weight"][0] - 3 * hidden,)
    for part, rank in (("linear1", 2 * len(pieces)), ("linear2", 2), ("modulation.lin", 4)):
        out_features, in_features = shape[f"single_blocks.1.{part}.weight"]
        name = f"lora_unet_single_blocks_1_{part}".replace(".", "_")
        expected[name] = ((rank, in_features), (out_features, rank))
    assert len([n for n in expected if n.startswith("lora_te3")]) == 7 * 2  # 2 T5 blocks
    assert modules_in(run) == expected
    with safe_open(str(run), "pt") as handle:
        up = handle.get_tensor("lora_unet_single_blocks_1_linear1.lora_up.weight")
        t5_up = handle.get_tensor("lora_te3_encoder_block_0_layer_0_SelfAttention_q"
                                  ".lora_up.weight")
    row, diagonal = 0, torch.zeros_like(up, dtype=torch.bool)
    for i, size in enumerate(pieces):
        diagonal[row:row + size, 2 * i:2 * i + 2] = True
        row += size
    assert torch.count_nonzero(up[~diagonal]) == 0  # merged as sd-scripts merges
    assert torch.count_nonzero(up[diagonal]) > 0 and torch.count_nonzero(t5_up) > 0  # trained
    assert json.loads(metadata_of(run)["ss_network_args"]) == {
        "train_blocks": "single", "train_t5xxl": "True", "split_qkv": "True",
        "single_dim": "2", "train_single_block_indices": "1"}


@pytest.fixture
def train_profile(state_dir):
    """Train a 4-step Flux profile in this process; the final LoRA file."""
    from lora_core.events import EventBus, RunFinished
    from lora_core.profile_load import load_profile
    from lora_core.session import run_training, start_run

    def run(root: Path, name: str, images: int = 2, events: list | None = None,
            **sections) -> Path:
        base = {"model": {"pretrained_model_name_or_path": "builtin:tiny-flux"},
                "flux": dict(FLUX), "network": {"network_dropout": None},
                "training": {"train_batch_size": 2, "max_train_epochs": 2},
                "saving": {"save_every_n_steps": None}}
        for section, values in sections.items():
            base[section] = {**base.get(section, {}), **values}
        path = write_profile(root / name, name, images=images, repeats=1, **base)
        profile = load_profile(path)
        seen: list = [] if events is None else events
        run_training(profile, path, start_run(profile, path), EventBus([seen.append]),
                     lambda: False)
        steps = [e for e in seen if type(e).__name__ == "StepEnded"]
        assert len(steps) == 2 and all(torch.isfinite(torch.tensor(e.loss)) for e in steps)
        return Path(next(e for e in seen if isinstance(e, RunFinished)).final_file)

    return run


FLUX_RUN = {"model": {"pretrained_model_name_or_path": "builtin:tiny-flux"}, "flux": FLUX}


@pytest.fixture(scope="module")
def flux_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("flux-resume")


def test_kill_9_then_resume_gives_the_uninterrupted_flux_run(flux_workdir):
    reference = run_reference(flux_workdir, write_profile(flux_workdir, "ref", **FLUX_RUN))
    assert kill_9_then_resume(flux_workdir, reference, **FLUX_RUN) >= 3


def test_every_option_a_flux_run_takes_together(tmp_path, tiny_flux, train_profile):
    """fp8 base, gradient checkpointing, cached latents and text-encoder outputs, validation
    loss and preview samples (the flow-matching sampler, --g and true CFG with --l / --n) in
    one run: it trains, measures, samples and records them."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("tok thing --w 64 --h 64 --s 3 --g 2 --d 1\n"
                       "tok --w 96 --h 64 --s 2 --l 3 --n ugly --d 2\n", encoding="utf-8")
    seen: list = []
    run = train_profile(tmp_path, "all", images=4, events=seen,
                        network={"network_train_unet_only": True},
                        dataset={"cache_latents": True, "cache_text_encoder_outputs": True,
                                 "shuffle_caption": False},
                        training={"fp8_base": True, "gradient_checkpointing": True,
                                  "validation_split": 0.5, "train_batch_size": 1,
                                  "max_train_epochs": 1},
                        sample={"sample_prompts": str(prompts), "sample_every_n_epochs": 1})
    kinds = [type(e).__name__ for e in seen]
    assert kinds.count("ValidationMeasured") == 1
    samples = [Path(e.path) for e in seen if type(e).__name__ == "SampleSaved"]
    assert len(samples) == 2 and all(p.is_file() for p in samples)
    from PIL import Image

    assert [Image.open(p).size for p in samples] == [(64, 64), (96, 64)]
    meta = metadata_of(run)
    assert (meta["ss_fp8_base"], meta["ss_gradient_checkpointing"], meta["ss_cache_latents"],
            meta["ss_validation_split"]) == ("True", "True", "True", "0.5")
    assert not any(n.startswith("lora_te") for n in modules_in(run))


def test_flux_text_encoder_outputs_cached_on_disk_are_reused_and_train_the_same(
        tmp_path, tiny_flux, train_profile):
    """cache_text_encoder_outputs_to_disk for Flux: each caption's T5 states, CLIP-L pool and
    T5 mask in a file (the fingerprint holds T5's token count and mask setting); a second
    run reads them without writing; both train exactly as the cache in memory does."""
    from safetensors import safe_open

    from lora_core.saving import text_cache

    losses = {}
    common = {"network": {"network_train_unet_only": True},
              "dataset": {"cache_text_encoder_outputs": True, "shuffle_caption": False}}
    for name, to_disk in (("memory", False), ("disk", True), ("again", True)):
        seen: list = []
        before = {p: p.stat().st_mtime_ns for p in text_cache.cache_root().rglob("*.safetensors")}
        train_profile(tmp_path, name, events=seen, network=common["network"],
                      dataset={**common["dataset"],
                               "cache_text_encoder_outputs_to_disk": to_disk})
        losses[name] = [e.loss for e in seen if type(e).__name__ == "StepEnded"]
        after = {p: p.stat().st_mtime_ns for p in text_cache.cache_root().rglob("*.safetensors")}
        if name == "again":
            assert after == before  # every caption read from its file, none written
        elif name == "disk":
            written = set(after) - set(before) or set(after)
            with safe_open(str(sorted(written)[0]), "pt") as handle:
                assert set(handle.keys()) == {"hidden_state", "pool", "mask"}
    assert losses["memory"] == losses["disk"] == losses["again"] and losses["memory"]


def test_alpha_masks_weigh_the_flux_loss(tmp_path, tiny_flux, train_profile):
    """Half-transparent images with alpha_mask: the masked half does not count, so every
    step's loss is below the same run's without the mask (same seed, same noise)."""
    from PIL import Image

    losses = {}
    for masked in (False, True):
        data = tmp_path / f"mask-{masked}" / "data" / "1_tok thing"
        data.mkdir(parents=True)
        for i in range(2):
            image = Image.new("RGBA", (64, 64), (40 * i, 90, 160, 255))
            image.paste((200, 10, 10, 0), (0, 0, 32, 64))
            image.save(data / f"{i}.png")
            (data / f"{i}.txt").write_text("tok, thing", encoding="utf-8")
        seen: list = []
        train_profile(tmp_path, f"mask-{masked}", events=seen,
                      dataset={"alpha_mask": masked}, training={"masked_loss": masked})
        losses[masked] = [e.loss for e in seen if type(e).__name__ == "StepEnded"]
    assert all(m < p for m, p in zip(losses[True], losses[False], strict=True)), losses


def test_fp8_base_keeps_the_transformer_linears_in_float8(tiny_flux, tmp_path):
    from lora_core.families.flux.training import load_flux_bundle
    from lora_core.models.fp8 import move_keeping_fp8
    from lora_core.profile_load import load_profile

    path = write_profile(tmp_path, "fp8", **FLUX_RUN, training={"fp8_base": True})
    bundle = load_flux_bundle(load_profile(path), torch.float32)
    linears = [m for m in bundle.unet.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
    move_keeping_fp8(bundle.unet, "cpu", torch.float32)  # what the trainer does
    assert all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
    norms = [p for n, p in bundle.unet.named_parameters() if n.endswith("scale")]
    assert norms and all(p.dtype == torch.float32 for p in norms)


def test_flux_previews_take_20_steps_unless_a_prompt_says(tiny_flux, tmp_path, monkeypatch):
    """sd-scripts' Flux sampler defaults to 20 steps (SD's to 30): a prompt without --s
    samples 20, one with --s its own."""
    from lora_core.families.flux import sampler
    from lora_core.families.flux.training import load_flux_bundle
    from lora_core.profile_load import load_profile
    from lora_core.training.sample_prompts import read_sample_prompts

    bundle = load_flux_bundle(load_profile(write_profile(tmp_path, "steps", **FLUX_RUN)),
                              torch.float32)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("tok --w 64 --h 64\ntok --w 64 --h 64 --s 3\n", encoding="utf-8")
    steps: list[int] = []

    def record(dit, **kwargs):
        steps.append(kwargs["num_steps"])
        return torch.zeros(1, 16, 8, 8)

    monkeypatch.setattr(sampler, "sample_latents", record)
    previews = bundle.impl.preview_sampler(bundle)
    for prompt in read_sample_prompts(prompts, "euler"):
        previews.image(prompt, 1, torch.device("cpu"))
    assert steps == [20, 3]


@pytest.mark.parametrize("lever", [{"blocks_to_swap": 1}, {"cpu_offload_checkpointing": True}])
def test_block_swap_and_offloaded_checkpointing_give_the_same_losses(tmp_path, tiny_flux,
                                                                       train_profile, lever,
                                                                       monkeypatch):
    """On this CPU both levers move weights or saved inputs between "cpu" and "cpu": the
    hooks, evictions and recomputes all run, and the losses and the file equal the plain
    gradient-checkpointed run's (an evicted block used out of turn would fail: its weights
    are an empty tensor). A model of 2 double + 4 single blocks: blocks_to_swap 1 swaps two
    single blocks (sd-scripts' split), leaving two of each kind resident."""
    from safetensors.torch import load_file

    from lora_core.families.flux.builtin import AE_FILE, CLIP_L_FILE, T5_FILE

    dit = other_sized_flux(tmp_path / "model", tiny_flux, depth=2, single=4)
    files = {"ae": str(tiny_flux / AE_FILE), "clip_l": str(tiny_flux / CLIP_L_FILE),
             "t5xxl": str(tiny_flux / T5_FILE)}
    model = {"pretrained_model_name_or_path": str(dit),
             "tokenizer_cache_dir": str(tmp_path / "model" / "tokenizers")}
    from lora_core.families.flux import offload
    from lora_core.models import offloaded_checkpointing  # shared with the SD U-Nets

    calls = {"swapped in": 0, "offloaded": 0}
    bring_in, offloaded = offload.BlockSwapper._bring_in, offloaded_checkpointing.offloaded

    def counted_bring_in(self, i, wait=True):
        calls["swapped in"] += 1
        return bring_in(self, i, wait)

    def counted_offloaded(block):
        calls["offloaded"] += 1
        return offloaded(block)

    monkeypatch.setattr(offload.BlockSwapper, "_bring_in", counted_bring_in)
    monkeypatch.setattr(offloaded_checkpointing, "offloaded", counted_offloaded)
    results = {}
    for name, extra in (("plain", {}), ("lever", lever)):
        seen: list = []
        final = train_profile(tmp_path, name, events=seen, model=model, flux=files,
                              training={"gradient_checkpointing": True, **extra})
        results[name] = ([e.loss for e in seen if type(e).__name__ == "StepEnded"],
                         load_file(str(final)))
    # the lever ran in each of the 2 steps: each of the 2 swapped blocks came in for its
    # forward and for its recompute, or each of the 6 blocks' checkpoints kept its inputs
    # on the CPU
    if "blocks_to_swap" in lever:
        assert calls["swapped in"] >= 2 * 2 * 2, calls
    else:
        assert calls["offloaded"] == 2 * 6, calls
    assert results["lever"][0] == results["plain"][0]
    for key, tensor in results["plain"][1].items():
        assert torch.equal(results["lever"][1][key], tensor), key
