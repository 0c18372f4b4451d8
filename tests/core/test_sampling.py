"""Preview images on the built-in tiny model: files, names, sizes and events; seeds; the
conditioning the pipeline really uses (clip_skip, negative prompt, the LoRA); and that
training state (RNGs, modes, requires_grad) is untouched. 64 px, 2 denoising steps."""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lora_core.cli import LogToEvents
from lora_core.events import EventBus, PhaseChanged, SampleSaved, WarningIssued
from lora_core.families.sd.loading import load_model
from lora_core.network.lora import LoRANetwork, NetworkShape
from lora_core.profile import SampleSection
from lora_core.training.sample_prompts import SamplePrompt
from lora_core.training.sampling import (
    Previews,
    generate_samples,
    make_sampler_scheduler,
    sample_now,
)
from tests.helpers.tiny_models import with_text


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny model's ops are far too small to share out: on a busy 2-core machine two
    intra-op threads spend their time waiting for each other (about 5x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bundle():
    return load_model("builtin:tiny-sd1", Path("."), torch.float32)


def generate(bundle, prompts, out: Path, *, step=7, epoch=None, clip_skip=1, **kwargs):
    events = []
    paths = generate_samples(with_text(bundle, clip_skip=clip_skip), prompts, output_dir=out,
                             output_name="cube", step=step, epoch=epoch, device="cpu",
                             emit=events.append, **kwargs)
    return paths, events


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_two_samplers_write_named_pngs_and_leave_training_state_alone(bundle, tmp_path):
    prompts = [SamplePrompt("a red cube", "blurry", 64, 64, 5, 2, 7.5, "ddim"),
               SamplePrompt("a blue cube", None, 72, 64, None, 2, 3.0, "euler_a")]
    network = LoRANetwork(bundle.unet, bundle.text_encoders, NetworkShape(rank=2, alpha=1))
    network.apply_to()
    bundle.unet.train()  # as with gradient checkpointing
    bundle.text_encoders[0].eval()
    bundle.vae.eval()
    for model in (bundle.unet, bundle.vae, *bundle.text_encoders):
        model.requires_grad_(False)  # frozen, as the trainer leaves them
    trained = next(iter(bundle.text_encoders[0].parameters()))
    trained.requires_grad_(True)
    torch.manual_seed(123)
    random.seed(4)
    np.random.seed(5)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    modes = [m.training for model in (bundle.unet, bundle.vae, network) for m in model.modules()]
    try:
        paths, events = generate(bundle, prompts, tmp_path, extra_modules=[network])
        after = (torch.get_rng_state(), random.getstate(), np.random.get_state())
        assert torch.equal(before[0], after[0])
        assert before[1] == after[1]
        assert all(np.array_equal(a, b) for a, b in zip(before[2], after[2], strict=True))
        assert [m.training for model in (bundle.unet, bundle.vae, network)
                for m in model.modules()] == modes
        assert bundle.unet.training and not bundle.vae.training and network.training
        assert trained.requires_grad
        assert not any(p.requires_grad for p in bundle.unet.parameters())
        assert torch.is_grad_enabled()
    finally:
        network.remove()
        bundle.unet.eval()
        trained.requires_grad_(False)

    assert [p.parent for p in paths] == [tmp_path / "sample"] * 2
    assert re.fullmatch(r"cube_000007_00_\d{14}_5\.png", paths[0].name)
    assert re.fullmatch(r"cube_000007_01_\d{14}\.png", paths[1].name)  # random seed: no suffix
    with Image.open(paths[0]) as first, Image.open(paths[1]) as second:
        assert (first.format, first.size, second.size) == ("PNG", (64, 64), (72, 64))
    assert [(e.path, e.step, e.epoch, e.prompt_index, e.prompt) for e in events] == [
        (str(paths[0]), 7, None, 0, "a red cube"), (str(paths[1]), 7, None, 1, "a blue cube")]
    assert all(isinstance(e, SampleSaved) for e in events)
    assert not list((tmp_path / "sample").glob(".*.tmp"))  # atomic writes left nothing behind


def test_a_fixed_seed_repeats_and_another_seed_differs(bundle, tmp_path):
    def image(seed: int, folder: str):
        prompt = SamplePrompt("a cube", None, 64, 64, seed, 2, 1.0, "dpmsolver++")
        (path,), _ = generate(bundle, [prompt], tmp_path / folder)
        return pixels(path)

    first, again, other = image(11, "a"), image(11, "b"), image(12, "c")
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_epoch_samples_are_named_by_epoch(bundle, tmp_path):
    prompt = SamplePrompt("a cube", None, 64, 64, 3, 2, 1.0, "euler")
    (path,), (event,) = generate(bundle, [prompt], tmp_path, step=40, epoch=2)
    assert re.fullmatch(r"cube_e000002_00_\d{14}_3\.png", path.name)
    assert (event.step, event.epoch) == (40, 2)


def test_unet_gets_the_family_embeddings_with_clip_skip_for_both_prompts(bundle, tmp_path):
    """sd-scripts' clip_skip k: hidden_states[-k] + final LayerNorm, for the prompt and the
    negative prompt alike (diffusers' own clip_skip skips the negative prompt)."""
    seen = []
    hook = bundle.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()),
        with_kwargs=True)
    try:
        prompt = SamplePrompt("a green cube", "dark", 64, 64, 1, 2, 7.5, "ddim")
        generate(bundle, [prompt], tmp_path, clip_skip=2)
    finally:
        hook.remove()
    family = bundle.impl
    with torch.no_grad():
        def embed(text: str, skip: int) -> torch.Tensor:
            return family.encode_text(with_text(bundle, clip_skip=skip),
                                      family.tokenize(bundle, [text]))

        expected = torch.cat([embed("dark", 2), embed("a green cube", 2)])
        last_layer = torch.cat([embed("dark", 1), embed("a green cube", 1)])
    assert len(seen) == 2  # one U-Net call per step, negative and positive batched (CFG)
    assert all(torch.allclose(hidden, expected, atol=1e-6) for hidden in seen)
    assert not torch.allclose(seen[0], last_layer, atol=1e-3)


