"""Opt-in (``pytest -m slow``): 2 training steps on a full-size SD 1.5-architecture checkpoint.

Proves nothing in the real-size single-file path is tiny-only: the shipped SD 1.5 configs
build a full-size model with random weights, the project's exporter writes it as one A1111
``.safetensors`` file (float16, as released files are), and ``lora-train run`` trains 2 steps
at 256 px on it, finding the (generated) CLIP tokenizer in a private Hugging Face cache. It
prints the wall time and the children's peak RSS. Takes minutes and 6+ GB of memory.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
import torch
from PIL import Image

from lora_core.models.tokenizer_gen import write_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def _full_size_sd15() -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lora_core.models.configs import init_kwargs, load_config

    torch.manual_seed(0)
    return {"unet": UNet2DConditionModel(**init_kwargs(load_config("sd1", "unet"))),
            "vae": AutoencoderKL(**init_kwargs(load_config("sd1", "vae"))),
            "text_encoder": CLIPTextModel(CLIPTextConfig(
                **{k: v for k, v in init_kwargs(load_config("sd1", "text_encoder")).items()
                   if k != "model_type"}))}


@pytest.mark.slow
def test_two_steps_on_full_size_sd15_single_file(tmp_path: Path) -> None:
    from tests.helpers.ldm_export import write_single_file

    checkpoint = tmp_path / "sd15-random.safetensors"
    parts = _full_size_sd15()
    assert sum(p.numel() for p in parts["unet"].parameters()) == 859_520_964
    write_single_file(parts, checkpoint, "sd1", dtype=torch.float16)
    del parts

    hf_home = tmp_path / "hf"
    # The tokenizer, where a user's Hugging Face cache has it (openai/clip-vit-large-patch14).
    commit = "0" * 40
    repo = hf_home / "hub" / "models--openai--clip-vit-large-patch14"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    write_tokenizer(repo / "snapshots" / commit)

    data = tmp_path / "data" / "1_tok thing"
    data.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (256, 256), (60 * i, 90, 160)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text("tok, thing", encoding="utf-8")
    profile = {
        "profile_version": 1,
        "model": {"pretrained_model_name_or_path": str(checkpoint)},
        "dataset": {"train_data_dir": str(tmp_path / "data"), "resolution": 256,
                    "min_bucket_reso": 256, "max_bucket_reso": 256,
                    "max_data_loader_n_workers": 0},
        "network": {"network_dim": 4, "network_alpha": 1.0},
        "optimizer": {"optimizer_type": "AdamW", "learning_rate": 1e-4},
        "training": {"max_train_steps": 2, "train_batch_size": 1, "mixed_precision": "no",
                     "seed": 1},
        "saving": {"output_dir": str(tmp_path / "out"), "output_name": "full"},
    }
    profile_path = tmp_path / "full.toml"
    profile_path.write_text(tomli_w.dumps(profile), encoding="utf-8")

    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "LORA_TUI_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("HF_HUB_CACHE", None)
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "lora_core.cli", "run", str(profile_path)],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=3600)
    seconds = time.time() - started
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # kB on Linux
    print(f"\nfull-size SD1.5 single file, 2 steps at 256 px: {seconds:.0f} s wall, "
          f"peak RSS of the trainer {peak_gib:.2f} GiB, checkpoint "
          f"{checkpoint.stat().st_size / 2**30:.2f} GiB")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "out" / "full.safetensors").is_file()
