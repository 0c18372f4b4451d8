"""Preview images during training (sd-scripts' ``--sample_prompts``, kohya-compat.md §9).

The loop makes three calls out (see :class:`Previews`): before the first step, after each
optimizer step and at each epoch end; the schedule checks live in ``sample_prompts``. Each
sampling re-reads the prompt file, so it can be edited during a run, and asks the model
family for its sampler (``bundle.impl.preview_sampler``: SD's diffusers pipeline over the
bundle's own parts, ``families/sd/sampler.py``; Flux's flow-matching Euler sampler), which
makes one image per prompt. The denoiser and text encoders have the LoRA patched into their
modules' ``forward``, so the images show the LoRA as trained so far.

Sampling must leave training exactly as it was: the torch (CPU and CUDA), Python ``random``
and numpy RNG states, every module's train/eval mode, every parameter's ``requires_grad``
and every model's device are restored afterwards, and the sampler is dropped at once. The
LoRA network (``extra_modules``) is put in eval mode while sampling, so dropout does not
blur the previews; sd-scripts samples with its dropouts on. Each prompt's seed seeds the
sampler (a fresh one from the OS when the prompt gives none, logged).

Choices that differ from plain diffusers for SD, and why:

* The text embeddings are computed by the model family, the bundle's way (``encode`` with
  ``bundle.text``; §5.4 clip_skip: ``hidden_states[-k]`` then the final LayerNorm) and
  handed to the pipeline as ``prompt_embeds`` / ``negative_prompt_embeds``, so the images
  are conditioned exactly as training is. diffusers' own ``clip_skip=c`` means
  ``hidden_states[-(c + 1)]`` (kohya ``k`` = diffusers ``k - 1``), applies it to the positive
  prompt only (sd-scripts' pipeline applies it to the negative prompt too), and reaches for
  ``text_encoder.text_model``, which transformers >= 5.6 no longer has.
* SDXL: the pooled embeddings go in as ``pooled_prompt_embeds`` /
  ``negative_pooled_prompt_embeds``; the size conditioning is the pipeline's default
  (original = target = the image size, no crop), as sd-scripts' SDXL sampler does. The
  image size is the prompt's (``--w`` / ``--h``, default 512, also for SDXL as in
  sd-scripts). No invisible watermark is added.
* The sampler's scheduler is assigned after the pipeline is built: the pipeline's
  constructor "fixes" ``clip_sample`` to False and ``steps_offset`` to 1, while sd-scripts
  samples with ``clip_sample=True`` and the scheduler defaults (``get_my_scheduler``).
* The VAE decodes in its own dtype (a full-precision VAE next to a half-precision U-Net,
  sd-scripts' ``--no_half_vae``, works without autocast).

Not supported yet (sd-scripts' long-prompt-weighting pipeline has them): ``(word:1.2)``
prompt weights (the text is used as written) and prompts over 75 tokens (cut at 75).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import secrets
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lora_core.atomic import atomic_write
from lora_core.errors import ProfileError
from lora_core.events import Event, PhaseChanged, SampleSaved
from lora_core.models.bundle import ModelBundle
from lora_core.profile import SampleSection
from lora_core.training.compiling import eagerly
from lora_core.training.sample_prompts import (
    SamplePrompt,
    read_sample_prompts,
    sample_file_name,
    should_sample,
)

log = logging.getLogger(__name__)

SAMPLE_FOLDER = "sample"

# sd-scripts' sampler names -> diffusers scheduler class and extra constructor arguments.
# The k_ names are aliases. "dpmsolver" needs final_sigmas_type="sigma_min": current diffusers
# refuses its default "zero" for that algorithm; sigma_min is what older diffusers (the one
# sd-scripts pins) did at the last step. "dpmsingle": diffusers switches lower_order_final on
# by itself (with a message on stderr) for its default final sigma; asking for it is the same.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmsolver": ("DPMSolverMultistepScheduler",
                  {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {"lower_order_final": True}),
}
SCHEDULERS.update({f"k_{name}": SCHEDULERS[name]
                   for name in ("lms", "euler", "euler_a", "dpm_2", "dpm_2_a")})
# The parts of the training noise schedule that define the betas; everything else stays at
# the sampler class's defaults, as in sd-scripts.
_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                  "trained_betas")

Emit = Callable[[Event], None]
Autocast = Callable[[], AbstractContextManager]


def make_sampler_scheduler(sampler: str, noise_scheduler_config: Any) -> Any:
    """A fresh diffusers scheduler for ``sampler`` on the training noise schedule's betas.

    The prediction type is the training schedule's (``v_prediction`` for v-prediction
    models); schedulers that can clip the predicted x0 to [-1, 1] get ``clip_sample=True``,
    as sd-scripts forces.
    """
    import inspect

    import diffusers

    if sampler not in SCHEDULERS:
        raise ProfileError(f"unknown sampler {sampler!r}",
                           "use one of: " + ", ".join(SCHEDULERS))
    class_name, extra = SCHEDULERS[sampler]
    try:
        cls = getattr(diffusers, class_name)
        params = inspect.signature(cls.__init__).parameters
    except ImportError as exc:  # LMS needs scipy, which diffusers treats as optional
        raise ProfileError(f"sampler {sampler!r} cannot run here: {exc}".strip(),
                           "install scipy (pip install scipy) or choose another sampler, "
                           "like euler_a or ddim") from None
    kwargs = {k: noise_scheduler_config[k] for k in _SCHEDULE_KEYS
              if k in noise_scheduler_config and k in params}
    kwargs.update(extra)
    if noise_scheduler_config.get("prediction_type") == "v_prediction":
        kwargs["prediction_type"] = "v_prediction"
    if "clip_sample" in params:
        kwargs["clip_sample"] = True
    with warnings.catch_warnings():
        # algorithm_type="dpmsolver" is announced as deprecated; it is the sampler asked for.
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return cls(**kwargs)
        except ImportError as exc:
            raise ProfileError(f"sampler {sampler!r} cannot run here: {exc}".strip(),
                               "install scipy (pip install scipy) or choose another "
                               "sampler, like euler_a or ddim") from None


def generate_samples(bundle: ModelBundle, prompts: Sequence[SamplePrompt], *, output_dir: Path,
                     output_name: str, step: int, epoch: int | None,
                     device: torch.device | str, emit: Emit,
                     autocast: Autocast | None = None,
                     extra_modules: Sequence[nn.Module] = ()) -> list[Path]:
    """Make one PNG per prompt in ``<output_dir>/sample/`` and emit ``SampleSaved`` for each.

    ``epoch`` is the epoch number for epoch-boundary samples (names ``e######``) and None
    for step samples (names ``######``). ``autocast`` is the caller's autocast context
    factory (the trainer's ``accelerator.autocast``), or None to run without one.
    ``extra_modules`` (the LoRA network) are put in eval mode while sampling and restored.
    Returns the paths written, in prompt order.
    """
    device = torch.device(device)
    models = [bundle.unet, bundle.vae, *bundle.text_encoders]
    written: list[Path] = []
    # torch_compile: previews run the blocks eagerly (training.compiling.eagerly).
    with _training_state_kept(models, list(extra_modules), device), torch.no_grad(), \
            eagerly():
        # The family's sampler (SD: a diffusers pipeline over the bundle's own modules;
        # Flux: flow-matching Euler).
        sampler = bundle.impl.preview_sampler(bundle)
        try:
            for index, prompt in enumerate(prompts):
                with (autocast or contextlib.nullcontext)():
                    image = sampler.image(prompt, prompt_seed(prompt, index), device)
                name = sample_file_name(output_name, step=step, epoch=epoch, index=index,
                                        timestamp=time.time(), seed=prompt.seed)
                path = Path(output_dir) / SAMPLE_FOLDER / name
                atomic_write(path, lambda tmp, image=image: image.save(tmp, format="PNG"))
                written.append(path)
                emit(SampleSaved(str(path), step, epoch, index, prompt.prompt))
        finally:
            del sampler  # a pipeline holds references to every model and its own buffers
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return written


def prompt_seed(prompt: SamplePrompt, index: int) -> int:
    """The prompt's seed, or a fresh one from the OS entropy pool (not torch/random/numpy:
    their states belong to training)."""
    if prompt.seed is not None:
        return prompt.seed
    seed = secrets.randbits(32)
    log.info("sample %02d: random seed %d", index, seed)
    return seed


def sample_now(prompt_file: Path, default_sampler: str, bundle: ModelBundle, *,
               output_dir: Path, output_name: str, step: int, epoch: int | None,
               device: torch.device | str, emit: Emit, autocast: Autocast | None = None,
               extra_modules: Sequence[nn.Module] = ()) -> list[Path]:
    """Re-read the prompt file and make the samples; never stops a run.

    A prompt file broken during the run (or a sampler that cannot run, or the GPU running
    out of memory while sampling) is logged as a warning, which the CLI's log bridge turns
    into a ``WarningIssued`` event, and training goes on. Returns the paths written.
    """
    try:
        prompts = read_sample_prompts(prompt_file, default_sampler)
        if not prompts:
            log.warning("no sample images at step %d: %s has no prompts", step, prompt_file)
            return []
        return generate_samples(bundle, prompts, output_dir=output_dir, output_name=output_name,
                                step=step, epoch=epoch, device=device, emit=emit,
                                autocast=autocast, extra_modules=extra_modules)
    except ProfileError as exc:
        log.warning("no sample images at step %d: %s (%s); training goes on", step,
                    exc.message, exc.hint)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        log.warning("no sample images at step %d: the GPU ran out of memory while sampling; "
                    "training goes on (use smaller --w/--h or fewer prompts)", step)
    return []


@dataclass
class Previews:
    """The training loop's sampling calls: schedule check, prompt re-read, images, events.

    Build it once after the network is applied; then call :meth:`at_start` before the
    first step, :meth:`after_step` after each optimizer step and :meth:`after_epoch` at
    each epoch end. Each returns the paths written (empty when it is not time to sample).
    """

    section: SampleSection
    prompt_file: Path | None
    bundle: ModelBundle
    output_dir: Path
    output_name: str
    device: torch.device | str
    emit: Emit
    autocast: Autocast | None = None
    extra_modules: Sequence[nn.Module] = ()
    # Schedule-Free: samples show the evaluation weights (a context that swaps them in).
    eval_weights: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def at_start(self, step: int = 0) -> list[Path]:
        """sample_at_first. sd-scripts passes epoch 0 here, so the files are ``e000000``."""
        return self._sample(step, 0) if should_sample(self.section, first=True) else []

    def after_step(self, step: int) -> list[Path]:
        """After optimizer step ``step`` (1-based), mid-epoch."""
        return self._sample(step, None) if should_sample(self.section, step=step) else []

    def after_epoch(self, epoch: int, step: int) -> list[Path]:
        """At the end of epoch ``epoch`` (1-based), after ``step`` optimizer steps."""
        return self._sample(step, epoch) if should_sample(self.section, epoch=epoch) else []

    def now(self, step: int) -> list[Path]:
        """Asked for during the run (sample now): named as a mid-epoch sample of ``step``."""
        return self._sample(step, None)

    def _sample(self, step: int, epoch: int | None) -> list[Path]:
        if self.prompt_file is None:
            return []
        self.emit(PhaseChanged(f"making sample images at step {step}"))
        with self.eval_weights():
            return sample_now(self.prompt_file, self.section.sample_sampler, self.bundle,
                              output_dir=self.output_dir, output_name=self.output_name,
                              step=step, epoch=epoch, device=self.device, emit=self.emit,
                              autocast=self.autocast, extra_modules=self.extra_modules)


# ----------------------------------------------------------------------------------------
# Leaving training as it was


@dataclass
class RngStates:
    """Every RNG state training draws from: torch CPU, every CUDA device, random, numpy."""

    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor] | None
    python: Any
    numpy: Any

    @classmethod
    def capture(cls) -> RngStates:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return cls(torch.get_rng_state(), cuda, random.getstate(), np.random.get_state())

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda)
        random.setstate(self.python)
        np.random.set_state(self.numpy)


@contextlib.contextmanager
def _training_state_kept(models: list[nn.Module], extra_modules: list[nn.Module],
                         device: torch.device) -> Iterator[None]:
    """Models on ``device`` in eval mode inside; RNGs, modes, requires_grad and devices as
    they were afterwards."""
    rng = RngStates.capture()
    everything = models + extra_modules
    modes = [(m, m.training) for model in everything for m in model.modules()]
    grads = [(p, p.requires_grad) for model in everything for p in model.parameters()]
    homes = [(model, _device_of(model)) for model in models]
    try:
        for model, home in homes:
            if home is not None and home != device:
                model.to(device)  # e.g. a VAE parked on the CPU after caching latents
        for model in everything:
            model.eval()
        yield
    finally:
        for model, home in homes:
            if home is not None and home != device:
                model.to(home)
        for module, was_training in modes:
            module.training = was_training
        for param, flag in grads:
            param.requires_grad_(flag)
        rng.restore()


def _device_of(model: nn.Module) -> torch.device | None:
    param = next(model.parameters(), None)
    return None if param is None else param.device
