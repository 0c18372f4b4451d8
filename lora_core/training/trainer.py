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
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lora_core.dataset.loader import make_epoch_loader, process_batches, raise_loader_error
from lora_core.dataset.plan import TrainingPlan, epoch_batches
from lora_core.errors import NonFiniteError, OutOfMemoryError
from lora_core.events import (
    EpochEnded,
    Event,
    EventBus,
    GridSaved,
    LogLine,
    PhaseChanged,
    PhaseTracker,
    RunResumed,
    StepEnded,
    StoppedEarly,
    ValidationMeasured,
    WarningIssued,
)
from lora_core.models.bundle import ModelBundle
from lora_core.network.adapter import AdapterNetwork
from lora_core.network.blocks import block_lr_weights
from lora_core.network.max_norm import apply_max_norm
from lora_core.network.weights import load_network_weights, module_shapes
from lora_core.profile import OptimizerSection, Profile, TrainingSection
from lora_core.runs.requests import SAMPLE_NOW, SAVE_NOW, take_requests
from lora_core.saving.train_state import (
    LoadedState,
    Position,
    capture_rng,
    fixed_settings,
    plan_fingerprint,
)
from lora_core.training.best import BestFile
from lora_core.training.checkpoints import (
    NON_FINITE_HINT,
    Checkpointer,
    Outputs,
    Rotation,
    restore,
)
from lora_core.training.conditioning import (
    LiveTextEncoder,
    VaeLatents,
    build_cached_latents,
    build_cached_text_encoder,
    text_outputs_cacheable,
)
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
    accelerator = Accelerator(mixed_precision=profile.training.mixed_precision,
                              cpu=not torch.cuda.is_available())
    if profile.training.full_fp16 and accelerator.scaler is not None:
        allow_fp16_gradients(accelerator.scaler)
    return accelerator


def allow_fp16_gradients(scaler) -> None:
    """full_fp16: let fp16's loss scaler unscale fp16 gradients. torch's GradScaler refuses
    them ("Attempting to unscale FP16 gradients"), as unscaling in fp16 may underflow; with
    full_fp16 the LoRA's gradients are fp16 by choice. sd-scripts'
    ``patch_accelerator_for_fp16_training`` does the same."""
    unscale = scaler._unscale_grads_

    def unscale_fp16_too(optimizer, inv_scale, found_inf, allow_fp16):
        return unscale(optimizer, inv_scale, found_inf, True)

    scaler._unscale_grads_ = unscale_fp16_too


def lora_dtype(training: TrainingSection) -> torch.dtype:
    """The LoRA parameters' dtype: float32, or bf16 / fp16 with full_bf16 / full_fp16 (which
    checks.levers holds to the mixed_precision of that dtype)."""
    if training.full_bf16:
        return torch.bfloat16
    if training.full_fp16:
        return torch.float16
    return torch.float32


