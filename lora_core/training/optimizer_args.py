"""Optimizer settings read without torch: ``optimizer_args``, effective rates, advisories.

Pure Python: the profile check, ``lora-train check`` and the wizard use this without
importing torch or any optimizer package. ``optimizer_args`` ("name=value" strings) are read
with ``ast.literal_eval`` as sd-scripts does, so ``betas=0.9,0.99`` becomes a tuple.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from typing import Any

from lora_core.errors import ProfileError
from lora_core.profile import OptimizerSection, conditional_default


def parse_optimizer_args(items: list[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not name.isidentifier() or not raw:
            raise ProfileError(
                f"`[optimizer] optimizer_args` item {item!r} is not of the form name=value",
                'write each argument like "weight_decay=0.1" or "betas=0.9,0.99"')
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            lowered = raw.lower()
            if lowered in ("true", "false"):
                value = lowered == "true"
            else:
                raise ProfileError(
                    f"`[optimizer] optimizer_args` item {item!r}: {raw!r} is not a number, "
                    "tuple, boolean or quoted string",
                    'write numbers like 0.1, tuples like 0.9,0.99, booleans like True') from None
        parsed[name] = value
    return parsed


# These raise "Setting different lr values in different parameter groups is only supported
# for values of 0" at their first step (dadaptation 3.2, prodigyopt 1.1); DAdaptAdaGrad,
# DAdaptAdan and DAdaptAdanIP instead use the first group's rate for every group.
ONE_LR_ONLY = ("DAdaptation", "DAdaptAdamPreprint", "DAdaptAdam", "DAdaptLion", "DAdaptSGD",
               "Prodigy")


# optimizer_type → (module, class, pip package that provides it). Pure data, so that
# `lora-train check` can tell a missing package without importing torch.
OPTIMIZER_CLASSES: dict[str, tuple[str, str, str]] = {
    "AdamW": ("torch.optim", "AdamW", "torch"),
    "AdamW8bit": ("bitsandbytes.optim", "AdamW8bit", "bitsandbytes"),
    "PagedAdamW8bit": ("bitsandbytes.optim", "PagedAdamW8bit", "bitsandbytes"),
    "PagedAdamW": ("bitsandbytes.optim", "PagedAdamW", "bitsandbytes"),
    "PagedAdamW32bit": ("bitsandbytes.optim", "PagedAdamW32bit", "bitsandbytes"),
    "Lion": ("lion_pytorch", "Lion", "lion-pytorch"),
    "Lion8bit": ("bitsandbytes.optim", "Lion8bit", "bitsandbytes"),
    "PagedLion8bit": ("bitsandbytes.optim", "PagedLion8bit", "bitsandbytes"),
    "SGDNesterov": ("torch.optim", "SGD", "torch"),
    "SGDNesterov8bit": ("bitsandbytes.optim", "SGD8bit", "bitsandbytes"),
    "DAdaptation": ("dadaptation.experimental", "DAdaptAdamPreprint", "dadaptation"),
    "DAdaptAdamPreprint": ("dadaptation.experimental", "DAdaptAdamPreprint", "dadaptation"),
    "DAdaptAdaGrad": ("dadaptation", "DAdaptAdaGrad", "dadaptation"),
    "DAdaptAdam": ("dadaptation", "DAdaptAdam", "dadaptation"),
    "DAdaptAdan": ("dadaptation", "DAdaptAdan", "dadaptation"),
    "DAdaptAdanIP": ("dadaptation.experimental", "DAdaptAdanIP", "dadaptation"),
    "DAdaptLion": ("dadaptation", "DAdaptLion", "dadaptation"),
    "DAdaptSGD": ("dadaptation", "DAdaptSGD", "dadaptation"),
    "Prodigy": ("prodigyopt", "Prodigy", "prodigyopt"),
    "AdaFactor": ("transformers.optimization", "Adafactor", "transformers"),
    "AdamWScheduleFree": ("schedulefree", "AdamWScheduleFree", "schedulefree"),
    "RAdamScheduleFree": ("schedulefree", "RAdamScheduleFree", "schedulefree"),
    "SGDScheduleFree": ("schedulefree", "SGDScheduleFree", "schedulefree"),
}


def is_import_path(value: str) -> bool:
    """``module.Class`` (``package.module.Class``...): how sd-scripts names any optimizer."""
    parts = value.split(".")
    return len(parts) >= 2 and all(part.isidentifier() for part in parts)


def optimizer_location(name: str) -> tuple[str, str, str]:
    """(module, class, pip package) of an optimizer_type: a known name, or an import path
    (``torch.optim.RAdam``: the package is the path's first part)."""
    if name in OPTIMIZER_CLASSES:
        return OPTIMIZER_CLASSES[name]
    module, _, class_name = name.rpartition(".")
    return module, class_name, module.split(".")[0]


def import_path_error(path: str, what: str) -> ProfileError:
    """An optimizer named by its import path that is no optimizer class (``what``: "nothing",
    "a module", "a function", ...): the words ``lora-train check`` (read from the source)
    and the run (the imported module) both use."""
    module_name, _, class_name = path.rpartition(".")
    return ProfileError(f"`[optimizer] optimizer_type` = \"{path}\": {module_name}.{class_name} "
                        f"is {what}, not a torch optimizer class",
                        f"name a torch.optim.Optimizer subclass in {module_name}")


def import_path_unimportable(path: str, reason: str) -> ProfileError:
    """An optimizer named by its import path whose module does not import (``reason``)."""
    module_name = path.rpartition(".")[0]
    return ProfileError(f"`[optimizer] optimizer_type` = \"{path}\" does not import: module "
                        f"{module_name} {reason}",
                        "check the spelling of the module and that its package is "
                        "installed in lora-tui's environment; or pick a listed "
                        "optimizer_type, like \"AdamW\"")


def is_schedule_free(name: str) -> bool:
    """The Schedule-Free optimizers (by name or import path), as sd-scripts tells them: they
    need no learning-rate schedule, and train()/eval() switching around sampling and saving
    (the weights to use are their average, not the ones a step trains)."""
    return name.lower().endswith("schedulefree")


def missing_optimizer_package(opt: OptimizerSection) -> str | None:
    """The pip package the optimizer needs when it is not installed (found without
    importing it), else None."""
    import importlib.util

    module, _cls, package = optimizer_location(opt.optimizer_type)
    return None if importlib.util.find_spec(module.split(".")[0]) is not None else package


# The arguments LoRA Easy Training Scripts fills in for the AdamW family; other optimizers
# take different ones (AdaFactor has no betas), so they get none unless the profile says.
ADAMW_FAMILY = ("AdamW", "AdamW8bit", "PagedAdamW8bit", "PagedAdamW", "PagedAdamW32bit")
ADAMW_DEFAULT_ARGS = ("weight_decay=0.1", "betas=0.9,0.99")

# full_bf16 (issue 28): the optimizer types whose updates lora-train computes in float32 and
# writes to the bf16 weights (and AdamW's bf16 moments) with stochastic rounding
# (training.stochastic_rounding); the others round each update to nearest.
STOCHASTIC_ROUNDING_TYPES = frozenset({"AdamW", "torch.optim.AdamW", "torch.optim.adamw.AdamW"})
STOCHASTIC_ROUNDING_8BIT_TYPES = frozenset({"AdamW8bit", "bitsandbytes.optim.AdamW8bit"})


def rounds_stochastically(optimizer_type: str, full_bf16: bool) -> bool:
    """Whether a run's bf16 LoRA weights are rounded stochastically: full_bf16 with torch's
    AdamW or bitsandbytes' AdamW8bit."""
    return full_bf16 and optimizer_type in (STOCHASTIC_ROUNDING_TYPES
                                            | STOCHASTIC_ROUNDING_8BIT_TYPES)


def optimizer_args_list(opt: OptimizerSection) -> list[str]:
    """The profile's optimizer_args, or the defaults for its optimizer when unset."""
    if opt.optimizer_args is not None:
        return list(opt.optimizer_args)
    return list(ADAMW_DEFAULT_ARGS) if opt.optimizer_type in ADAMW_FAMILY else []


@lru_cache(maxsize=32)
def _parsed_once(items: tuple[str, ...]) -> dict[str, Any]:
    return parse_optimizer_args(list(items))


def given_optimizer_args(opt: OptimizerSection) -> dict[str, Any]:
    """The profile's optimizer_args (or its optimizer's defaults) parsed: once per distinct
    value (the profile check parses them when the profile is read; the check, the run and
    ``ss_optimizer`` ask again and get the same, as a fresh dict). ProfileError when an
    item is malformed."""
    return dict(_parsed_once(tuple(optimizer_args_list(opt))))


def effective_optimizer_args(opt: OptimizerSection) -> dict[str, Any]:
    """The keyword arguments the optimizer gets, with the defaults sd-scripts adds
    (§8.1): ``momentum=0.9`` for the Nesterov SGDs (Nesterov needs momentum) and
    ``relative_step=True`` for AdaFactor. ``nesterov=True`` is passed separately."""
    args = given_optimizer_args(opt)
    if opt.optimizer_type in ("SGDNesterov", "SGDNesterov8bit"):
        args.setdefault("momentum", 0.9)
    elif opt.optimizer_type == "AdaFactor":
        args.setdefault("relative_step", True)
    return args


def adafactor_relative_step(args: dict[str, Any]) -> bool:
    """AdaFactor computes its own step size with relative_step (its default), which
    warmup_init also needs (sd-scripts turns relative_step on for it)."""
    return bool(args.get("relative_step", True) or args.get("warmup_init", False))


def steps_or_ratio(value: float, max_train_steps: int) -> int:
    """A step count as lr_warmup_steps / lr_decay_steps write it: below 1 a ratio of all
    steps, else a number of steps (sd-scripts' ``int_or_float``)."""
    return int(value * max_train_steps) if 0 < value < 1 else int(value)


def text_encoder_lrs(opt: OptimizerSection) -> tuple[float, float]:
    """(text encoder 1, text encoder 2) rates. ``text_encoder_lr`` unset: ``learning_rate``
    for both; one number: that for both; two (SDXL's ``--text_encoder_lr A B``): each
    encoder its own, as sd-scripts' ``prepare_optimizer_params_with_multiple_te_lrs``. A
    model with one text encoder uses the first."""
    value = opt.text_encoder_lr
    if value is None:
        return opt.learning_rate, opt.learning_rate
    if isinstance(value, (tuple, list)):
        return float(value[0]), float(value[-1])
    return float(value), float(value)


def group_learning_rates(opt: OptimizerSection) -> tuple[float, float]:
    """(text-encoder rate, U-Net rate): each falls back to ``learning_rate`` when unset
    (the first text encoder's rate: see :func:`text_encoder_lrs`)."""
    te_lr = text_encoder_lrs(opt)[0]
    unet_lr = opt.unet_lr if opt.unet_lr is not None else opt.learning_rate
    return te_lr, unet_lr


def loraplus_ratios(opt: OptimizerSection) -> tuple[float | None, float | None]:
    """(text-encoder, U-Net) LoRA+ ratios; None means LoRA+ is off for that side.

    sd-scripts takes ``loraplus_<side>_lr_ratio or loraplus_lr_ratio``, so a side ratio of 0
    falls back to the shared one as well.
    """
    return (opt.loraplus_text_encoder_lr_ratio or opt.loraplus_lr_ratio,
            opt.loraplus_unet_lr_ratio or opt.loraplus_lr_ratio)


def distinct_rates(opt: OptimizerSection, trains_text_encoder: bool = True,
                   trains_unet: bool = True) -> set[float]:
    """The non-zero rates the parameter groups get (pure Python)."""
    from lora_core.network.blocks import block_lr_weights

    te_lr, unet_lr = group_learning_rates(opt)
    te_ratio, unet_ratio = loraplus_ratios(opt)
    try:
        weights = block_lr_weights(opt.down_lr_weight, opt.mid_lr_weight, opt.up_lr_weight,
                                   opt.block_lr_zero_threshold)
    except ProfileError:
        weights = None  # reported by the profile check itself
    # Slot 0 (BASE) holds no module, so its weight makes no group.
    unet_rates = {unet_lr * w for w in (weights[1:] if weights else [1.0])}
    rates: set[float] = set()
    if trains_text_encoder:
        for rate in set(text_encoder_lrs(opt)):
            rates.add(rate)
            if te_ratio is not None:
                rates.add(rate * te_ratio)
    if trains_unet:
        rates |= unet_rates
        if unet_ratio is not None:
            rates |= {r * unet_ratio for r in unet_rates}
    return {r for r in rates if r > 0}


def optimizer_advisories(opt: OptimizerSection, trains_text_encoder: bool = True,
                         trains_unet: bool = True) -> list[str]:
    """sd-scripts' optimizer warnings (train_util.get_optimizer), for `lora-train check` and
    the run's start. Pure Python: imports neither torch nor any optimizer package. (One
    learning rate for optimizers that refuse several is an error: ``checks.optimizer``.)"""
    name = opt.optimizer_type
    try:
        args = effective_optimizer_args(opt)
    except ProfileError:
        return []  # the profile check reports malformed optimizer_args
    notes = []
    # The rate the profile declares for optimizers that find their own step size (1.0).
    usual = conditional_default("optimizer", "learning_rate", lambda _, key: getattr(opt, key))
    if usual is not None:
        te_lr, unet_lr = group_learning_rates(opt)
        low = sorted({r for r in (te_lr, unet_lr) if 0 < r <= 0.1})
        if low:
            notes.append(
                f"{name} finds its own step size and multiplies it by the learning rate; "
                f"{low[0]:g} is very low: use a learning_rate around {usual} (and leave "
                "unet_lr / text_encoder_lr unset)")
        rates = distinct_rates(opt, trains_text_encoder, trains_unet)
        if len(rates) > 1 and name not in ONE_LR_ONLY:
            listed = ", ".join(f"{r:g}" for r in sorted(rates))
            notes.append(
                f"{name} uses only the first parameter group's learning rate for all "
                f"groups, so the different rates here ({listed}) have no effect")
    elif is_schedule_free(name):
        if opt.lr_scheduler != "constant" or opt.lr_warmup_steps:
            notes.append(
                f"{name} needs no learning-rate schedule, so lr_scheduler "
                f"\"{opt.lr_scheduler}\"" + (" and lr_warmup_steps are" if opt.lr_warmup_steps
                                              else " is")
                + " not used (as in sd-scripts); for a warm-up add \"warmup_steps=N\" to "
                "optimizer_args")
    elif name == "AdaFactor":
        if adafactor_relative_step(args):
            ignored = [k for k in ("unet_lr", "text_encoder_lr", "loraplus_lr_ratio",
                                   "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
                       if getattr(opt, k) is not None]
            ignored += [k for k in ("down_lr_weight", "mid_lr_weight", "up_lr_weight")
                        if getattr(opt, k).strip()]
            if ignored:
                notes.append(
                    "AdaFactor with relative_step sets one step size for every parameter, "
                    f"so {', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} ignored")
            if opt.learning_rate != 0:
                notes.append(
                    f"AdaFactor with relative_step computes its own learning rate; "
                    f"learning_rate {opt.learning_rate:g} is only what the adafactor schedule "
                    "reports before the first step")
        else:
            if opt.max_grad_norm != 0:
                notes.append("AdaFactor without relative_step clips updates itself; consider "
                             "max_grad_norm = 0 (gradient clipping is on)")
            if opt.lr_scheduler != "constant_with_warmup":
                notes.append("AdaFactor without relative_step works best with lr_scheduler = "
                             "\"constant_with_warmup\"")
            if args.get("clip_threshold", 1.0) != 1.0:
                notes.append("AdaFactor: clip_threshold=1.0 is recommended in optimizer_args")
    return notes
