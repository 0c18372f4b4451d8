"""Validation loss: the held-out images (``validation_split``) measured as training would,
at fixed timesteps with fixed noise, so the numbers of two runs, or of a run and its resume,
are the same and say which epoch to keep.

As sd-scripts (kohya-compat.md §12.3): each validation batch is measured at 4 timesteps
evenly spaced inside ``[min_timestep, max_timestep]`` (200, 400, 600, 800 by default), with
the profile's noise and loss options; the value is the mean over batches and timesteps. The
network is in eval mode (no dropout) and a Schedule-Free optimizer's evaluation weights are
in place, as for samples and saved files. Images are read without augmentation and captions
without shuffling or dropout. Every random number comes from generators seeded with the
validation seed and reset at each evaluation, and none from the global ones, so measuring
changes nothing in training.

When: at every ``validate_every_n_epochs``-th epoch end (every epoch when unset) and, with
``validate_every_n_steps``, every that many steps; ``max_validation_steps`` caps the batches
of one evaluation. The logged names are sd-scripts': ``loss/validation/step_average`` and
``step_divergence`` (validation minus the moving average of training loss), and
``loss/validation/epoch_average`` and ``epoch_divergence`` (minus the epoch's average).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from lora_core.dataset.loader import EpochBatches, raise_loader_error
from lora_core.dataset.plan import TrainingPlan, validation_timesteps
from lora_core.profile import TrainingSection


def validation_due(tr: TrainingSection, plan: TrainingPlan, *, step: int | None = None,
                   epoch: int | None = None) -> bool:
    """Whether to measure after optimizer step ``step`` or at the end of epoch ``epoch``
    (1-based)."""
    if not plan.validation_batches:
        return False
    if step is not None:
        return tr.validate_every_n_steps is not None and step % tr.validate_every_n_steps == 0
    every = tr.validate_every_n_epochs or 1
    return epoch is not None and epoch % every == 0


class Validator:
    """Measures validation loss with the run's models, sources and loss options."""

    def __init__(self, plan: TrainingPlan, tr: TrainingSection, bundle, latents_from,
                 text_from, objective, network: torch.nn.Module,
                 device: torch.device, weight_dtype: torch.dtype, autocast,
                 eval_weights: Callable[[], contextlib.AbstractContextManager] | None,
                 latents_cached: bool) -> None:
        self.plan, self.tr, self.bundle = plan, tr, bundle
        self.latents_from, self.text_from = latents_from, text_from
        self.objective, self.network = objective, network
        self.device, self.weight_dtype, self.autocast = device, weight_dtype, autocast
        self.eval_weights = eval_weights or contextlib.nullcontext
        batches = plan.validation_batches
        if tr.max_validation_steps is not None:
            batches = batches[:tr.max_validation_steps]
        self.batches = EpochBatches(plan, batches, plan.validation_seed, 0, 0,
                                    latents_cached=latents_cached, validation=True)
        self.timesteps = validation_timesteps(tr.min_timestep, tr.max_timestep)

    @property
    def num_images(self) -> int:
        return sum(len(batch) for batch in self.batches.batches)

    @torch.no_grad()
    def measure(self) -> float:
        """The mean validation loss over the batches and the fixed timesteps."""
        generator = torch.Generator().manual_seed(self.plan.validation_seed)
        modes = [(m, m.training) for m in self.network.modules()]
        self.network.eval()
        total, count = 0.0, 0
        try:
            with self.eval_weights():
                for index in range(len(self.batches)):
                    batch = self.batches[index]
                    raise_loader_error(batch)
                    for loss in self._batch_losses(batch, generator):
                        total += loss
                        count += 1
        finally:
            for module, was_training in modes:
                module.training = was_training
        return total / count if count else float("nan")

    def _batch_losses(self, batch: dict[str, Any], generator: torch.Generator) -> list[float]:
        with self.autocast():
            latents = self.latents_from.latents(batch, generator=generator)
            text = self.text_from.conditioning(batch, False)
            return self.objective.validation_losses(batch, latents, text, self.bundle.unet,
                                                    self.weight_dtype, self.timesteps,
                                                    generator)