def _setup_models(bundle: ModelBundle, profile: Profile, device: torch.device,
                  emit: Callable[[Event], None]) -> torch.dtype:
    """Merge base_weights into the base model, then freeze it in the training dtype (the
    LoRA parameters' dtype is :func:`lora_dtype`'s)."""
    net = profile.network
    if net.base_weights:
        # Before the cast: merged in the weights' own precision, as sd-scripts does on load.
        for message in bundle.impl.merge_base_weights(bundle, net.base_weights,
                                                      net.base_weights_multiplier):
            emit(WarningIssued(message))
    weight_dtype = WEIGHT_DTYPES[profile.training.mixed_precision]
    # no_half_vae: the VAE stays float32 (fp16 VAEs, SDXL's above all, overflow to NaN).
    vae_dtype = torch.float32 if profile.model.no_half_vae else weight_dtype
    # A family may place its own transformer (Flux's block swap keeps some blocks on the CPU)
    # and store its weights in fp8 (SD's U-Net, after base_weights are merged in).
    placed = bundle.impl.place_transformer(bundle, profile.training, device, weight_dtype)
    for model, dtype in ((bundle.unet, weight_dtype), (bundle.vae, vae_dtype),
                         *((encoder, weight_dtype) for encoder in bundle.text_encoders)):
        model.requires_grad_(False)
        if model is bundle.unet and placed:
            pass
        elif profile.training.fp8_base or profile.training.fp8_base_unet:  # fp8 weights
            from lora_core.models.fp8 import move_keeping_fp8

            move_keeping_fp8(model, device, dtype)  # the fp8 weights stay fp8
        else:
            model.to(device, dtype)
        model.eval()
    if profile.training.gradient_checkpointing:
        # cpu_offload_checkpointing: where the family has it (the check says where).
        bundle.impl.enable_gradient_checkpointing(
            bundle, cpu_offload=profile.training.cpu_offload_checkpointing)
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
                                  opt.block_lr_zero_threshold, bundle.impl.block_layout())
    weights = profile.path("network", "network_weights")
    # dim_from_weights: each module's rank and alpha as the file has them (checks.rules
    # requires network_weights with it).
    shapes = module_shapes(weights) if weights is not None and profile.network.dim_from_weights \
        else None
    # The family's modules and names (SD: networks.lora; Flux: networks.lora_flux).
    network = bundle.impl.build_network(bundle, profile.network, lr_weights, shapes)
    if weights is not None:
        load_network_weights(network, weights)
    if profile.network.network_multiplier != 1.0:
        network.set_multiplier(profile.network.network_multiplier)
    network.to(device, torch.float32)
    dtype = lora_dtype(profile.training)
    if dtype != torch.float32:
        # full_bf16 / full_fp16 (sd-scripts casts the network to the weight dtype): the
        # trainable weights in half precision, so their gradients too, and the optimizer's
        # moments, which torch's optimizers keep in each parameter's dtype. The alpha buffers
        # stay float32: constants, written in the save precision anyway.
        for param in network.parameters():
            param.data = param.data.to(dtype)
    network.apply_to()
    network.train()  # the adapters' dropouts act in training only (previews switch it off)
    return network


def _setup_compiling(bundle: ModelBundle, training: TrainingSection,
                      emit: Callable[[Event], None]) -> None:
    """torch_compile: the U-Net's / DiT's repeated blocks compiled in place, with the LoRA
    hooked into them already; each block type and width compiles at its first step."""
    from lora_core.training.compiling import compile_repeated_blocks

    count = compile_repeated_blocks(bundle.unet, bundle.impl.repeated_blocks,
                                    training.dynamo_backend)
    kinds = " / ".join(bundle.impl.repeated_blocks)
    emit(LogLine("info", f"torch_compile: {count} blocks ({kinds}) "
                 f"compile with {training.dynamo_backend} at the first step, which is slow "
                 "the first time; the compiled code is kept for the next run"))


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


@dataclass
class _Optimization:
    """The network's parameter groups, the optimizer and the learning-rate schedule."""

    groups: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    trainable: list[torch.nn.Parameter]
    train_te: bool  # some group trains text-encoder modules


@dataclass
class _StepSetup:
    """What one batch's forward and backward pass needs (:func:`_loss_step`)."""

    accelerator: object
    bundle: ModelBundle
    latents_from: object
    text_from: object
    objective: object  # the family's: loss(batch, latents, text, model, dtype)
    training: TrainingSection
    weight_dtype: torch.dtype
    train_te: bool


@dataclass
class _Run:
    """The objects the loop's after-step and after-epoch work shares."""

    accelerator: object
    main: bool
    emit: Callable[[Event], None]
    profile: Profile
    plan: TrainingPlan
    state: TrainState
    outputs: Outputs
    checkpoints: Checkpointer
    previews: Previews
    validate: _Validation
    stop_requested: Callable[[], bool]

    def should_stop(self) -> bool:
        return (self.state.step >= self.plan.max_train_steps
                or any_process_asks_to_stop(
                    self.accelerator, lambda: self.stop_requested() or self.stopped_early))

    @property
    def stopped_early(self) -> bool:
        return self.validate.best is not None and bool(self.validate.best.stop_message)

    def save(self, kind: str) -> None:
        """A LoRA file of this point, with its validation loss (measured here if the
        schedule did not) for the best file. Main process only."""
        loss = self.validate.for_save() if self.validate.best is not None else None
        self.checkpoints.save(self.state, kind, loss=loss)

    def sampled(self, paths: list) -> None:
        """Sample images were made: rebuild the run's sample grid beside them."""
        run_dir = self.outputs.run_dir
        if not paths or run_dir is None:
            return
        from lora_core.saving.sample_grid import write_run_grid

        try:
            grid = write_run_grid(run_dir, self.outputs.output_dir, self.outputs.output_name)
        except OSError as exc:  # a grid is a convenience: the samples themselves are kept
            self.emit(WarningIssued(f"the sample grid was not written: {exc}"))
            return
        if grid is not None:
            self.emit(GridSaved(str(grid.path), grid.rows, grid.columns))


