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
import math
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch

from lora_core.dataset.loader import make_epoch_loader, process_batches, raise_loader_error
from lora_core.dataset.plan import TrainingPlan, epoch_batches
from lora_core.errors import NonFiniteError, OutOfMemoryError
from lora_core.events import (
    EpochEnded,
    Event,
    EventBus,
    PhaseChanged,
    PhaseTracker,
    RunResumed,
    StepEnded,
    ValidationMeasured,
    WarningIssued,
)
from lora_core.models.families import ModelBundle
from lora_core.network.adapter import AdapterNetwork
from lora_core.network.blocks import block_layout, block_lr_weights
from lora_core.network.build import build_network
from lora_core.network.max_norm import apply_max_norm
from lora_core.network.weights import load_network_weights
from lora_core.profile import Profile
from lora_core.saving.run_requests import SAMPLE_NOW, SAVE_NOW, take_requests
from lora_core.saving.train_state import (
    LoadedState,
    Position,
    capture_rng,
    fixed_settings,
    plan_fingerprint,
)
from lora_core.training.checkpoints import NON_FINITE_HINT, Checkpointer, Outputs, restore
from lora_core.training.conditioning import (
    LiveTextEncoder,
    VaeLatents,
    build_cached_latents,
    build_cached_text_encoder,
    text_outputs_cacheable,
)
from lora_core.training.loss import diffusion_loss, prepare_schedule_and_loss, training_target
from lora_core.training.noise import make_noise, sample_timesteps
from lora_core.training.optim import (
    build_optimizer,
    build_scheduler,
    evaluation_switch,
    param_groups,
)
from lora_core.training.sampling import Previews
from lora_core.training.validation import Validator, validation_due

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainState:
    """Where a run is. Together with the seed this is enough to rebuild the data order."""

    seed: int
    step: int = 0            # optimizer steps done
    epoch: int = 0           # index of the current epoch (0-based)
    batch_in_epoch: int = 0  # batches of the current epoch already consumed
    losses: deque = field(default_factory=deque)  # the last epoch's step losses (avg_loss)


def _setup_accelerator(profile: Profile):
    from accelerate import Accelerator

    # fp16 without a GPU was refused before the model loaded (session.check_machine).
    return Accelerator(mixed_precision=profile.training.mixed_precision,
                       cpu=not torch.cuda.is_available())


def _setup_models(bundle: ModelBundle, profile: Profile, device: torch.device) -> torch.dtype:
    """Freeze the base model in the training dtype; LoRA parameters stay float32."""
    weight_dtype = WEIGHT_DTYPES[profile.training.mixed_precision]
    # no_half_vae: the VAE stays float32 (fp16 VAEs, SDXL's above all, overflow to NaN).
    vae_dtype = torch.float32 if profile.model.no_half_vae else weight_dtype
    for model, dtype in ((bundle.unet, weight_dtype), (bundle.vae, vae_dtype),
                         *((encoder, weight_dtype) for encoder in bundle.text_encoders)):
        model.requires_grad_(False)
        model.to(device, dtype)
        model.eval()
    if profile.training.gradient_checkpointing:
        bundle.unet.enable_gradient_checkpointing()
        bundle.unet.train()  # diffusers only checkpoints in training mode; SD has no dropout
        if not profile.network.network_train_unet_only:
            # The text encoder is checkpointed too when it trains (sd-scripts §5.5).
            for encoder in bundle.text_encoders:
                encoder.gradient_checkpointing_enable()
                encoder.train()
    return weight_dtype


def _setup_network(bundle: ModelBundle, profile: Profile, device: torch.device) -> AdapterNetwork:
    """The LoRA / LoCon / LoHa / LoKr network, started from network_weights if given."""
    opt = profile.optimizer
    lr_weights = block_lr_weights(opt.down_lr_weight, opt.mid_lr_weight, opt.up_lr_weight,
                                  opt.block_lr_zero_threshold, block_layout(bundle.family))
    network = build_network(bundle.unet, bundle.text_encoders, profile.network, lr_weights,
                            family=bundle.family)
    weights = profile.path("network", "network_weights")
    if weights is not None:
        load_network_weights(network, weights)
    network.to(device, torch.float32)
    network.apply_to()
    network.train()  # the adapters' dropouts act in training only (previews switch it off)
    return network


