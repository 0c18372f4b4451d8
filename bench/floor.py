"""The eager floor: the least a LoRA training step can cost, written as plainly as possible.

    python bench/floor.py MODEL_DIR DATA_DIR --steps N --events FILE [--device cuda]

It loads the same diffusers folder the engine trains on, encodes every image with the VAE
and every caption with the text encoder once, up front, frees both, injects a rank-4 LoRA and
then runs the textbook DDPM step (Ho et al. 2020, https://arxiv.org/abs/2006.11239):

    t ~ U{0, …, 999},  ε ~ N(0, I),  x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε
    loss = ‖ε_θ(x_t, t, c) − ε‖² (mean),  AdamW step on the LoRA parameters only

with batch 1 in float32 — nothing else: no loader, no scheduler, no clipping, no logging,
no reading the loss back. That is the floor issue 7 measures the engine against.

The LoRA is the engine's own ``lora_core.network.build.build_network`` with the same
``[network]`` values the bench profile sets (LoRA, rank 4, alpha 1, U-Net only), so both
train exactly the same modules and parameter count; everything around it is plain torch,
diffusers and transformers.

It writes the same JSON-lines events as the engine (``phase_changed``, ``step_ended`` with a
unix ``time``) so run_bench.py measures both the same way, plus ``step_seconds``: each step
timed alone with ``time.perf_counter`` (after ``torch.cuda.synchronize`` on a GPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
LORA_RANK = 4
LORA_ALPHA = 1.0
LEARNING_RATE = 1e-4


class Events:
    """Appends engine-shaped events to a JSON-lines file, flushed at once."""

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def emit(self, type_: str, **fields) -> None:
        self._fh.write(json.dumps({"type": type_, "time": time.time(), **fields}) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_dataset(data_dir: Path) -> list[tuple[Path, str]]:
    """(image, caption) pairs of every image under ``data_dir`` (captions from .txt)."""
    pairs = []
    for image in sorted(p for p in data_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        caption_file = image.with_suffix(".txt")
        caption = caption_file.read_text("utf-8").strip() if caption_file.is_file() else ""
        pairs.append((image, caption))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    events = Events(args.events)
    try:
        run(args, events)
    finally:
        events.close()
    return 0


def run(args: argparse.Namespace, events: Events) -> None:
    events.emit("phase_changed", phase="loading model")
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer

    from lora_core.network.build import build_network
    from lora_core.profile import NetworkSection

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    folder = args.model_dir
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", model_max_length=77)
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").to(device).eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae").to(device).eval()
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").to(device).eval()
    noise_scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    for model in (text_encoder, vae, unet):
        model.requires_grad_(False)

    events.emit("phase_changed", phase="caching latents and text")
    pairs = read_dataset(args.data_dir)
    with torch.no_grad():
        pixels = torch.stack([
            torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32))
            .permute(2, 0, 1) / 127.5 - 1.0 for p, _ in pairs])
        latents = torch.cat([vae.encode(chunk.to(device)).latent_dist.sample()
                             for chunk in pixels.split(16)]) * vae.config.scaling_factor
        ids = tokenizer([c for _, c in pairs], padding="max_length", max_length=77,
                        truncation=True, return_tensors="pt").input_ids.to(device)
        hidden = torch.cat([text_encoder(chunk).last_hidden_state for chunk in ids.split(16)])
    del vae, text_encoder  # training needs neither

    network = build_network(unet, [], NetworkSection(network_dim=LORA_RANK,
                                                     network_alpha=LORA_ALPHA,
                                                     network_train_unet_only=True))
    network.to(device)
    network.apply_to()
    params = list(network.parameters())
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE)
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
    num_timesteps = noise_scheduler.config.num_train_timesteps
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    events.emit("phase_changed", phase="training",
                lora_parameters=sum(p.numel() for p in params), lora_modules=len(
                    network.lora_modules()))
    for step in range(1, args.steps + 1):
        started = time.perf_counter()
        i = (step - 1) % len(pairs)
        x0, c = latents[i:i + 1], hidden[i:i + 1]
        noise = torch.randn_like(x0)
        t = torch.randint(0, num_timesteps, (1,), device=device)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(noisy, t, c).sample
        loss = F.mse_loss(pred, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        events.emit("step_ended", step=step, total_steps=args.steps,
                    step_seconds=time.perf_counter() - started)
    events.emit("run_finished", steps=args.steps)


if __name__ == "__main__":
    raise SystemExit(main())