def _setup_optimization(accelerator, network: AdapterNetwork, bundle: ModelBundle,
                        profile: Profile, plan: TrainingPlan, seed: int) -> _Optimization:
    groups = param_groups(network, profile.optimizer, bundle.impl.block_layout())
    # full_bf16: AdamW rounds its bf16 updates stochastically, with random bits derived from
    # the run's seed and each step, so a resumed run rounds as the uninterrupted one.
    optimizer = build_optimizer(groups, profile.optimizer,
                                rounding_seed=seed if profile.training.full_bf16 else None)
    scheduler = build_scheduler(optimizer, profile.optimizer, plan.max_train_steps,
                                plan.warmup_steps, accelerator.num_processes)
    # The network is not wrapped in DDP: its LoRA modules run inside the U-Net and text
    # encoder, so a DDP wrapper's forward would never run and it would never sync.
    # Gradients are averaged by hand on each optimizer step instead (as sd-scripts does).
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    return _Optimization(groups, optimizer, scheduler,
                         trainable=[p for g in groups for p in g.params],
                         train_te=any(g.name.startswith("textencoder") for g in groups))


def _setup_checkpoints(accelerator, profile: Profile, plan: TrainingPlan, outputs: Outputs,
                       state: TrainState, network: AdapterNetwork, o: _Optimization,
                       bus: EventBus, stop_requested, eval_weights) -> Checkpointer:
    fingerprint = plan_fingerprint(plan)
    return Checkpointer(
        outputs, profile.saving, lambda: Position(
            step=state.step, epoch=state.epoch, batch_in_epoch=state.batch_in_epoch,
            seed=state.seed, output_name=outputs.output_name,
            max_train_steps=plan.max_train_steps, num_epochs=plan.num_epochs,
            plan_fingerprint=fingerprint, fixed=fixed_settings(profile),
            losses=list(state.losses), written=[str(p) for p in outputs.written]),
        network, o.optimizer, o.scheduler, bus, getattr(stop_requested, "saving", None),
        scaler=accelerator.scaler, eval_weights=eval_weights,
        rotation=Rotation(plan.save_every_n_epochs, plan.save_every_n_steps,
                          plan.steps_per_epoch))


class _Validation:
    """``validate(kind)``: measure (once per step) and report the validation loss; each new
    measurement also counts for early stopping (``best``: None without validation)."""

    def __init__(self, validator: Validator | None, state: TrainState, emit,
                 best: BestFile | None) -> None:
        self.validator, self.state, self.emit, self.best = validator, state, emit, best
        self.measured: dict[int, float] = {}  # step -> loss: an epoch end also a step due

    def __call__(self, kind: str) -> float | None:
        if self.validator is None:
            return None
        state = self.state
        new = state.step not in self.measured
        if new:
            self.emit(PhaseChanged("validating"))
            self.measured.clear()
            self.measured[state.step] = self.validator.measure()
        loss = self.measured[state.step]
        # "epoch": the epoch that just ended; "step": the epoch the step belongs to.
        epoch = state.epoch if kind == "epoch" else state.epoch + 1
        self.emit(ValidationMeasured(step=state.step, epoch=epoch, kind=kind, loss=loss,
                                     divergence=loss - _avg(state.losses),
                                     images=self.validator.num_images))
        best = self.best
        if new and best is not None and best.observe(loss, state.step):
            self.emit(StoppedEarly(state.step, epoch, best.patience or 0, best.lowest_step,
                                   best.lowest if best.lowest is not None else math.nan,
                                   best.stop_message))
        return loss

    def for_save(self) -> float | None:
        """The loss at this step for a saved file: measured already, or now."""
        if self.state.step in self.measured:
            return self.measured[self.state.step]
        return self("step" if self.state.batch_in_epoch else "epoch")