def _setup_conditioning(accelerator, bundle: ModelBundle, profile: Profile, plan: TrainingPlan,
                        weight_dtype: torch.dtype, emit) -> tuple:
    """Where latents and text conditioning come from: cached when the options allow."""
    ds, device = profile.dataset, accelerator.device
    if ds.cache_latents or ds.cache_latents_to_disk:
        emit(PhaseChanged("caching latents"))
        # Disk caches are shared: each process encodes its share, then all read the whole.
        shard = ((accelerator.process_index, accelerator.num_processes)
                 if ds.cache_latents_to_disk else (0, 1))
        latents_from = build_cached_latents(
            plan, bundle, device, bundle.vae.dtype, to_disk=ds.cache_latents_to_disk,
            vae_batch_size=ds.vae_batch_size, progress=_phase_progress("caching latents", emit),
            shard=shard, autocast=accelerator.autocast)
        if ds.cache_latents_to_disk and accelerator.num_processes > 1:
            accelerator.wait_for_everyone()
            latents_from = build_cached_latents(
                plan, bundle, device, bundle.vae.dtype, to_disk=True,
                vae_batch_size=ds.vae_batch_size, autocast=accelerator.autocast)
        # Training needs no VAE now: park it on the CPU (preview sampling brings it back)
        # so its memory goes to the U-Net, as sd-scripts does after caching.
        bundle.vae.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    else:
        latents_from = VaeLatents(bundle, device, bundle.vae.dtype)
    # The checks refused a cache the options rule out (checks.rules, checks.dataset).
    cacheable = text_outputs_cacheable(
        plan, network_trains_text_encoder=not profile.network.network_train_unet_only)
    if cacheable:
        emit(PhaseChanged("caching text encoder outputs"))
        text_from = build_cached_text_encoder(
            plan, bundle, device, batch_size=plan.batch_size,
            to_disk=ds.cache_text_encoder_outputs_to_disk,
            progress=_phase_progress("caching text encoder outputs", emit),
            autocast=accelerator.autocast)
    else:
        text_from = LiveTextEncoder(bundle, device)
    return latents_from, text_from


def _phase_progress(phase: str, emit) -> Callable[[int, int], None]:
    """A progress callback that reports about every 10% as a phase change."""
    last = [-1]

    def report(done: int, total: int) -> None:
        tenth = (10 * done) // max(total, 1)
        if tenth != last[0]:
            last[0] = tenth
            emit(PhaseChanged(phase, done, total))

    return report


