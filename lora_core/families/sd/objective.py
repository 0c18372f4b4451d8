"""The diffusion (DDPM) objective SD 1.x, SD 2.x and SDXL train with, as sd-scripts does.

One batch: noise (with the profile's offset / pyramid noise), a timestep per image drawn in
``[min_timestep, max_timestep)``, the noisy latents from the DDPM schedule, the U-Net's
prediction of ε (or v), and the error weighted per timestep (min-SNR, debiased estimation,
v-pred scaling: ``training/loss.py``) and per image (``loss_weights``, masks). The maths lives
in ``training/noise.py`` and ``training/loss.py``; this object holds the run's schedule and
weighting and calls them in the order sd-scripts does, so the random draws are the same.
"""

from __future__ import annotations

from typing import Any

import torch

from lora_core.models.bundle import ModelBundle, TextConditioning
from lora_core.profile import TrainingSection
from lora_core.training.loss import diffusion_loss, prepare_schedule_and_loss, training_target
from lora_core.training.noise import input_noise, make_noise, sample_timesteps


class DiffusionObjective:
    """ε- or v-prediction on the DDPM schedule of SD (kohya-compat.md §6)."""

    def __init__(self, bundle: ModelBundle, training: TrainingSection,
                 device: torch.device) -> None:
        self.bundle, self.training, self.device = bundle, training, device
        # A copy: zero_terminal_snr rescales the schedule in place; the bundle may be reused.
        self.noise_scheduler = type(bundle.noise_scheduler).from_config(
            bundle.noise_scheduler.config)
        self.v_pred = bundle.v_parameterization
        self.weighting = prepare_schedule_and_loss(self.noise_scheduler, training,
                                                   self.v_pred, device)

    def loss(self, batch: dict[str, Any], latents: torch.Tensor, text: TextConditioning,
             model: Any, dtype: torch.dtype) -> torch.Tensor:
        """The batch's mean loss at a random timestep per image."""
        tr = self.training
        noise = make_noise(latents, tr)
        timesteps = sample_timesteps(latents.shape[0], tr.min_timestep, tr.max_timestep,
                                     self.device)
        noisy = self.noise_scheduler.add_noise(latents, input_noise(noise, tr), timesteps)
        pred = self._predict(batch, noisy, timesteps, text, model, dtype)
        target = training_target(self.noise_scheduler, latents, noise, timesteps, self.v_pred)
        return diffusion_loss(pred, target, timesteps, batch["loss_weights"], self.weighting,
                              batch.get("masks"))

    def validation_losses(self, batch: dict[str, Any], latents: torch.Tensor,
                          text: TextConditioning, model: Any, dtype: torch.dtype,
                          timesteps: list[int], generator: torch.Generator) -> list[float]:
        """The batch's loss at each fixed timestep, with noise from ``generator``."""
        losses = []
        for t in timesteps:
            noise = make_noise(latents, self.training, generator)
            steps = torch.full((latents.shape[0],), t, dtype=torch.long, device=self.device)
            noisy = self.noise_scheduler.add_noise(latents, noise, steps)
            pred = self._predict(batch, noisy, steps, text, model, dtype)
            target = training_target(self.noise_scheduler, latents, noise, steps, self.v_pred)
            losses.append(float(diffusion_loss(pred, target, steps, batch["loss_weights"],
                                               self.weighting, batch.get("masks"))))
        return losses

    def _predict(self, batch: dict[str, Any], noisy: torch.Tensor, timesteps: torch.Tensor,
                 text: TextConditioning, model: Any, dtype: torch.dtype) -> torch.Tensor:
        extra = self.bundle.impl.unet_extra_conditioning(
            self.bundle, batch=batch, text=text, device=self.device, dtype=dtype)
        return model(noisy.to(dtype), timesteps, text.hidden.to(dtype), **extra).sample