def _setup_validation(main: bool, plan: TrainingPlan, step: _StepSetup, network,
                      eval_weights, state: TrainState, emit, outputs: Outputs,
                      patience: int | None, resume: LoadedState | None) -> _Validation:
    validator = Validator(
        plan, step.training, step.bundle, step.latents_from, step.text_from,
        step.objective, network, step.accelerator.device,
        step.weight_dtype, step.accelerator.autocast, eval_weights,
        latents_cached=not isinstance(step.latents_from, VaeLatents),
    ) if main and plan.validation_batches else None
    best = None
    if validator is not None:
        best = BestFile(outputs.output_dir, outputs.output_name, patience, emit)
        if resume is not None:
            best.restore(outputs.run_dir, state.step)
    return _Validation(validator, state, emit, best)


def _train(profile: Profile, plan: TrainingPlan, bundle: ModelBundle, outputs: Outputs,
           state: TrainState, bus: EventBus, stop_requested: Callable[[], bool],
           resume: LoadedState | None) -> bool:
    accelerator = _setup_accelerator(profile)
    main = accelerator.is_main_process
    emit = bus.emit if main else (lambda event: None)
    phases = PhaseTracker()
    bus.add(phases)
    device = accelerator.device
    weight_dtype = _setup_models(bundle, profile, device, emit)
    # Caching comes before the network is applied: cached text-encoder outputs must be
    # those of the base model (the text encoder is not trained when they are cached).
    latents_from, text_from = _setup_conditioning(accelerator, bundle, profile, plan,
                                                  weight_dtype, emit)
    network = _setup_network(bundle, profile, device)
    if profile.training.torch_compile:
        _setup_compiling(bundle, profile.training, emit)
    o = _setup_optimization(accelerator, network, bundle, profile, plan, state.seed)
    if resume is not None:
        # After every setup step that draws random numbers (latent sampling, LoRA init),
        # so the restored RNG streams are the ones the interrupted run had at this point.
        for message in restore(resume, network, o.optimizer, o.scheduler, state,
                               scaler=accelerator.scaler, rank=accelerator.process_index,
                               world=accelerator.num_processes):
            emit(WarningIssued(message))
        emit(RunResumed(str(resume.path), state.step, state.epoch))
    # After restore: a resumed Schedule-Free state is already in training mode.
    eval_weights = evaluation_switch(o.optimizer, profile.optimizer)
    checkpoints = _setup_checkpoints(accelerator, profile, plan, outputs, state, network, o,
                                     bus, stop_requested, eval_weights)
    previews = Previews(profile.sample, profile.path("sample", "sample_prompts"), bundle,
                        output_dir=outputs.output_dir, output_name=outputs.output_name,
                        device=device, emit=emit, autocast=accelerator.autocast,
                        extra_modules=[network],
                        eval_weights=eval_weights or contextlib.nullcontext)
    # The family's objective (SD: DDPM noise prediction; Flux: rectified flow).
    objective = bundle.impl.objective(bundle, profile.training, device)
    step = _StepSetup(accelerator, bundle, latents_from, text_from, objective,
                      profile.training, weight_dtype, o.train_te)
    run = _Run(accelerator, main, emit, profile, plan, state, outputs, checkpoints, previews,
               _setup_validation(main, plan, step, network, eval_weights, state, emit, outputs,
                                 profile.training.early_stopping_patience, resume),
               stop_requested)
    checkpoints.best = run.validate.best
    grad_accum = profile.training.gradient_accumulation_steps
    step_times: deque[float] = deque(maxlen=20)
    if main and state.step == 0:
        run.sampled(previews.at_start(state.step))
    if any_process_asks_to_stop(accelerator, stop_requested):
        # Ctrl+C while the model loaded or latents were cached: nothing new was trained.
        return True
    emit(PhaseChanged("training"))
    last_step_at = time.perf_counter()
    window_loss = torch.zeros((), device=device)

    while state.epoch < plan.num_epochs and state.step < plan.max_train_steps:
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
            window_loss += _loss_step(step, batch, micro_in_update) / micro_in_update
            state.batch_in_epoch = index + 1
            if index + 1 < update_start + micro_in_update:
                continue  # accumulate: the optimizer steps after the window's last batch
            step_loss = float(average_across_processes(accelerator, window_loss))
            window_loss.zero_()
            _check_finite(step_loss, state.step + 1)
            metrics = _optimizer_step(accelerator, o, profile.optimizer, network)
            state.step += 1
            state.losses.append(step_loss)
            now = time.perf_counter()
            step_times.append(now - last_step_at)
            last_step_at = now
            emit(_step_event(state, plan.max_train_steps, plan.num_epochs, o.optimizer,
                             o.scheduler, step_times, metrics))
            _after_step(run)
            if run.should_stop():
                break
        if state.batch_in_epoch == len(mine):  # the epoch ran to its end
            _after_epoch(run)
        if run.should_stop():
            break

    interrupted = state.step < plan.max_train_steps and not run.stopped_early
    accelerator.wait_for_everyone()
    share_rng(accelerator, checkpoints, state.step)
    if main:
        run.save("interrupted" if interrupted else "final")
        if not interrupted:
            checkpoints.drop_states()
    return interrupted


