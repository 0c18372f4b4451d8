"""Shared pieces for end-to-end tests: running the real CLI, tiny datasets, file snapshots."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.toml"


def run_cli(*args: str, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lora_core.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=kwargs.pop("cwd", ROOT),
                          env={**os.environ, **kwargs.pop("env", {})}, **kwargs)


def snapshot(folder: Path) -> dict[str, tuple[str, float]]:
    """Every file under folder with its content hash and mtime, to prove nothing changed."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                         p.stat().st_mtime)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def make_images(folder: Path, count: int, size=(64, 64), caption: str | None = "tok, thing"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, (40 * i % 255, 90, 160)).save(folder / f"{i}.png")
        if caption is not None:
            (folder / f"{i}.txt").write_text(caption, encoding="utf-8")


@pytest.fixture
def tiny_profile(tmp_path):
    """A profile that trains a handful of steps on a two-image dataset: fast CLI tests."""

    def make(name: str = "tiny", epochs: int = 1, repeats: int = 1, **sections) -> Path:
        data_dir = tmp_path / f"data-{name}"
        make_images(data_dir / f"{repeats}_tok thing", 2)
        profile = {
            "profile_version": 1,
            "model": {"pretrained_model_name_or_path": "builtin:tiny-sd1"},
            "dataset": {"train_data_dir": str(data_dir), "resolution": 64,
                        "min_bucket_reso": 64, "max_bucket_reso": 64,
                        "max_data_loader_n_workers": 0},
            "network": {"network_dim": 4, "network_alpha": 2.0},
            "optimizer": {"optimizer_type": "AdamW", "learning_rate": 1e-3,
                          "lr_scheduler": "constant"},
            "training": {"max_train_epochs": epochs, "train_batch_size": 2,
                         "mixed_precision": "no", "seed": 1},
            "saving": {"output_dir": str(tmp_path / "out"), "output_name": name},
        }
        for section, values in sections.items():
            table = profile.setdefault(section, {})
            table.update(values)
            for key in [k for k, v in table.items() if v is None]:
                del table[key]  # None = leave the field unset
        path = tmp_path / f"{name}.toml"
        path.write_text(tomli_w.dumps(profile), encoding="utf-8")
        return path

    return make


def _kohya_module_map(pipe, family: str = "sd1") -> dict:
    from lora_core.network.naming import (
        default_text_encoder_prefixes,
        text_encoder_targets,
        unet_targets,
    )

    modules = {t.lora_name: t.module
               for t in unet_targets(pipe.unet, with_conv=True, family=family)}
    encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e]
    for encoder, prefix in zip(encoders, default_text_encoder_prefixes(family, len(encoders)),
                               strict=True):
        modules.update({t.lora_name: t.module for t in text_encoder_targets(encoder, prefix)})
    return modules


def _expected_delta(down, up, weight_shape):
    import torch

    if down.dim() == 4 and down.shape[2:] != (1, 1):
        delta = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
    else:
        delta = up.flatten(1) @ down.flatten(1)
    return delta.reshape(weight_shape)


def assert_diffusers_applies_every_module(path: Path, folder: Path | None = None,
                                          family: str = "sd1") -> list[str]:
    """Load a LoRA file into a pipeline with diffusers (the tiny SD1 one unless ``folder``
    names another), fuse it, and check that every module in the file changed its weight by
    exactly alpha/dim · up·down, and that the U-Net's output changed. Returns the module
    names found in the file."""
    import torch
    from diffusers import DiffusionPipeline
    from safetensors import safe_open

    from lora_core.models.builtin import ensure_builtin

    pipe = DiffusionPipeline.from_pretrained(
        folder or ensure_builtin("tiny-sd1"), safety_checker=None,
        requires_safety_checker=False, local_files_only=True)
    modules = _kohya_module_map(pipe, family)
    before = {name: m.weight.detach().clone() for name, m in modules.items()}
    torch.manual_seed(0)
    config = pipe.unet.config
    latents, t = torch.randn(1, config.in_channels, 8, 8), torch.tensor([500])
    context = torch.randn(1, 77, config.cross_attention_dim)
    extra = {}
    if family == "sdxl":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(1, pooled),
                                       "time_ids": torch.tensor([[64., 64, 0, 0, 64, 64]])}}
    with torch.no_grad():
        out_before = pipe.unet(latents, t, context, **extra).sample
    with safe_open(str(path), "pt") as fh:
        tensors = {k: fh.get_tensor(k).float() for k in fh.keys()}
    names = sorted({k.split(".")[0] for k in tensors})
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora()  # peft keeps the original modules as base layers and fuses into them
    for name in names:
        assert name in modules, f"{name} is not a module of the pipeline"
        down = tensors[f"{name}.lora_down.weight"]
        up = tensors[f"{name}.lora_up.weight"]
        scale = tensors[f"{name}.alpha"].item() / down.shape[0]
        weight = modules[name].weight
        expected = _expected_delta(down, up, weight.shape)
        delta = weight.detach().float() - before[name].float()
        assert torch.allclose(delta, expected * scale, atol=2e-4, rtol=1e-2), name
        # (a module that never got a gradient keeps lora_up = 0: SDXL's last TE1 layer)
        if expected.abs().max() > 0:
            assert delta.abs().max() > 0, f"{name} was not applied"
    with torch.no_grad():
        out_after = pipe.unet(latents, t, context, **extra).sample
    assert not torch.allclose(out_before, out_after)
    return names
