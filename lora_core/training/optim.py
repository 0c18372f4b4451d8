"""Optimizer, parameter groups and learning-rate schedule from the profile's [optimizer].

Parameter groups follow sd-scripts (kohya-compat.md §6.5–6.6):

* text-encoder modules at ``text_encoder_lr`` (else ``learning_rate``) in group
  ``textencoder`` (SDXL with two different rates: ``textencoder1`` / ``textencoder2``);
  U-Net modules at ``unet_lr`` (else ``learning_rate``) in group ``unet``;
* with block learning-rate weights (``down/mid/up_lr_weight``) the U-Net is split into one
  group per block, ``unet_block<i>`` at ``unet_lr × weight[i]`` (sd-scripts' names);
* with LoRA+ (Hayou et al., 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models",
  arXiv:2402.12354) each group's output-side factors move to ``<name>_plus`` at ``lr × ratio``
  (sd-scripts logs these as "<name> plus"; the underscore keeps event keys free of spaces);
* a group whose rate is 0 is left out (its modules stay in the file, untrained).

Groups are read from ``network.named_parameters()`` and the network's ``text_encoder_names``
/ ``unet_names`` (the first component of a parameter name is its module's kohya name), so
LoRA, LoCon, LoHa and LoKr networks are grouped the same way.

Optimizers (§8.1) are imported only when asked for, so a missing optional package is a
profile error naming the ``pip install`` that fixes it. Schedules come from diffusers'
``get_scheduler``, except ``adafactor`` (transformers' ``AdafactorSchedule``), the schedules
only transformers has (``inverse_sqrt``, ``cosine_with_min_lr``, ``warmup_stable_decay``)
and ``lr_scheduler_type`` (any class), wired as sd-scripts' ``get_scheduler_fix``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from lora_core.errors import ProfileError
from lora_core.network.blocks import SD_BLOCKS, BlockLayout, block_index, block_lr_weights
from lora_core.profile import OptimizerSection
from lora_core.training.optimizer_args import (
    ONE_LR_ONLY,
    OPTIMIZER_CLASSES,  # noqa: F401 (re-export)
    STOCHASTIC_ROUNDING_8BIT_TYPES,
    STOCHASTIC_ROUNDING_TYPES,
    adafactor_relative_step,
    effective_optimizer_args,
    group_learning_rates,
    import_path_error,
    import_path_unimportable,
    is_schedule_free,
    loraplus_ratios,
    optimizer_args_list,
    steps_or_ratio,
    text_encoder_lrs,
)

# Keys of SDXL's second text encoder (OpenCLIP bigG), which text_encoder_lr's second value
# trains (the family's ``naming.text_encoder_prefixes``).
TEXT_ENCODER_2_PREFIX = "lora_te2_"
# ... and of Flux's T5-XXL (train_t5xxl), as sd-scripts' lora_flux gives it that value.
TEXT_ENCODER_2_PREFIXES = (TEXT_ENCODER_2_PREFIX, "lora_te3_")

# optimizer_type → (module, class, pip package that provides it).
# Both get nesterov=True as in sd-scripts; bitsandbytes' SGD8bit (0.50) accepts the flag but
# runs plain momentum SGD, so SGDNesterov8bit is Nesterov in name only (there as here).
NESTEROV = ("SGDNesterov", "SGDNesterov8bit")
# The packages of pyproject's `optimizers` extra.
EXTRA_OPTIMIZER_PACKAGES = ("dadaptation", "prodigyopt", "lion-pytorch")

# LoRA+ (arXiv:2402.12354, §3) derives from width scaling that B in ΔW = B·A, whose fan-in is
# the small rank r (B: [out, r]), needs a rate Θ(width) times A's (A: [r, in], fan-in = the
# layer width); lora_up is B. The same shape rule picks, in the other module types, every
# factor that maps the rank to the output: LoHa's hada_w1_a / hada_w2_a ([out, r]) and LoKr's
# lokr_w1_a / lokr_w2_a ([·, r]) when a Kronecker factor is itself low-rank. A full
# (undecomposed) Kronecker factor (lokr_w1, lokr_w2) has no rank-sized fan-in and keeps the
# base rate, so LoRA+ changes nothing for a LoKr module without decomposed factors.
LORAPLUS_UP_PARAMS = frozenset({"lora_up", "hada_w1_a", "hada_w2_a", "lokr_w1_a", "lokr_w2_a"})


class TrainableNetwork(Protocol):
    """What param_groups needs of LoRA / LoCon / LoHa / LoKr networks."""

    text_encoder_names: list[str]
    unet_names: list[str]

    def named_parameters(self) -> Any: ...


@dataclass
class ParamGroupSpec:
    name: str  # as logged: lr/<name> ("textencoder", "unet", "unet_block4", "unet_plus", ...)
    params: list[torch.nn.Parameter]
    lr: float


def is_loraplus_up(param_name: str) -> bool:
    """Whether a parameter (``<lora_name>.lora_up.weight``, ``<lora_name>.hada_w1_a``, ...)
    is an output-side factor that LoRA+ trains at ``lr × ratio``."""
    return any(part in LORAPLUS_UP_PARAMS for part in param_name.split(".")[1:])


def _split_plus(name: str, named: list[tuple[str, torch.nn.Parameter]], lr: float,
                ratio: float | None) -> list[ParamGroupSpec]:
    """One group, or with LoRA+ a base group and ``<name>_plus``; rate-0 groups dropped."""
    if ratio is None:
        groups = [ParamGroupSpec(name, [p for _, p in named], lr)]
    else:
        groups = [ParamGroupSpec(name, [p for n, p in named if not is_loraplus_up(n)], lr),
                  ParamGroupSpec(f"{name}_plus", [p for n, p in named if is_loraplus_up(n)],
                                 lr * ratio)]
    return [g for g in groups if g.params and g.lr > 0]


def param_groups(network: TrainableNetwork, opt: OptimizerSection,
                 layout: BlockLayout = SD_BLOCKS) -> list[ParamGroupSpec]:
    """The optimizer's groups, in sd-scripts' order: text encoder, then U-Net (by block)."""
    te_names, unet_names = set(network.text_encoder_names), set(network.unet_names)
    te_named: list[tuple[str, torch.nn.Parameter]] = []
    unet_named: list[tuple[str, torch.nn.Parameter]] = []
    for name, param in network.named_parameters():
        if not param.requires_grad:
            continue
        module = name.split(".", 1)[0]
        if module in te_names:
            te_named.append((name, param))
        elif module in unet_names:
            unet_named.append((name, param))
    _, unet_lr = group_learning_rates(opt)
    te_ratio, unet_ratio = loraplus_ratios(opt)
    te1_lr, te2_lr = text_encoder_lrs(opt)
    te2_named = [(n, p) for n, p in te_named if n.startswith(TEXT_ENCODER_2_PREFIXES)]
    if te2_named and te1_lr != te2_lr:
        # SDXL with two text-encoder rates: one group per encoder (sd-scripts' multiple-TE
        # rates); otherwise one group, as before.
        te1_named = [(n, p) for n, p in te_named if not n.startswith(TEXT_ENCODER_2_PREFIXES)]
        groups = (_split_plus("textencoder1", te1_named, te1_lr, te_ratio)
                  + _split_plus("textencoder2", te2_named, te2_lr, te_ratio))
    else:
        groups = _split_plus("textencoder", te_named, te1_lr, te_ratio) if te_named else []
    weights = block_lr_weights(opt.down_lr_weight, opt.mid_lr_weight, opt.up_lr_weight,
                               opt.block_lr_zero_threshold, layout)
    if weights is None:
        if unet_named:
            groups += _split_plus("unet", unet_named, unet_lr, unet_ratio)
    else:
        by_block: dict[int, list[tuple[str, torch.nn.Parameter]]] = {}
        for name, param in unet_named:
            slot = block_index(name.split(".", 1)[0])
            if slot is None:
                raise ProfileError(
                    f"U-Net module {name.split('.', 1)[0]!r} lies in no SD 1.x/2.x block, so "
                    "`[optimizer] down_lr_weight / mid_lr_weight / up_lr_weight` cannot "
                    "weight it", "remove the block learning-rate weights for this model")
            by_block.setdefault(slot, []).append((name, param))
        for slot in sorted(by_block):
            groups += _split_plus(f"unet_block{slot}", by_block[slot],
                                  unet_lr * weights[slot], unet_ratio)
    # Rates that are all 0 are refused by the profile check (checks.optimizer, "no
    # parameters would be trained"); here only a network without modules is left.
    assert groups or not (te_named or unet_named), \
        "every learning rate is 0: checks.optimizer._rate_problems refuses this profile"
    if not groups:
        raise ProfileError("no LoRA modules were created, so nothing would be trained",
                           "give at least one block a rank above 0 (`[network] block_dims`) "
                           "and a learning-rate weight above 0")
    return groups


def optimizer_class(name: str) -> type:
    """The class for an optimizer_type, imported now; a missing package is a ProfileError."""
    if name not in OPTIMIZER_CLASSES:
        return imported_optimizer_class(name)
    module_name, class_name, package = OPTIMIZER_CLASSES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ProfileError(
            f"`[optimizer] optimizer_type` = \"{name}\" needs the {package} package, which "
            f"cannot be imported ({exc})",
            f"pip install {package}"
            + ("   (or pip install \"lora-tui[optimizers]\" for all of them)"
               if package in EXTRA_OPTIMIZER_PACKAGES else "")
            + "; or pick another optimizer_type, like \"AdamW\"") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ProfileError(
            f"`[optimizer] optimizer_type` = \"{name}\": the installed {package} has no "
            f"{class_name}", f"pip install --upgrade {package}")
    return cls


def imported_optimizer_class(path: str) -> type:
    """An optimizer named by its import path (``torch.optim.RAdam``), as sd-scripts takes
    any; what does not import, or is not an optimizer class, is a ProfileError naming it."""
    module_name, _, class_name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 (any failure of a third-party import)
        raise import_path_unimportable(path, f"failed with {type(exc).__name__}: {exc}") \
            from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        what = ("nothing" if cls is None else "a class" if isinstance(cls, type)
                else f"a {type(cls).__name__}")
        raise import_path_error(path, what)
    return cls


def build_optimizer(groups: list[ParamGroupSpec], opt: OptimizerSection,
                    rounding_seed: int | None = None) -> torch.optim.Optimizer:
    """The optimizer over ``groups``; each torch param group keeps its ``name``.

    ``rounding_seed`` (full_bf16: the run's seed): torch's AdamW becomes
    :class:`~lora_core.training.stochastic_rounding.StochasticRoundingAdamW`, the same update
    written to the bf16 weights and moments with stochastic rounding, and AdamW8bit rounds
    its bf16 weights so (``stochastic_rounding_8bit``), the random bits drawn from this seed
    (``optimizer_args.rounds_stochastically`` says for which types).

    AdaFactor with ``relative_step`` computes its own step size: as in sd-scripts it gets
    ``lr=None`` and the groups lose their rates (so unet_lr, text_encoder_lr, LoRA+ and
    block weights have no effect there).
    """
    name = opt.optimizer_type
    cls = optimizer_class(name)
    kwargs = effective_optimizer_args(opt)
    rates = {g.lr for g in groups}
    assert name not in ONE_LR_ONLY or len(rates) <= 1, \
        f"{name} with several rates: checks.optimizer._rate_problems refuses this profile"
    if name == "AdaFactor" and adafactor_relative_step(kwargs):
        torch_groups = [{"params": g.params, "name": g.name} for g in groups]
        lr: float | None = None
    else:
        torch_groups = [{"params": g.params, "lr": g.lr, "name": g.name} for g in groups]
        lr = opt.learning_rate
    if name in NESTEROV:
        kwargs = {**kwargs, "nesterov": True}
    if rounding_seed is not None and name in STOCHASTIC_ROUNDING_TYPES:
        from lora_core.training.stochastic_rounding import StochasticRoundingAdamW

        # fused_optimizer does not apply: the update is computed per tensor in float32.
        cls, kwargs = StochasticRoundingAdamW, {**kwargs, "seed": rounding_seed}
    elif rounding_seed is not None and name in STOCHASTIC_ROUNDING_8BIT_TYPES:
        from lora_core.training.stochastic_rounding import stochastic_rounding_8bit

        cls, kwargs = stochastic_rounding_8bit(cls), {**kwargs, "seed": rounding_seed}
    elif opt.fused_optimizer and cls in (torch.optim.AdamW, torch.optim.Adam) \
            and "foreach" not in kwargs and "fused" not in kwargs:
        # torch's fused AdamW runs on CPU (torch >= 2.4) and CUDA for float32 parameters
        # and for full_bf16 / full_fp16's half ones; same update rule as the per-tensor loop.
        kwargs = {**kwargs, "fused": True}
    try:
        return cls(torch_groups, lr=lr, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"`[optimizer] optimizer_args` {optimizer_args_list(opt)} do not fit "
                           f"{name}: {exc}",
                           "remove or correct the argument named above") from None


def evaluation_switch(optimizer: Any, opt: OptimizerSection
                      ) -> Callable[[], contextlib.AbstractContextManager] | None:
    """For a Schedule-Free optimizer (now put in training mode, which its step needs): a
    context in which the parameters hold the weights to evaluate (its average x, used for
    samples and LoRA files), with the training weights (y) back on leaving, as sd-scripts
    does with optimizer.eval()/train(). The training weights are put back bit for bit from
    a copy (eval() then train() is a round trip through floating point that would make a
    run that sampled or saved differ from one that did not, and a resume inexact). None for
    other optimizers."""
    if not is_schedule_free(opt.optimizer_type):
        return None
    optimizer.train()

    @contextlib.contextmanager
    def evaluating() -> Iterator[None]:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        training = [p.detach().clone() for p in params]
        optimizer.eval()
        try:
            yield
        finally:
            optimizer.train()
            with torch.no_grad():
                for param, kept in zip(params, training, strict=True):
                    param.copy_(kept)

    return evaluating


def optimizer_description(opt: OptimizerSection) -> str:
    """``ss_optimizer`` in sd-scripts' format: ``<module>.<Class>(k=v,...)``, from the real
    class and the arguments it gets (defaults sd-scripts adds, like SGDNesterov's
    momentum=0.9 or AdaFactor's relative_step=True, included; nesterov=True is not)."""
    cls = optimizer_class(opt.optimizer_type)
    described = ",".join(f"{k}={v}" for k, v in effective_optimizer_args(opt).items())
    return f"{cls.__module__}.{cls.__name__}" + (f"({described})" if described else "")


def build_scheduler(optimizer: torch.optim.Optimizer, opt: OptimizerSection,
                    max_train_steps: int, warmup_steps: int, num_processes: int = 1) -> Any:
    """The schedule; ``warmup_steps`` comes from the plan (a ratio is already resolved).

    ``adafactor`` is transformers' AdafactorSchedule: AdaFactor sets its own rate, the
    schedule only reports it (``learning_rate`` until the first step, as sd-scripts does).
    """
    if is_schedule_free(opt.optimizer_type):
        # Schedule-Free optimizers replace the schedule (sd-scripts gives them none): their
        # rate stays learning_rate; a warm-up is their own warmup_steps argument.
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    extra = scheduler_args(opt)
    if opt.lr_scheduler_type:
        return scheduler_class(opt.lr_scheduler_type)(optimizer, **extra)
    if opt.lr_scheduler == "adafactor":
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer, initial_lr=opt.learning_rate)

    from diffusers.optimization import get_scheduler

    # accelerate steps a prepared scheduler once per process, hence the product (§8.2).
    total = max_train_steps * num_processes
    warmup = warmup_steps * num_processes
    if opt.lr_scheduler in TRANSFORMERS_SCHEDULERS:
        decay = steps_or_ratio(opt.lr_decay_steps, max_train_steps) * num_processes  # (checks)
        return _transformers_scheduler(optimizer, opt, total, warmup, decay, extra)
    if opt.lr_scheduler == "piecewise_constant":
        return get_scheduler(opt.lr_scheduler, optimizer, **extra)  # step_rules in the args
    kwargs: dict[str, Any] = {"num_warmup_steps": warmup, "num_training_steps": total}
    if opt.lr_scheduler == "cosine_with_restarts":
        kwargs["num_cycles"] = opt.lr_scheduler_num_cycles
    elif opt.lr_scheduler == "polynomial":
        kwargs["power"] = opt.lr_scheduler_power
    elif opt.lr_scheduler == "constant":
        kwargs = {}
    elif opt.lr_scheduler == "constant_with_warmup":
        kwargs = {"num_warmup_steps": warmup}
    if extra:  # diffusers' get_scheduler passes no extra arguments on: call the function
        from diffusers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType

        return TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(opt.lr_scheduler)](
            optimizer, **kwargs, **extra)
    return get_scheduler(opt.lr_scheduler, optimizer, **kwargs)


