"""Preview images: the flow-matching Euler sampler with sd-scripts' schedule.

sd-scripts (``flux_train_utils.get_schedule`` / ``denoise``): ``num_steps + 1`` times from 1
to 0, shifted toward noise by BFL's resolution-dependent μ (``time_shift``, μ from the packed
image length, 0.5 at 256 tokens to 1.15 at 4096); each step ``x += (t_next − t) · v(x, t)``.
The dev model gets the embedded guidance (``--g``, default 3.5); true CFG (``--l`` scale with
a negative prompt) doubles the batch. Image sides are rounded down to multiples of 16, at
least 64 (sd-scripts' rule).

This module makes latents from conditioning; encoding prompts and decoding are the
caller's (``text.py``, ``latents.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lora_core.families.flux.latents import (
    LATENT_CHANNELS,
    PIXELS_PER_TOKEN,
    image_ids,
    unpack_latents,
)
from lora_core.families.flux.objective import mu_for_length, time_shift


def round_size_px(size_px: int) -> int:
    """sd-scripts' preview size rule: a multiple of 16, at least 64."""
    return max(64, size_px - size_px % PIXELS_PER_TOKEN)


def get_schedule(num_steps: int, image_seq_len: int, shift: bool = True) -> list[float]:
    """The ``num_steps + 1`` times (1 … 0) of the Euler sampler."""
    times = torch.linspace(1, 0, num_steps + 1)
    if shift:
        times = time_shift(mu_for_length(image_seq_len), times)
    return times.tolist()


@torch.no_grad()
def sample_latents(flux, *, width_px: int, height_px: int, num_steps: int, t5_states: Tensor,
                   txt_ids: Tensor, pooled: Tensor | None, guidance_scale: float = 3.5,
                   t5_mask: Tensor | None = None, seed: int | None = None,
                   negative: tuple[float, Tensor, Tensor | None, Tensor | None] | None = None,
                   dtype=torch.float32, device="cpu") -> Tensor:
    """Denoise pure noise into (1, 16, H/8, W/8) scaled latents for one prompt.

    ``negative``: (cfg scale, negative T5 states, negative pooled, negative mask) for true CFG
    (sd-scripts' ``--l`` with ``--n``); None for the usual guidance-distilled sampling.
    """
    width_px, height_px = round_size_px(width_px), round_size_px(height_px)
    packed_h, packed_w = height_px // PIXELS_PER_TOKEN, width_px // PIXELS_PER_TOKEN
    generator = torch.Generator(device="cpu")
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    x = torch.randn(1, packed_h * packed_w, LATENT_CHANNELS * 4, generator=generator
                    ).to(device, dtype)
    img_ids = image_ids(1, packed_h, packed_w).to(device, dtype)
    guidance = torch.full((1,), float(guidance_scale), device=device, dtype=dtype) \
        if flux.config.takes_guidance else None
    y = pooled.to(device, dtype) if pooled is not None else torch.zeros(1, 0, device=device)
    txt = t5_states.to(device, dtype)
    times = get_schedule(num_steps, packed_h * packed_w)
    for t_now, t_next in zip(times[:-1], times[1:], strict=True):
        t_vec = torch.full((1,), t_now, device=device, dtype=dtype)
        if negative is None:
            v = flux(x, img_ids, txt, txt_ids.to(device, dtype), t_vec, y, guidance, t5_mask)
        else:
            scale, neg_states, neg_pooled, neg_mask = negative
            neg_y = neg_pooled.to(device, dtype) if neg_pooled is not None else y
            mask = None if t5_mask is None else torch.cat([neg_mask, t5_mask])
            both = flux(torch.cat([x, x]), torch.cat([img_ids, img_ids]),
                        torch.cat([neg_states.to(device, dtype), txt]),
                        torch.cat([txt_ids, txt_ids]).to(device, dtype), t_vec.repeat(2),
                        torch.cat([neg_y, y]), None if guidance is None else guidance.repeat(2),
                        mask)
            v_neg, v_pos = both.chunk(2)
            v = v_neg + scale * (v_pos - v_neg)
        x = x + (t_next - t_now) * v
    return unpack_latents(x.float(), packed_h, packed_w)
