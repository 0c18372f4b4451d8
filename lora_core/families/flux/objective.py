"""The Flux training objective: rectified flow (flow matching) as sd-scripts trains it.

With data ``x0``, noise ``ε`` and ``σ`` in [0, 1]  (Esser et al. 2024,
https://arxiv.org/abs/2403.03206; sd-scripts' ``flux_train_utils``):

* noisy input ``x_t = (1 − σ)·x0 + σ·ε``; the model gets ``t = σ`` (timesteps = 1000·σ,
  divided by 1000 before the model);
* target ``ε − x0`` (the velocity from data to noise);
* ``model_prediction_type``: ``raw`` uses the prediction as it is; ``additive`` adds ``x_t``;
  ``sigma_scaled`` turns it into ``x_t − σ·pred`` and weights the loss by
  ``weighting_scheme`` (``sigma_sqrt``: σ⁻², ``cosmap``: 2 / (π(1 − 2σ + 2σ²)), else 1);
* ``timestep_sampling`` draws σ:
  ``uniform``: U(0, 1); ``sigmoid``: sigmoid(s·z); ``shift``: the sigmoid draw shifted by
  ``discrete_flow_shift`` k as k·σ / (1 + (k − 1)·σ); ``flux_shift``: the sigmoid draw shifted
  by the resolution-dependent μ of BFL's schedule, e^μ / (e^μ + 1/σ − 1); ``sigma``: a
  ``weighting_scheme`` density u (logit_normal, mode, else uniform) indexes the 1000-step
  shifted schedule of sd-scripts' FlowMatchEulerDiscreteScheduler (shift
  ``discrete_flow_shift``).

The transforms are pure functions of their random inputs (tested against hand-computed
values); ``draw_sigmas`` draws those inputs in sd-scripts' order. Packing of latents into
tokens lives in ``latents.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lora_core.errors import ProfileError
from lora_core.profile import MODEL_PREDICTION_TYPES, TIMESTEP_SAMPLINGS, WEIGHTING_SCHEMES

NUM_TRAIN_TIMESTEPS = 1000
PREDICTION_TYPES = MODEL_PREDICTION_TYPES
# BFL's schedule: μ grows linearly with the packed image length from 0.5 at 256 tokens to
# 1.15 at 4096 tokens (flux/sampling.py get_lin_function).
BASE_SHIFT, MAX_SHIFT = 0.5, 1.15
BASE_SEQ_LEN, MAX_SEQ_LEN = 256, 4096


@dataclass(frozen=True)
class FlowSettings:
    """sd-scripts' Flux training arguments, under their names and defaults."""

    timestep_sampling: str = "sigma"
    sigmoid_scale: float = 1.0
    discrete_flow_shift: float = 3.0
    model_prediction_type: str = "sigma_scaled"
    weighting_scheme: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    guidance_scale: float = 3.5

    def __post_init__(self) -> None:
        for field, value, choices in (
                ("timestep_sampling", self.timestep_sampling, TIMESTEP_SAMPLINGS),
                ("model_prediction_type", self.model_prediction_type, PREDICTION_TYPES),
                ("weighting_scheme", self.weighting_scheme, WEIGHTING_SCHEMES)):
            if value not in choices:
                raise ProfileError(f"{field}: '{value}' is not one of {', '.join(choices)}",
                                   f"set {field} to one of: {', '.join(choices)}")
        if self.discrete_flow_shift <= 0:
            raise ProfileError(f"discrete_flow_shift: {self.discrete_flow_shift} must be > 0",
                               "sd-scripts' default is 3.0 (its docs use 3.1582 with 'shift')")


def shift_sigmas(sigmas: Tensor, shift: float) -> Tensor:
    """SD3's discrete flow shift: k·σ / (1 + (k − 1)·σ)."""
    return sigmas * shift / (1 + (shift - 1) * sigmas)


def mu_for_length(image_seq_len: int) -> float:
    """BFL's resolution-dependent shift μ for a packed image of this many tokens."""
    slope = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ_LEN - BASE_SEQ_LEN)
    return slope * image_seq_len + (BASE_SHIFT - slope * BASE_SEQ_LEN)


def time_shift(mu: float, sigmas: Tensor, power: float = 1.0) -> Tensor:
    """e^μ / (e^μ + (1/σ − 1)^power) (BFL's ``time_shift``)."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** power)


def schedule_sigmas(shift: float, num_steps: int = NUM_TRAIN_TIMESTEPS) -> Tensor:
    """sd-scripts' FlowMatchEulerDiscreteScheduler sigmas: t = 1000 … 1, σ = shift(t/1000)."""
    t = torch.linspace(1, num_steps, num_steps, dtype=torch.float32).flip(0)
    return shift_sigmas(t / num_steps, shift)