# Schedules transformers has and diffusers has not (sd-scripts takes them from transformers).
TRANSFORMERS_SCHEDULERS = ("inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay")


def _transformers_scheduler(optimizer: torch.optim.Optimizer, opt: OptimizerSection,
                            total: int, warmup: int, decay: int, extra: dict[str, Any]) -> Any:
    """inverse_sqrt, cosine_with_min_lr and warmup_stable_decay with sd-scripts' arguments:
    the two cosine-shaped ones get ``num_cycles / 2`` (0.5 = one half cosine, as default)."""
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType

    function = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(opt.lr_scheduler)]
    cycles = opt.lr_scheduler_num_cycles / 2
    if opt.lr_scheduler == "inverse_sqrt":
        return function(optimizer, num_warmup_steps=warmup,
                         timescale=opt.lr_scheduler_timescale, **extra)
    if opt.lr_scheduler == "cosine_with_min_lr":
        # checks.schedule requires lr_scheduler_min_lr_ratio here (transformers does).
        return function(optimizer, num_warmup_steps=warmup, num_training_steps=total,
                        num_cycles=cycles, min_lr_rate=opt.lr_scheduler_min_lr_ratio, **extra)
    stable = total - warmup - decay
    assert stable >= 0, "refused by checks.schedule.plan_schedule_problems"
    return function(optimizer, num_warmup_steps=warmup, num_stable_steps=stable,
                    num_decay_steps=decay, num_cycles=cycles,
                    min_lr_ratio=opt.lr_scheduler_min_lr_ratio or 0.0, **extra)