def test_samples_show_the_lora(bundle, tmp_path):
    prompt = SamplePrompt("a cube", None, 64, 64, 9, 2, 1.0, "ddim")
    (plain,), _ = generate(bundle, [prompt], tmp_path / "plain")
    network = LoRANetwork(bundle.unet, bundle.text_encoders, NetworkShape(rank=2, alpha=2))
    with torch.no_grad():
        for module in network.lora_modules():
            torch.nn.init.normal_(module.lora_up.weight, std=0.5)
    network.apply_to()
    try:
        (patched,), _ = generate(bundle, [prompt], tmp_path / "lora")
    finally:
        network.remove()
    assert not np.array_equal(pixels(plain), pixels(patched))


def test_sampler_schedulers_follow_sd_scripts(bundle):
    config = dict(bundle.noise_scheduler.config, beta_end=0.02)
    ddim = make_sampler_scheduler("ddim", dict(config, prediction_type="v_prediction"))
    assert type(ddim).__name__ == "DDIMScheduler"
    assert (ddim.config.prediction_type, ddim.config.clip_sample) == ("v_prediction", True)
    assert (ddim.config.beta_end, ddim.config.steps_offset) == (0.02, 0)
    assert make_sampler_scheduler("heun", config).config.clip_sample is True
    assert type(make_sampler_scheduler("k_euler_a", config)).__name__ == \
        "EulerAncestralDiscreteScheduler"
    plus = make_sampler_scheduler("dpmsolver++", config)
    assert (type(plus).__name__, plus.config.algorithm_type, plus.config.prediction_type) == (
        "DPMSolverMultistepScheduler", "dpmsolver++", "epsilon")
    assert make_sampler_scheduler("dpmsolver", config).config.algorithm_type == "dpmsolver"
    assert type(make_sampler_scheduler("k_dpm_2_a", config)).__name__ == \
        "KDPM2AncestralDiscreteScheduler"


def test_previews_follow_the_schedule_and_reread_the_prompt_file(bundle, tmp_path):
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("a cube --w 64 --h 64 --s 2 --d 1\n", encoding="utf-8")
    events, bridge = [], LogToEvents(EventBus([]))
    bridge.bus.add(events.append)
    logging.getLogger("lora_core").addHandler(bridge)
    previews = Previews(SampleSection(sample_prompts=str(prompt_file), sample_every_n_steps=2,
                                      sample_at_first=True, sample_sampler="euler"),
                        prompt_file, bundle, output_dir=tmp_path, output_name="cube",
                        device="cpu", emit=events.append)
    try:
        (first,) = previews.at_start()
        assert previews.after_step(3) == [] and previews.after_epoch(1, 3) == []
        prompt_file.write_text("a cube --w 64 --h 64 --s 2 --d 1 --x\n", encoding="utf-8")
        assert previews.after_step(4) == []  # broken mid-run: a warning, training goes on
        prompt_file.write_text("a --w 64 --h 64 --s 2\nb --w 64 --h 64 --s 2\n", "utf-8")
        step6 = previews.after_step(6)
    finally:
        logging.getLogger("lora_core").removeHandler(bridge)
    # sd-scripts passes epoch 0 for sample_at_first, so those files are e000000
    assert re.fullmatch(r"cube_e000000_00_\d{14}_1\.png", first.name)
    assert [p.name[:14] for p in step6] == ["cube_000006_00", "cube_000006_01"]
    warnings = [e for e in events if isinstance(e, WarningIssued)]
    assert len(warnings) == 1 and "step 4" in warnings[0].message
    assert "--x" in warnings[0].message and str(prompt_file) in warnings[0].message
    assert [(e.step, e.prompt_index) for e in events if isinstance(e, SampleSaved)] == [
        (0, 0), (6, 0), (6, 1)]
    assert [e.phase for e in events if isinstance(e, PhaseChanged)] == [
        f"making sample images at step {s}" for s in (0, 4, 6)]


def test_sample_now_warns_about_a_missing_file(bundle, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lora_core"):
        paths = sample_now(tmp_path / "gone.txt", "ddim", bundle, output_dir=tmp_path,
                           output_name="cube", step=3, epoch=None, device="cpu",
                           emit=lambda e: None)
    assert paths == [] and "gone.txt does not exist" in caplog.text
    assert not (tmp_path / "sample").exists()