def density_to_sigmas(u: Tensor, shift: float) -> Tensor:
    """``sigma`` sampling: u in [0, 1) picks index ⌊1000·u⌋ of the shifted schedule."""
    indices = (u * NUM_TRAIN_TIMESTEPS).long()
    return schedule_sigmas(shift)[indices]


def sigmas_from_draw(settings: FlowSettings, draw: Tensor, packed_hw: tuple[int, int]
                     ) -> Tensor:
    """σ from the random draw of ``draw_sigmas`` (uniform u, or standard normal z for the
    sigmoid-based samplings, or the density u for ``sigma``)."""
    kind = settings.timestep_sampling
    if kind == "uniform":
        return draw
    if kind == "sigma":
        return density_to_sigmas(draw, settings.discrete_flow_shift)
    sig = torch.sigmoid(settings.sigmoid_scale * draw)
    if kind == "sigmoid":
        return sig
    if kind == "shift":
        return shift_sigmas(sig, settings.discrete_flow_shift)
    return time_shift(mu_for_length(packed_hw[0] * packed_hw[1]), sig)  # flux_shift


def mode_density(u: Tensor, mode_scale: float) -> Tensor:
    """SD3's "mode" density: 1 − u − s·(cos²(πu/2) − 1 + u)."""
    return 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)


def draw_sigmas(settings: FlowSettings, batch_size: int, packed_hw: tuple[int, int],
                generator: torch.Generator | None = None) -> Tensor:
    """Draw one σ per sample (float32, CPU) the way sd-scripts does for each sampling."""
    kind = settings.timestep_sampling
    if kind == "uniform":
        draw = torch.rand(batch_size, generator=generator)
    elif kind in ("sigmoid", "shift", "flux_shift"):
        draw = torch.randn(batch_size, generator=generator)
    elif settings.weighting_scheme == "logit_normal":
        z = torch.randn(batch_size, generator=generator)
        draw = torch.sigmoid(settings.logit_mean + settings.logit_std * z)
    elif settings.weighting_scheme == "mode":
        draw = mode_density(torch.rand(batch_size, generator=generator), settings.mode_scale)
    else:
        draw = torch.rand(batch_size, generator=generator)
    return sigmas_from_draw(settings, draw, packed_hw)


def _expand(sigmas: Tensor, like: Tensor) -> Tensor:
    return sigmas.reshape(-1, *([1] * (like.ndim - 1))).to(like.device, like.dtype)


def noisy_latents(latents: Tensor, noise: Tensor, sigmas: Tensor) -> Tensor:
    """x_t = (1 − σ)·x0 + σ·ε."""
    s = _expand(sigmas, latents)
    return (1 - s) * latents + s * noise


def flow_target(latents: Tensor, noise: Tensor) -> Tensor:
    """The velocity the model learns: ε − x0."""
    return noise - latents


def loss_weighting(weighting_scheme: str, sigmas: Tensor) -> Tensor:
    """Per-sample loss weight used with ``sigma_scaled`` (1 for every other scheme)."""
    if weighting_scheme == "sigma_sqrt":
        return (sigmas ** -2.0).float()
    if weighting_scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas ** 2))
    return torch.ones_like(sigmas)


def apply_prediction_type(settings: FlowSettings, prediction: Tensor, noisy: Tensor,
                          sigmas: Tensor) -> tuple[Tensor, Tensor | None]:
    """The prediction compared with the target, and the loss weighting (None = 1)."""
    kind = settings.model_prediction_type
    if kind == "raw":
        return prediction, None
    if kind == "additive":
        return prediction + noisy, None
    s = _expand(sigmas, prediction)
    return noisy - s * prediction, _expand(loss_weighting(settings.weighting_scheme, sigmas),
                                           prediction)


def guidance_vector(guidance_scale: float, batch_size: int, takes_guidance: bool,
                    device=None) -> Tensor | None:
    """The guidance input of dev and Chroma models (sd-scripts' ``guidance_scale``, the same
    for every sample; ``FluxConfig.takes_guidance``); None for schnell."""
    if not takes_guidance:
        return None
    return torch.full((batch_size,), float(guidance_scale), device=device)


def model_timesteps(sigmas: Tensor) -> Tensor:
    """What the DiT receives as ``timesteps``: (1000·σ)/1000, as sd-scripts passes it."""
    return (sigmas * NUM_TRAIN_TIMESTEPS) / NUM_TRAIN_TIMESTEPS