def scheduler_args(opt: OptimizerSection) -> dict[str, Any]:
    """``lr_scheduler_args`` as keyword arguments, each value a Python literal (as sd-scripts
    reads them; checks.schedule refused any that does not parse)."""
    import ast

    kwargs = {}
    for item in opt.lr_scheduler_args:
        key, _, raw = item.partition("=")
        kwargs[key.strip()] = ast.literal_eval(raw.strip())
    return kwargs


def scheduler_class(path: str) -> type:
    """The class ``lr_scheduler_type`` names: a ``torch.optim.lr_scheduler`` name, or an
    import path (``pkg.module.Class``), as sd-scripts takes it."""
    module_name, _, class_name = path.rpartition(".")
    where = f"`[optimizer] lr_scheduler_type` = \"{path}\""
    try:
        module = (importlib.import_module(module_name) if module_name
                  else torch.optim.lr_scheduler)
    except Exception as exc:  # noqa: BLE001 (any failure of a third-party import)
        raise ProfileError(f"{where} does not import: {type(exc).__name__}: {exc}",
                           "check the spelling and that its package is installed") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ProfileError(f"{where}: {module.__name__} has no class {class_name}",
                           "name a scheduler class such as \"StepLR\" or "
                           "\"torch.optim.lr_scheduler.CosineAnnealingLR\"")
    return cls
