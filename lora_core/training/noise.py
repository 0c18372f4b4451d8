"""The noise a training step adds, the timesteps it adds it at, and the noise schedule fix.

Forward diffusion (Ho et al. 2020, DDPM): ``x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε`` with
``ε ~ N(0, I)`` and ``t`` drawn uniformly. This module draws ``t`` and ``ε`` with the
modifications sd-scripts offers (kohya-compat.md §5.1-5.2), in sd-scripts' order:

1. ``ε = randn_like(latents)``;
2. offset noise (``noise_offset``, optionally random strength and adaptive scale);
3. multi-resolution (pyramid) noise on top of that, then renormalised to unit std.

The same ``ε`` is the ε-prediction target and, unless input perturbation is on
(:func:`input_noise`), what ``add_noise`` mixes in. It also rescales a DDPM schedule to
zero terminal SNR. Pure torch: no accelerate, no file I/O, no profile reading beyond the
:class:`TrainingSection` fields it is handed.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from lora_core.profile import TrainingSection


def sample_timesteps(batch_size: int, min_timestep: int, max_timestep: int,
                     device: torch.device | str, generator: torch.Generator | None = None,
                     ) -> torch.LongTensor:
    """One timestep per sample, ``t ~ U{min_timestep, …, max_timestep − 1}``.

    The upper bound is exclusive, as ``torch.randint`` and sd-scripts' ``get_timesteps``;
    when ``min_timestep == max_timestep`` every sample gets that one timestep (kohya-compat.md
    §5.1). Drawn on the generator's device (the CPU by default, like sd-scripts) and then
    moved, so a seed gives the same timesteps on any accelerator.
    """
    if min_timestep < max_timestep:
        where = generator.device if generator is not None else "cpu"
        timesteps = torch.randint(min_timestep, max_timestep, (batch_size,),
                                  generator=generator, device=where)
    else:
        timesteps = torch.full((batch_size,), max_timestep)
    return timesteps.long().to(device)


def make_noise(latents: torch.Tensor, training: TrainingSection,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The noise ε for one batch of latents ``(B, C, H, W)``, with the profile's modifications.

    Plain Gaussian noise unless ``noise_offset`` (see :func:`add_offset_noise`) and/or
    ``multires_noise_iterations`` (see :func:`add_pyramid_noise`) are set; a value of 0 means
    off, as in sd-scripts. The offset is added first and the pyramid on top of it.
    """
    noise = _randn(latents.shape, latents, generator)
    if training.noise_offset:
        offset: float | torch.Tensor = training.noise_offset
        if training.noise_offset_random_strength:
            # One U(0,1) draw for the whole batch, as sd-scripts (torch.rand(1) · offset).
            offset = _rand((1,), latents, generator) * training.noise_offset
        noise = add_offset_noise(noise, latents, offset, training.adaptive_noise_scale,
                                 generator)
    if training.multires_noise_iterations:
        noise = add_pyramid_noise(noise, training.multires_noise_iterations,
                                  training.multires_noise_discount, generator)
    return noise


