"""Loss maths: the training target, the per-element loss and the per-timestep weightings.

One training step's loss, in sd-scripts' order (kohya-compat.md §5.1, §5.3)::

    element  = ℓ(pred, target)                      float32, by loss_type (l2/l1/huber/smooth_l1)
    element ← element · mask                        masked loss: mask area-resized to latents
    sample_i = mean_{C,H,W}(element_i) · w_i        w_i: prior_loss_weight for reg images, else 1
    sample_i ← sample_i · λ(t_i)                    min-SNR, v-pred scaling, v-pred-like loss,
                                                    debiased estimation
    loss     = mean_i(sample_i)

Everything that depends only on the timestep (the Huber threshold ``c(t)`` and the weight
``λ(t)``) is tabulated once per run in a :class:`LossWeighting`, so a step costs a gather.
``snr_t = ᾱ_t / (1 − ᾱ_t)``. Pure torch: no accelerate, no devices chosen here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from lora_core.errors import ProfileError
from lora_core.profile import TrainingSection
from lora_core.training.noise import apply_zero_terminal_snr

LOSS_TYPES = ("l2", "l1", "huber", "smooth_l1")
# sd-scripts caps the SNR at 1000 in the v-pred scaling and debiased weights: the SNR of
# small t is huge, and a weight of snr/(snr+1) or 1/√snr there is 1 or 0 for all purposes.
SNR_CAP = 1000.0
# Our own floor for debiased estimation's 1/√snr (ε-prediction) only: on a zero-terminal-SNR
# schedule snr_T = 0 would make the weight infinite. SD's own schedule never goes below
# snr ≈ 0.0047, so the floor changes no value sd-scripts computes.
SNR_FLOOR = 1e-3


def training_target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor, v_parameterization: bool) -> torch.Tensor:
    """What the U-Net is trained to predict.

    ε-prediction (Ho et al. 2020): the noise ``ε`` itself. v-prediction (Salimans & Ho 2022,
    "Progressive Distillation for Fast Sampling of Diffusion Models"; SD 2.x 768-v):
    ``v = √ᾱ_t·ε − √(1−ᾱ_t)·x_0``, from the scheduler's ``get_velocity`` so it uses the same
    (possibly zero-terminal-SNR) ``ᾱ`` as ``add_noise``.
    """
    if v_parameterization:
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    return noise


def all_snr(noise_scheduler) -> torch.Tensor:
    """``snr_t = ᾱ_t / (1 − ᾱ_t)`` for every training timestep, float32 on the CPU.

    Computed in float64 from the scheduler's ``alphas_cumprod``; ``ᾱ_T = 0`` (zero terminal
    SNR) gives ``snr_T = 0``, not NaN.
    """
    alphas_cumprod = noise_scheduler.alphas_cumprod.detach().cpu().double()
    return (alphas_cumprod / (1.0 - alphas_cumprod)).float()


def huber_c(timesteps: torch.Tensor, noise_scheduler, training: TrainingSection) -> torch.Tensor:
    """The Huber threshold ``c`` for each sample's timestep (kohya-compat.md §5.1).

    Khrapov et al. 2024, "Improving Diffusion Models's Data-Corruption Resistance using
    Scheduled Pseudo-Huber Loss": a large ``c`` makes the pseudo-Huber loss behave like L2, a
    small one like L1 (robust to outliers); the schedules make it L2-like where the input is
    nearly clean and more robust where it is noisy. With ``c₀ = huber_c``, ``k = huber_scale``
    and ``T = num_train_timesteps``:

    * ``constant``:    ``c = c₀·k``
    * ``exponential``: ``c = exp(−(−ln c₀ / T)·t)·k``  (from k at t=0 down to c₀·k at t=T)
    * ``snr``:         ``σ_t = √((1−ᾱ_t)/ᾱ_t)``, ``c = (1−c₀)/(1+σ_t)² + c₀``  (no k, as in
      sd-scripts; ᾱ_t = 0 gives σ = ∞ and c = c₀)

    Returns float32 values on ``timesteps``' device.
    """
    c0, scale = training.huber_c, training.huber_scale
    t = timesteps.detach().cpu().long()
    if training.huber_schedule == "constant":
        c = torch.full(t.shape, c0 * scale, dtype=torch.float64)
    elif training.huber_schedule == "exponential":
        rate = -math.log(c0) / noise_scheduler.config.num_train_timesteps
        c = torch.exp(-rate * t.double()) * scale
    elif training.huber_schedule == "snr":
        alphas_cumprod = noise_scheduler.alphas_cumprod.detach().cpu().double()[t]
        sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()
        c = (1.0 - c0) / (1.0 + sigmas) ** 2 + c0
    else:
        raise ProfileError(f"`[training] huber_schedule` = {training.huber_schedule!r} is not "
                           "a Huber schedule", "use constant, exponential or snr")
    return c.float().to(timesteps.device)


def element_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str,
                 huber_c: torch.Tensor | None = None) -> torch.Tensor:
    """The unreduced loss of every element, with ``d = pred − target`` and ``c`` per sample:

    * ``l2``: ``d²``;  ``l1``: ``|d|``
    * ``huber`` (pseudo-Huber): ``2c(√(d² + c²) − c)``  (≈ d² for |d| ≪ c, ≈ 2c|d| beyond)
    * ``smooth_l1``: ``2(√(d² + c²) − c)``  (≈ d²/c for |d| ≪ c, ≈ 2|d| beyond)

    Computed in float32 whatever the inputs' dtype (a 300² error overflows fp16).
    """
    pred, target = pred.float(), target.float()
    if loss_type == "l2":
        return F.mse_loss(pred, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(pred, target, reduction="none")
    if loss_type in ("huber", "smooth_l1"):
        if huber_c is None:
            raise ValueError(f"loss_type {loss_type!r} needs the per-sample huber_c")
        c = huber_c.float().view(-1, *([1] * (pred.dim() - 1)))
        pseudo = torch.sqrt((pred - target) ** 2 + c**2) - c
        return 2 * c * pseudo if loss_type == "huber" else 2 * pseudo
    raise ProfileError(f"`[training] loss_type` = {loss_type!r} is not a loss",
                       f"use one of {', '.join(LOSS_TYPES)}")


def timestep_weights(snr: torch.Tensor, training: TrainingSection,
                     v_parameterization: bool) -> torch.Tensor | None:
    """The product ``λ(t)`` of the per-timestep loss weights the profile asks for, applied
    in sd-scripts' ``post_process_loss`` order, or None when none is on (kohya-compat.md §5.3):

    * ``min_snr_gamma γ`` (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
      Weighting Strategy"): ε-prediction ``min(snr, γ)/snr``; v-prediction
      ``min(snr, γ)/(snr + 1)``. Where snr = 0 (zero terminal SNR) the ε weight takes its
      limit 1 instead of 0/0. γ = 0 means off, as in sd-scripts.
    * ``scale_v_pred_loss_like_noise_pred``: ``snr'/(snr' + 1)`` with ``snr' = min(snr, 1000)``
      (a v-loss is an ε-loss times ``snr + 1``; this brings it back to the ε scale).
    * ``v_pred_like_loss k`` (ε-prediction only): sd-scripts' ``loss + loss / s · k`` with
      ``s = snr'/(snr' + 1)``, i.e. ``× (1 + k·(snr' + 1)/snr')``: a v-prediction loss is an
      ε loss times ``snr + 1`` over ``snr`` of it, so this mixes a share k of that in
      (``snr'`` floored at :data:`SNR_FLOOR` as below).
    * ``debiased_estimation_loss`` (Yu et al. 2024, "Debias the Training of Diffusion
      Models"): ε ``1/√snr'``, v ``1/(snr' + 1)``; for ε ``snr'`` is also floored at
      :data:`SNR_FLOOR` so a zero-terminal-SNR timestep gets a finite weight.
    """
    weights = torch.ones_like(snr, dtype=torch.float64)
    snr = snr.double()
    capped = snr.clamp(max=SNR_CAP)
    on = False
    if training.min_snr_gamma:
        gamma = float(training.min_snr_gamma)
        clipped = snr.clamp(max=gamma)
        if v_parameterization:
            weights *= clipped / (snr + 1.0)
        else:
            weights *= torch.where(snr > 0, clipped / snr, torch.ones_like(snr))
        on = True
    if training.scale_v_pred_loss_like_noise_pred:
        weights *= capped / (capped + 1.0)
        on = True
    if training.v_pred_like_loss:
        floored = capped.clamp(min=SNR_FLOOR)
        weights *= 1.0 + float(training.v_pred_like_loss) * (floored + 1.0) / floored
        on = True
    if training.debiased_estimation_loss:
        if v_parameterization:
            weights *= 1.0 / (capped + 1.0)
        else:
            weights *= 1.0 / capped.clamp(min=SNR_FLOOR).sqrt()
        on = True
    return weights.float() if on else None


@dataclass(frozen=True)
class LossWeighting:
    """Everything the loss needs besides the batch, tabulated per timestep once per run.

    ``huber_c[t]`` is the Huber threshold (None unless loss_type is huber or smooth_l1);
    ``timestep_weight[t]`` is ``λ(t)`` from :func:`timestep_weights` (None when no weighting
    is on). Both live on the training device, so a step gathers ``table[timesteps]``.
    """

    loss_type: str
    huber_c: torch.Tensor | None
    timestep_weight: torch.Tensor | None

    @classmethod
    def build(cls, noise_scheduler, training: TrainingSection, v_parameterization: bool, *,
              snr: torch.Tensor | None = None,
              device: torch.device | str = "cpu") -> LossWeighting:
        """Tabulate from ``noise_scheduler`` (its current ``alphas_cumprod``). ``snr`` overrides
        the SNR table the weights use (see :func:`prepare_schedule_and_loss`)."""
        if training.loss_type not in LOSS_TYPES:
            raise ProfileError(f"`[training] loss_type` = {training.loss_type!r} is not a loss",
                               f"use one of {', '.join(LOSS_TYPES)}")
        num_timesteps = noise_scheduler.config.num_train_timesteps
        table_c = None
        if training.loss_type in ("huber", "smooth_l1"):
            assert training.huber_c > 0, "huber_c <= 0: checks.rules refuses this profile"
            table_c = huber_c(torch.arange(num_timesteps), noise_scheduler, training).to(device)
        snr = all_snr(noise_scheduler) if snr is None else snr
        weight = timestep_weights(snr, training, v_parameterization)
        return cls(training.loss_type, table_c, None if weight is None else weight.to(device))


def prepare_schedule_and_loss(noise_scheduler, training: TrainingSection,
                              v_parameterization: bool,
                              device: torch.device | str = "cpu") -> LossWeighting:
    """Once per run: apply ``zero_terminal_snr`` to ``noise_scheduler`` (in place) if the
    profile asks, and tabulate the loss weighting, in sd-scripts' order.

    sd-scripts computes its SNR table (``prepare_scheduler_for_custom_training``) *before* it
    rescales the betas, so the SNR weights (min-SNR, v-pred scaling, debiased) keep using the
    model's original schedule while ``add_noise``, ``get_velocity`` and the Huber ``snr``
    schedule use the rescaled one. We do the same so a run matches sd-scripts; it also keeps
    ``snr_T = 0`` out of those weights.
    """
    snr = all_snr(noise_scheduler)
    if training.zero_terminal_snr:
        apply_zero_terminal_snr(noise_scheduler)
    return LossWeighting.build(noise_scheduler, training, v_parameterization, snr=snr,
                               device=device)


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor,
                   loss_weights: torch.Tensor, weighting: LossWeighting,
                   masks: torch.Tensor | None = None) -> torch.Tensor:
    """The scalar loss of one batch (the formula in the module docstring).

    ``pred`` / ``target`` are ``(B, C, H, W)``; ``timesteps`` ``(B,)`` integers; ``loss_weights``
    ``(B,)`` per-sample weights. ``masks`` (masked loss): ``(B, 1, h, w)`` in [0, 1] at any
    size, brought to the latents' size by area averaging and multiplied in before the mean
    over C, H, W (sd-scripts' ``apply_masked_loss``: the mean still divides by every
    element, so an all-ones mask gives exactly the unmasked loss). Returns a float32 scalar.
    """
    c = None
    if weighting.huber_c is not None:
        c = _gather(weighting.huber_c, timesteps).to(pred.device)
    per_element = element_loss(pred, target, weighting.loss_type, c)
    per_sample = masked_mean(per_element, masks)
    per_sample = per_sample * loss_weights.to(per_sample.device, torch.float32)
    if weighting.timestep_weight is not None:
        per_sample = per_sample * _gather(weighting.timestep_weight, timesteps).to(
            per_sample.device)
    return per_sample.mean()


def masked_mean(per_element: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
    """The per-sample mean over C, H, W of an unreduced loss, with ``masks`` (masked loss,
    ``(B, 1, h, w)`` in [0, 1] at any size) brought to the latents' size by area averaging
    and multiplied in first (sd-scripts' ``apply_masked_loss``)."""
    if masks is not None:
        masks = masks.to(per_element.device, torch.float32)
        if masks.shape[-2:] != per_element.shape[-2:]:
            masks = F.interpolate(masks, size=per_element.shape[-2:], mode="area")
        per_element = per_element * masks
    return per_element.mean(dim=list(range(1, per_element.dim())))


def _gather(table: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """``table[t]`` for each timestep; a no-op move when both are on the training device."""
    return table[timesteps.to(table.device).long()]
