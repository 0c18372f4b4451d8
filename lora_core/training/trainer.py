"""The training loop and its setup.

``train()`` reads top to bottom like the algorithm: for each epoch, for each batch, encode,
add noise at a random timestep, predict it, step the optimizer; the named checks decide
when to save or stop. Setup lives in the ``_setup_*`` helpers; saving is a call out of the
loop. Everything that makes a run resumable (step, epoch, position in the epoch's order,
seed) is in :class:`TrainState`, and the epoch order is a pure function of (seed, epoch),
so a later resume can rebuild exactly where a run was.

The loop runs under accelerate's ``Accelerator``: device placement, mixed precision and the
process count in the step maths, so ``accelerate launch`` on several GPUs needs no other
code. Only the main process writes files and events.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_core.dataset.loader import make_epoch_loader, process_batches
from lora_core.dataset.plan import TrainingPlan, epoch_batches
from lora_core.errors import TrainingError
from lora_core.events import CheckpointSaved, EpochEnded, EventBus, PhaseChanged, StepEnded
from lora_core.models.families import ModelBundle
from lora_core.network.lora import LoRANetwork, NetworkShape
from lora_core.network.weights import load_network_weights
from lora_core.profile import Profile
from lora_core.saving import lora_file
from lora_core.saving.metadata import at_save
from lora_core.training.conditioning import LiveTextEncoder, VaeLatents
from lora_core.training.loss import noise_target, weighted_mse
from lora_core.training.optim import build_optimizer, build_scheduler, param_groups

log = logging.getLogger(__name__)

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainState:
    """Where a run is. Together with the seed this is enough to rebuild the data order."""

    seed: int
    step: int = 0            # optimizer steps done
    epoch: int = 0           # index of the current epoch (0-based)
    batch_in_epoch: int = 0  # batches of the current epoch already consumed
    losses: deque = field(default_factory=deque)  # the last epoch's step losses (avg_loss)


@dataclass
class Outputs:
    """Where files go and what they are stamped with."""

    output_dir: Path
    output_name: str
    metadata: dict[str, str]
    save_precision: str
    written: list[Path] = field(default_factory=list)


def _setup_accelerator(profile: Profile):
    from accelerate import Accelerator

    precision = profile.training.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        raise TrainingError(
            "`[training] mixed_precision` = \"fp16\" needs a CUDA GPU, and none was found",
            "on a CPU set mixed_precision = \"no\" (or \"bf16\"); on a GPU machine check that "
            "a CUDA build of torch is installed (python -c \"import torch; "
            "print(torch.cuda.is_available())\")")
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())


def _setup_models(bundle: ModelBundle, profile: Profile, device: torch.device) -> torch.dtype:
    """Freeze the base model in the training dtype; LoRA parameters stay float32."""
    weight_dtype = WEIGHT_DTYPES[profile.training.mixed_precision]
    for model in (bundle.unet, bundle.vae, *bundle.text_encoders):
        model.requires_grad_(False)
        model.to(device, weight_dtype)
        model.eval()
    if profile.training.gradient_checkpointing:
        bundle.unet.enable_gradient_checkpointing()
        bundle.unet.train()  # diffusers only checkpoints in training mode; SD has no dropout
    return weight_dtype


def _setup_network(bundle: ModelBundle, profile: Profile, device: torch.device) -> LoRANetwork:
    net = profile.network
    shape = NetworkShape(rank=net.network_dim, alpha=net.network_alpha, conv_rank=net.conv_dim,
                         conv_alpha=net.conv_alpha, dropout=net.network_dropout,
                         train_unet=not net.network_train_text_encoder_only,
                         train_text_encoder=not net.network_train_unet_only)
    network = LoRANetwork(bundle.unet, bundle.text_encoders, shape)
    weights = profile.path("network", "network_weights")
    if weights is not None:
        load_network_weights(network, weights)
    network.to(device, torch.float32)
    network.apply_to()
    return network


def train(profile: Profile, plan: TrainingPlan, bundle: ModelBundle, outputs: Outputs,
          state: TrainState, bus: EventBus, stop_requested: Callable[[], bool]) -> bool:
    """Train until the plan's last step or a stop request. Returns True if interrupted."""
    from accelerate.state import AcceleratorState, GradientState

    try:
        return _train(profile, plan, bundle, outputs, state, bus, stop_requested)
    finally:
        # accelerate keeps process-wide singletons; a later run in this process (tests, an
        # in-process queue) may use another precision.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def _train(profile: Profile, plan: TrainingPlan, bundle: ModelBundle, outputs: Outputs,
           state: TrainState, bus: EventBus, stop_requested: Callable[[], bool]) -> bool:
    accelerator = _setup_accelerator(profile)
    main = accelerator.is_main_process
    emit = bus.emit if main else (lambda event: None)
    device = accelerator.device
    weight_dtype = _setup_models(bundle, profile, device)
    network = _setup_network(bundle, profile, device)
    groups = param_groups(network, profile.optimizer)
    optimizer = build_optimizer(groups, profile.optimizer)
    scheduler = build_scheduler(optimizer, profile.optimizer, plan.max_train_steps,
                                accelerator.num_processes)
    network, optimizer, scheduler = accelerator.prepare(network, optimizer, scheduler)
    trainable = [p for g in groups for p in g.params]
    train_te = any(g.name == "textencoder" for g in groups)
    latents_from = VaeLatents(bundle, device, weight_dtype)
    text_from = LiveTextEncoder(bundle, device, profile.model.clip_skip)
    noise_scheduler = bundle.noise_scheduler
    grad_accum = profile.training.gradient_accumulation_steps
    total_steps, total_epochs = plan.max_train_steps, plan.num_epochs
    step_times: deque[float] = deque(maxlen=20)
    emit(PhaseChanged("training"))
    last_step_at = time.perf_counter()

    while state.epoch < total_epochs and state.step < total_steps:
        batches = epoch_batches(plan, state.seed, state.epoch)
        mine = process_batches(batches, accelerator.process_index, accelerator.num_processes)
        loader = make_epoch_loader(plan, profile.dataset, mine, state, device)
        state.losses = deque(state.losses, maxlen=max(1, math.ceil(len(mine) / grad_accum)))
        for index, batch in enumerate(loader, start=state.batch_in_epoch):
            update_start = (index // grad_accum) * grad_accum
            micro_in_update = min(grad_accum, len(mine) - update_start)
            last_micro = index + 1 == update_start + micro_in_update
            sync = contextlib.nullcontext() if last_micro else accelerator.no_sync(network)
            with sync, accelerator.autocast():
                latents = latents_from.latents(batch)
                noise = torch.randn_like(latents)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps,
                                          (latents.shape[0],), device=device)
                noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                hidden = text_from.hidden_states(batch, train_te)
                pred = bundle.unet(noisy.to(weight_dtype), timesteps,
                                   hidden.to(weight_dtype)).sample
                loss = weighted_mse(pred, noise_target(noise), batch["loss_weights"])
                accelerator.backward(loss / micro_in_update)
            state.batch_in_epoch = index + 1
            if not last_micro:
                continue
            _check_finite(loss, state.step + 1)
            if profile.optimizer.max_grad_norm > 0:
                accelerator.clip_grad_norm_(trainable, profile.optimizer.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.losses.append(loss.item())
            now = time.perf_counter()
            step_times.append(now - last_step_at)
            last_step_at = now
            emit(_step_event(state, total_steps, total_epochs, optimizer, step_times, groups))
            if should_save_step(state.step, profile, total_steps) and main:
                save(network, accelerator, outputs, state, "step", bus)
            if state.step >= total_steps or stop_requested():
                break
        if state.batch_in_epoch == len(mine):  # the epoch ran to its end
            state.epoch += 1
            state.batch_in_epoch = 0
            emit(EpochEnded(state.epoch, total_epochs, state.step, _avg(state.losses)))
            if should_save_epoch(state.epoch, profile, total_epochs) and main:
                save(network, accelerator, outputs, state, "epoch", bus)
        if state.step >= total_steps or stop_requested():
            break

    interrupted = state.step < total_steps
    accelerator.wait_for_everyone()
    if main:
        save(network, accelerator, outputs, state, "interrupted" if interrupted else "final", bus)
    return interrupted


def should_save_step(step: int, profile: Profile, total_steps: int) -> bool:
    every = profile.saving.save_every_n_steps
    return bool(every) and step % every == 0 and step < total_steps


def should_save_epoch(epoch_done: int, profile: Profile, total_epochs: int) -> bool:
    """sd-scripts saves when epoch % N == 0 and it is not the last epoch (the final file is)."""
    every = profile.saving.save_every_n_epochs
    return bool(every) and epoch_done % every == 0 and epoch_done < total_epochs


def save(network, accelerator, outputs: Outputs, state: TrainState, kind: str,
         bus: EventBus) -> Path:
    name = outputs.output_name
    file_name = {
        "step": lambda: lora_file.step_file_name(name, state.step),
        "epoch": lambda: lora_file.epoch_file_name(name, state.epoch),
        "final": lambda: lora_file.final_file_name(name),
        "interrupted": lambda: lora_file.interrupted_file_name(name),
    }[kind]()
    path = outputs.output_dir / file_name
    bus.emit(PhaseChanged(f"saving {file_name}"))
    state_dict = accelerator.unwrap_model(network).state_dict()
    metadata = at_save(outputs.metadata, state.step, state.epoch)
    lora_file.save_lora(path, state_dict, metadata, outputs.save_precision)
    outputs.written.append(path)
    bus.emit(CheckpointSaved(str(path), state.step, state.epoch, kind))
    return path


def _check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss).all():
        raise TrainingError(
            f"the loss became {loss.item()} at step {step}; nothing from this step is saved",
            "lower the learning rate, use mixed_precision = \"bf16\" or \"no\" instead of "
            "fp16, or keep the VAE in full precision")


def _avg(losses: deque) -> float:
    return sum(losses) / len(losses) if losses else float("nan")


def _step_event(state: TrainState, total_steps: int, total_epochs: int,
                optimizer: torch.optim.Optimizer, step_times: deque, groups) -> StepEnded:
    seconds = sum(step_times) / len(step_times)
    lrs = {f"lr/{g['name']}": float(g["lr"]) for g in optimizer.param_groups}
    return StepEnded(step=state.step, total_steps=total_steps, epoch=state.epoch + 1,
                     total_epochs=total_epochs, loss=state.losses[-1], avg_loss=_avg(state.losses),
                     lrs=lrs, it_per_s=1.0 / seconds if seconds > 0 else 0.0,
                     eta_s=(total_steps - state.step) * seconds)