def input_noise(noise: torch.Tensor, training: TrainingSection,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The noise ``add_noise`` mixes into the input: ``ε``, or with ``ip_noise_gamma γ``
    ``ε + γ·n`` with a fresh ``n ~ N(0, I)`` while the target stays ``ε``.

    Ning et al. 2023, "Input Perturbation Reduces Exposure Bias in Diffusion Models": at
    sampling time the model sees its own imperfect predictions, never the exact forward
    process; training on slightly perturbed inputs closes that gap (γ = 0.1 in the paper).
    ``ip_noise_gamma_random_strength``: ``γ·U(0,1)``, one draw per batch, drawn before ``n``
    as sd-scripts' ``get_noise_noisy_latents_and_timesteps``. γ = 0 means off.
    """
    gamma = training.ip_noise_gamma
    if not gamma:
        return noise
    strength: float | torch.Tensor = gamma
    if training.ip_noise_gamma_random_strength:
        strength = _rand((1,), noise, generator) * gamma
    return noise + strength * _randn(noise.shape, noise, generator)


def add_offset_noise(noise: torch.Tensor, latents: torch.Tensor, offset: float | torch.Tensor,
                     adaptive_noise_scale: float | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Offset noise: ``ε + o·n`` with one ``n ~ N(0, 1)`` per sample and channel.

    Guttenberg, "Diffusion with Offset Noise" (crosslabs.org, 2023): noise with zero mean per
    channel never changes an image's mean brightness at high t, so the model cannot learn very
    dark or very bright images; a per-channel constant shift ``n`` lets it.

    With ``adaptive_noise_scale s`` the offset follows each latent's own brightness:
    ``o ← max(0, o + s·|mean_{H,W}(x_0)|)`` per sample and channel (sd-scripts'
    ``apply_noise_offset``; the clamp matters when ``s`` is negative).
    """
    batch, channels = latents.shape[:2]
    if adaptive_noise_scale is not None:
        latent_mean = latents.mean(dim=(2, 3), keepdim=True).abs()
        offset = torch.clamp(offset + adaptive_noise_scale * latent_mean, min=0.0)
    return noise + offset * _randn((batch, channels, 1, 1), latents, generator)


def add_pyramid_noise(noise: torch.Tensor, iterations: int, discount: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Multi-resolution ("pyramid") noise, renormalised to unit standard deviation.

    Whitaker, "Multi-Resolution Noise for Diffusion Model Training" (W&B report, 2023): low-
    frequency noise components are destroyed slowly by i.i.d. noise, so add noise drawn at
    coarser resolutions and upsampled. For ``i = 0 … iterations−1``, with a fresh
    ``r_i ~ U(2, 4)`` each level (not always 2, so levels do not align on a grid)::

        ε ← ε + d^i · upsample_bilinear(randn(B, C, ⌊H / r_i^i⌋, ⌊W / r_i^i⌋))

    (sides at least 1; the loop stops after the level where a side reaches 1). Level 0 is a
    second full-resolution draw. Finally ``ε ← ε / std(ε)`` over the whole batch tensor
    (sd-scripts' ``pyramid_noise_like``).
    """
    batch, channels, height, width = noise.shape
    noise = noise.clone()
    for i in range(iterations):
        # r on the CPU (or the generator's device) in float64: a scalar that sets sizes.
        where = generator.device if generator is not None else "cpu"
        r = 2.0 + 2.0 * torch.rand((), generator=generator, device=where,
                                   dtype=torch.float64).item()
        level_h = max(1, int(height / r**i))
        level_w = max(1, int(width / r**i))
        level = _randn((batch, channels, level_h, level_w), noise, generator)
        noise += F.interpolate(level, size=(height, width), mode="bilinear",
                               align_corners=False) * discount**i
        if level_h == 1 or level_w == 1:
            break  # coarsest possible level reached
    return noise / noise.std()


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas whose schedule ends at pure noise: ``ᾱ_T = 0``, with ``ᾱ_1`` unchanged.

    Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    Algorithm 1: SD's schedule leaves ``√ᾱ_T ≈ 0.068`` of the image in the last timestep, so
    the model never learns to start from pure noise (and cannot make very dark/bright images).
    With ``s_t = √ᾱ_t``::

        s_t ← (s_t − s_T) · s_1 / (s_1 − s_T)        (shift the last to 0, keep the first)
        ᾱ_t = s_t²,  α_t = ᾱ_t / ᾱ_{t−1} (α_1 = ᾱ_1),  β_t = 1 − α_t

    so ``β_T = 1``. Computed in float64 and returned in the betas' dtype.
    """
    alphas_bar_sqrt = torch.cumprod(1.0 - betas.double(), dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (1.0 - alphas).to(betas.dtype)


def apply_zero_terminal_snr(noise_scheduler) -> None:
    """Rescale a DDPM ``noise_scheduler`` in place to zero terminal SNR (Lin et al. 2023).

    Replaces ``betas``, ``alphas`` and ``alphas_cumprod`` together (diffusers'
    ``DDPMScheduler.add_noise`` and ``get_velocity`` read ``alphas_cumprod``; ``step`` reads
    all three), as sd-scripts' ``fix_noise_scheduler_betas_for_zero_terminal_snr`` does. The
    last ``ᾱ`` is then exactly 0: SNR 0 there, which the loss weights must survive (see
    ``loss.LossWeighting``). Meant for v-prediction: at ``ᾱ_T = 0`` the noisy input *is* ε,
    so an ε-prediction target is trivial there.
    """
    device = noise_scheduler.alphas_cumprod.device
    betas = rescale_zero_terminal_snr(noise_scheduler.betas.cpu())
    alphas = 1.0 - betas
    noise_scheduler.betas = betas
    noise_scheduler.alphas = alphas
    noise_scheduler.alphas_cumprod = torch.cumprod(alphas, dim=0).to(device)


def _randn(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``randn`` in ``like``'s dtype on ``like``'s device, drawn from ``generator`` if given
    (on the generator's own device, so a CPU generator can seed noise for a GPU batch)."""
    where = generator.device if generator is not None else like.device
    out = torch.randn(shape, generator=generator, device=where, dtype=like.dtype)
    return out.to(like.device)


def _rand(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    where = generator.device if generator is not None else like.device
    out = torch.rand(shape, generator=generator, device=where, dtype=like.dtype)
    return out.to(like.device)