def _loss_step(s: _StepSetup, batch: dict, micro: int) -> torch.Tensor:
    """One batch, forward and backward: the latents and the text conditioning, then the
    family's objective (noise, timesteps, prediction, weighted error). Returns the batch's
    loss (detached); its gradient, divided by the ``micro`` batches of the update, is
    accumulated."""
    with s.accelerator.autocast():
        latents = s.latents_from.latents(batch)
        text = s.text_from.conditioning(batch, s.train_te)
        loss = s.objective.loss(batch, latents, text, s.bundle.unet, s.weight_dtype)
        s.accelerator.backward(loss / micro)
    return loss.detach()


def _optimizer_step(accelerator, o: _Optimization, opt: OptimizerSection,
                    network: AdapterNetwork) -> dict[str, float]:
    """Average and clip the gradients, step the optimizer and the schedule, then max-norm;
    returns the max-norm metrics (empty when it is off)."""
    average_gradients(accelerator, o.trainable)
    if opt.max_grad_norm > 0:
        clip_gradients(accelerator, o.trainable, opt.max_grad_norm)
    o.optimizer.step()
    o.scheduler.step()
    o.optimizer.zero_grad(set_to_none=True)
    if not opt.scale_weight_norms:
        return {}
    scaled, mean_norm, max_norm = apply_max_norm(network, opt.scale_weight_norms)
    return {"max_norm/keys_scaled": scaled, "max_norm/average_key_norm": mean_norm,
            "max_norm/max_key_norm": max_norm}


def _after_step(run: _Run) -> None:
    """Validation, previews, the saves that are due and the user's requests, after a step."""
    state, plan, main = run.state, run.plan, run.main
    if validation_due(run.profile.training, plan, step=state.step):
        run.validate("step")
    if main:
        run.sampled(run.previews.after_step(state.step))
    step_save = state.step in plan.step_save_points
    due = main and run.checkpoints.state_due()
    asked = take_requests(run.outputs.run_dir) if main and run.outputs.run_dir else set()
    # A state holds every process's random state: when one is saved, all send theirs.
    if all_processes_agree(run.accelerator, step_save or due or SAVE_NOW in asked):
        share_rng(run.accelerator, run.checkpoints, state.step)
    if main and step_save:
        run.save("step")
    elif due:
        run.checkpoints.save_state(state)
    if asked:
        act_on_requests(asked, run)


def _after_epoch(run: _Run) -> None:
    """The epoch ran to its end: report it, validate, save and sample when due."""
    state, plan = run.state, run.plan
    state.epoch += 1
    state.batch_in_epoch = 0
    run.emit(EpochEnded(state.epoch, plan.num_epochs, state.step, _avg(state.losses)))
    if validation_due(run.profile.training, plan, epoch=state.epoch):
        run.validate("epoch")
    if state.epoch in plan.epoch_save_points:
        share_rng(run.accelerator, run.checkpoints, state.step)
        if run.main:
            run.save("epoch")
    if run.main:
        run.sampled(run.previews.after_epoch(state.epoch, state.step))


def act_on_requests(asked: set[str], run: _Run) -> None:
    """Save now / sample now (``lora-train signal``), after the step just taken, with
    the names sd-scripts gives a step's files. A save this step already made, or the final
    save the last step makes anyway, is not made twice."""
    state, plan = run.state, run.plan
    if SAMPLE_NOW in asked:
        if run.previews.prompt_file is None:
            run.emit(WarningIssued("sample now: this run has no sample prompts; set `[sample] "
                                   "sample_prompts` in the profile for the next run"))
        else:
            run.sampled(run.previews.now(state.step))
    if SAVE_NOW in asked and state.step not in plan.step_save_points \
            and state.step < plan.max_train_steps:
        run.save("step")


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