def train(profile: Profile, plan: TrainingPlan, bundle: ModelBundle, outputs: Outputs,
          state: TrainState, bus: EventBus, stop_requested: Callable[[], bool],
          resume: LoadedState | None = None) -> bool:
    """Train until the plan's last step or a stop request. Returns True if interrupted.

    ``resume``: a saved state to continue from (``lora-train resume``). ``stop_requested``
    may also offer ``saving()``, a context that holds off a second Ctrl+C during a write.
    """
    from accelerate.state import AcceleratorState, GradientState

    try:
        with out_of_memory_hints():
            return _train(profile, plan, bundle, outputs, state, bus, stop_requested, resume)
    finally:
        # accelerate keeps process-wide singletons; a later run in this process (tests, an
        # in-process queue) may use another precision.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def _train(profile: Profile, plan: TrainingPlan, bundle: ModelBundle, outputs: Outputs,
           state: TrainState, bus: EventBus, stop_requested: Callable[[], bool],
           resume: LoadedState | None) -> bool:
    accelerator = _setup_accelerator(profile)
    main = accelerator.is_main_process
    emit = bus.emit if main else (lambda event: None)
    phases = PhaseTracker()
    bus.add(phases)
    device = accelerator.device
    weight_dtype = _setup_models(bundle, profile, device)
    # Caching comes before the network is applied: cached text-encoder outputs must be
    # those of the base model (the text encoder is not trained when they are cached).
    latents_from, text_from = _setup_conditioning(accelerator, bundle, profile, plan,
                                                  weight_dtype, emit)
    network = _setup_network(bundle, profile, device)
    groups = param_groups(network, profile.optimizer, block_layout(bundle.family))
    optimizer = build_optimizer(groups, profile.optimizer)
    scheduler = build_scheduler(optimizer, profile.optimizer, plan.max_train_steps,
                                plan.warmup_steps, accelerator.num_processes)
    # The network is not wrapped in DDP: its LoRA modules run inside the U-Net and text
    # encoder, so a DDP wrapper's forward would never run and it would never sync.
    # Gradients are averaged by hand on each optimizer step instead (as sd-scripts does).
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    if resume is not None:
        # After every setup step that draws random numbers (latent sampling, LoRA init),
        # so the restored RNG streams are the ones the interrupted run had at this point.
        for message in restore(resume, network, optimizer, scheduler, state,
                               scaler=accelerator.scaler, rank=accelerator.process_index,
                               world=accelerator.num_processes):
            emit(WarningIssued(message))
        emit(RunResumed(str(resume.path), state.step, state.epoch))
    # After restore: a resumed Schedule-Free state is already in training mode.
    eval_weights = evaluation_switch(optimizer, profile.optimizer)
    fingerprint = plan_fingerprint(plan)
    checkpoints = Checkpointer(
        outputs, profile.saving, lambda: Position(
            step=state.step, epoch=state.epoch, batch_in_epoch=state.batch_in_epoch,
            seed=state.seed, output_name=outputs.output_name,
            max_train_steps=plan.max_train_steps, num_epochs=plan.num_epochs,
            plan_fingerprint=fingerprint, fixed=fixed_settings(profile),
            losses=list(state.losses), written=[str(p) for p in outputs.written]),
        network, optimizer, scheduler, bus, getattr(stop_requested, "saving", None),
        scaler=accelerator.scaler, eval_weights=eval_weights)
    trainable = [p for g in groups for p in g.params]
    train_te = any(g.name == "textencoder" for g in groups)
    previews = Previews(profile.sample, profile.path("sample", "sample_prompts"), bundle,
                        output_dir=outputs.output_dir, output_name=outputs.output_name,
                        device=device, emit=emit, autocast=accelerator.autocast,
                        extra_modules=[network],
                        eval_weights=eval_weights or contextlib.nullcontext)
    tr, v_pred = profile.training, bundle.v_parameterization
    # A copy: zero_terminal_snr rescales the schedule in place, and the bundle may be reused.
    noise_scheduler = type(bundle.noise_scheduler).from_config(bundle.noise_scheduler.config)
    weighting = prepare_schedule_and_loss(noise_scheduler, tr, v_pred, device)
    validator = Validator(
        plan, tr, bundle, latents_from, text_from, noise_scheduler, weighting, network, device,
        weight_dtype, accelerator.autocast, eval_weights,
        latents_cached=not isinstance(latents_from, VaeLatents),
    ) if main and plan.validation_batches else None

    measured: dict[int, float] = {}  # step -> loss: an epoch end that is also a step due

    def validate(kind: str) -> None:
        if validator is None:
            return
        if state.step not in measured:
            emit(PhaseChanged("validating"))
            measured.clear()
            measured[state.step] = validator.measure()
        loss = measured[state.step]
        # "epoch": the epoch that just ended; "step": the epoch the step belongs to.
        epoch = state.epoch if kind == "epoch" else state.epoch + 1
        emit(ValidationMeasured(step=state.step, epoch=epoch, kind=kind, loss=loss,
                                divergence=loss - _avg(state.losses),
                                images=validator.num_images))
    grad_accum = profile.training.gradient_accumulation_steps
    total_steps, total_epochs = plan.max_train_steps, plan.num_epochs
    step_times: deque[float] = deque(maxlen=20)
    if main and state.step == 0:
        previews.at_start(state.step)
    if any_process_asks_to_stop(accelerator, stop_requested):
        # Ctrl+C while the model loaded or latents were cached: nothing new was trained.
        return True
    emit(PhaseChanged("training"))
    last_step_at = time.perf_counter()
    window_loss = torch.zeros((), device=device)

    while state.epoch < total_epochs and state.step < total_steps:
        batches = epoch_batches(plan, state.seed, state.epoch)
        mine = process_batches(batches, accelerator.process_index, accelerator.num_processes)
        loader = make_epoch_loader(plan, profile.dataset, mine, state, device,
                                   latents_cached=not isinstance(latents_from, VaeLatents))
        state.losses = deque(state.losses, maxlen=max(1, math.ceil(len(mine) / grad_accum)))
        for index, batch in enumerate(loader, start=state.batch_in_epoch):
            if phases.phase not in ("training", None):  # a save or previews said otherwise
                emit(PhaseChanged("training"))
            raise_loader_error(batch)
            update_start = (index // grad_accum) * grad_accum
            micro_in_update = min(grad_accum, len(mine) - update_start)
            with accelerator.autocast():
                latents = latents_from.latents(batch)
                noise = make_noise(latents, tr)
                timesteps = sample_timesteps(latents.shape[0], tr.min_timestep, tr.max_timestep,
                                             device)
                noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                text = text_from.conditioning(batch, train_te)
                extra = bundle.impl.unet_extra_conditioning(
                    bundle, batch=batch, text=text, device=device, dtype=weight_dtype)
                pred = bundle.unet(noisy.to(weight_dtype), timesteps,
                                   text.hidden.to(weight_dtype), **extra).sample
                target = training_target(noise_scheduler, latents, noise, timesteps, v_pred)
                loss = diffusion_loss(pred, target, timesteps, batch["loss_weights"], weighting,
                                      batch.get("masks"))
                accelerator.backward(loss / micro_in_update)
            window_loss += loss.detach() / micro_in_update
            state.batch_in_epoch = index + 1
            if index + 1 < update_start + micro_in_update:
                continue  # accumulate: the optimizer steps after the window's last batch
            step_loss = float(average_across_processes(accelerator, window_loss))
            window_loss.zero_()
            _check_finite(step_loss, state.step + 1)
            average_gradients(accelerator, trainable)
            if profile.optimizer.max_grad_norm > 0:
                clip_gradients(accelerator, trainable, profile.optimizer.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            metrics = {}
            if profile.optimizer.scale_weight_norms:
                scaled, mean_norm, max_norm = apply_max_norm(
                    network, profile.optimizer.scale_weight_norms)
                metrics = {"max_norm/keys_scaled": scaled, "max_norm/average_key_norm": mean_norm,
                           "max_norm/max_key_norm": max_norm}
            state.step += 1
            state.losses.append(step_loss)
            now = time.perf_counter()
            step_times.append(now - last_step_at)
            last_step_at = now
            emit(_step_event(state, total_steps, total_epochs, optimizer, scheduler, step_times,
                             metrics))
            if validation_due(tr, plan, step=state.step):
                validate("step")
            if main:
                previews.after_step(state.step)
            step_save = state.step in plan.step_save_points
            due = main and checkpoints.state_due()
            asked = take_requests(outputs.run_dir) if main and outputs.run_dir else set()
            # A state holds every process's random state: when one is saved, all send theirs.
            if all_processes_agree(accelerator, step_save or due or SAVE_NOW in asked):
                share_rng(accelerator, checkpoints, state.step)
            if main and step_save:
                checkpoints.save(state, "step")
            elif due:
                checkpoints.save_state(state)
            if asked:
                act_on_requests(asked, state, total_steps, plan.step_save_points, checkpoints,
                                previews, emit)
            if state.step >= total_steps or any_process_asks_to_stop(accelerator, stop_requested):
                break
        if state.batch_in_epoch == len(mine):  # the epoch ran to its end
            state.epoch += 1
            state.batch_in_epoch = 0
            emit(EpochEnded(state.epoch, total_epochs, state.step, _avg(state.losses)))
            if validation_due(tr, plan, epoch=state.epoch):
                validate("epoch")
            if state.epoch in plan.epoch_save_points:
                share_rng(accelerator, checkpoints, state.step)
                if main:
                    checkpoints.save(state, "epoch")
            if main:
                previews.after_epoch(state.epoch, state.step)
        if state.step >= total_steps or any_process_asks_to_stop(accelerator, stop_requested):
            break

    interrupted = state.step < total_steps
    accelerator.wait_for_everyone()
    share_rng(accelerator, checkpoints, state.step)
    if main:
        checkpoints.save(state, "interrupted" if interrupted else "final")
        if not interrupted:
            checkpoints.drop_states()
    return interrupted


def act_on_requests(asked: set[str], state: TrainState, total_steps: int,
                    saved_steps: Collection[int], checkpoints: Checkpointer, previews: Previews,
                    emit: Callable[[Event], None]) -> None:
    """Save now / sample now (``lora-train signal``), after the step just taken, with
    the names sd-scripts gives a step's files. A save this step already made, or the final
    save the last step makes anyway, is not made twice."""
    if SAMPLE_NOW in asked:
        if previews.prompt_file is None:
            emit(WarningIssued("sample now: this run has no sample prompts; set `[sample] "
                               "sample_prompts` in the profile for the next run"))
        else:
            previews.now(state.step)
    if SAVE_NOW in asked and state.step not in saved_steps and state.step < total_steps:
        checkpoints.save(state, "step")


def all_processes_agree(accelerator, wanted: bool) -> bool:
    """True on every process when any process (in practice the main one, which alone
    saves) wants it: the processes must take part in the same collectives."""
    if accelerator.num_processes == 1:
        return wanted
    flag = torch.tensor(1.0 if wanted else 0.0, device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="max") > 0)


def share_rng(accelerator, checkpoints: Checkpointer, step: int) -> None:
    """Every process's random state, gathered on the main one for the state it saves next
    (each process draws its own noise, dropout and timesteps; a resume restores each)."""
    if accelerator.num_processes == 1:
        return  # the state captures this process's own
    from accelerate.utils import gather_object

    states = gather_object([capture_rng()])
    if accelerator.is_main_process:
        checkpoints.shared_rng = (step, states)


def average_across_processes(accelerator, value: torch.Tensor) -> torch.Tensor:
    if accelerator.num_processes == 1:
        return value
    return accelerator.reduce(value.clone(), reduction="mean")


def average_gradients(accelerator, params: list[torch.nn.Parameter]) -> None:
    """Average LoRA gradients over processes (every process then takes the same step)."""
    if accelerator.num_processes == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad = accelerator.reduce(p.grad, reduction="mean")


def clip_gradients(accelerator, params: list[torch.nn.Parameter], max_norm: float) -> None:
    """Clip the gradients' global norm. With fp16's loss scaler accelerate must unscale
    first; otherwise torch's foreach kernel does it in a few ops instead of one per tensor
    (bench/RESULTS.md: about 2 ms of a 60 ms step on the tiny model)."""
    if accelerator.scaler is not None:
        accelerator.clip_grad_norm_(params, max_norm)
    else:
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)


def any_process_asks_to_stop(accelerator, stop_requested: Callable[[], bool]) -> bool:
    """Stop when any process got Ctrl+C: all must stop together or the others would hang."""
    wanted = stop_requested()
    if accelerator.num_processes == 1:
        return wanted
    flag = torch.tensor(1.0 if wanted else 0.0, device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="max") > 0)


@contextlib.contextmanager
def out_of_memory_hints():
    """CUDA out-of-memory anywhere in a run (caching, a step, a preview) becomes an error
    with the usual remedies; the CLI adds the exact lighter settings to retry with."""
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        raise OutOfMemoryError(
            "the GPU ran out of memory",
            "lower `[training] train_batch_size`, set gradient_checkpointing = true, "
            "cache_latents = true, use optimizer_type = \"AdamW8bit\", lower network_dim, or "
            "lower the resolution") from None


def _check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise NonFiniteError(
            f"the loss became {loss} at step {step}; nothing from this step is saved, so the "
            "files saved before are the last good ones", NON_FINITE_HINT)


def _avg(losses: deque) -> float:
    return sum(losses) / len(losses) if losses else float("nan")


def _step_event(state: TrainState, total_steps: int, total_epochs: int,
                optimizer: torch.optim.Optimizer, scheduler, step_times: deque,
                metrics: dict[str, float]) -> StepEnded:
    seconds = sum(step_times) / len(step_times)
    # The scheduler's rates, not the groups': AdaFactor's relative step keeps lr None in its
    # groups and only its schedule knows the rate it used.
    lrs = {f"lr/{g['name']}": float(lr)
           for g, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True)}
    for g in optimizer.param_groups:
        if "d" in g:  # D-Adaptation / Prodigy: the step size they found (sd-scripts logs it)
            lrs[f"lr/d*lr/{g['name']}"] = float(g["d"]) * float(g["lr"])
    return StepEnded(step=state.step, total_steps=total_steps, epoch=state.epoch + 1,
                     total_epochs=total_epochs, loss=state.losses[-1], avg_loss=_avg(state.losses),
                     lrs=lrs, it_per_s=1.0 / seconds if seconds > 0 else 0.0,
                     eta_s=(total_steps - state.step) * seconds, metrics=metrics)
