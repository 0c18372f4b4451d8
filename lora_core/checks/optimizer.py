"""Optimizer checks: ``optimizer_args``, the schedule that goes with the optimizer, and
whether the installed optimizer takes the arguments it is given.

The arguments are held against the optimizer class's own signature, read from its source
file with ``ast`` (:func:`static_signature`): the class is never imported, so ``lora-train
check`` knows in milliseconds, without torch or bitsandbytes, that ``betas=0.9`` is one number
where AdamW8bit takes two, or that ``weight_decai`` is no argument of it. A value must have
the shape of the parameter's default (a pair for a pair, a number for a number, true/false
for a flag). ``run`` asks the same function, with the imported class's signature when the
source cannot be read, so both say the same.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from typing import Any

from lora_core.checks import class_source
from lora_core.checks.problem import Problem, error, warning
from lora_core.errors import ProfileError
from lora_core.profile import OptimizerSection, Profile
from lora_core.training.optimizer_args import (
    ONE_LR_ONLY,
    OPTIMIZER_CLASSES,
    adafactor_relative_step,
    distinct_rates,
    effective_optimizer_args,
    given_optimizer_args,
    import_path_error,
    import_path_unimportable,
    missing_optimizer_package,
    optimizer_advisories,
    optimizer_args_list,
)
from lora_core.values import format_value

_ARGS = {"section": "optimizer", "key": "optimizer_args"}
ARGS_EXAMPLE = ('as a list, optimizer_args = ["weight_decay=0.1", "betas=0.9,0.99"], or as '
                'sd-scripts writes them, optimizer_args = "weight_decay=0.1 betas=0.9,0.99"')
_UNKNOWN = object()  # a default that is not a plain literal (float("inf"), a call)


def adafactor_relative(opt: OptimizerSection) -> bool:
    """AdaFactor with its relative step (its default); False when the args do not parse."""
    if opt.optimizer_type != "AdaFactor":
        return False
    try:
        return adafactor_relative_step(effective_optimizer_args(opt))
    except ProfileError:
        return False  # the bad argument is reported on its own


def profile_problems(p: Profile) -> list[Problem]:
    """What the profile alone says is wrong with the optimizer and its schedule."""
    opt, found = p.optimizer, []
    if opt.lr_scheduler in ("constant", "adafactor") and opt.lr_warmup_steps:
        found.append(error(f"`[optimizer] lr_warmup_steps` must be 0 with lr_scheduler = "
                           f"\"{opt.lr_scheduler}\" (use \"constant_with_warmup\" for a "
                           "warm-up)", section="optimizer", key="lr_warmup_steps"))
    if opt.lr_warmup_steps >= 1 and opt.lr_warmup_steps != int(opt.lr_warmup_steps):
        found.append(error(f"`[optimizer] lr_warmup_steps` = {format_value(opt.lr_warmup_steps)}"
                           ": use a whole number of steps, or a ratio below 1",
                           section="optimizer", key="lr_warmup_steps"))
    found += _rate_problems(p)
    try:
        args = given_optimizer_args(opt)
    except ProfileError as exc:
        return [*found, error(exc.message, f"{exc.hint}; {ARGS_EXAMPLE}", **_ARGS)]
    return found + _adafactor_problems(opt, args)


def _sides(p: Profile) -> tuple[bool, bool]:
    """(text encoder trained, U-Net trained)."""
    net = p.network
    return not net.network_train_unet_only, not net.network_train_text_encoder_only


def _rate_problems(p: Profile) -> list[Problem]:
    """Learning rates the optimizer cannot start with: none above 0 (nothing would be
    trained), or several for an optimizer that refuses them at its first step."""
    opt = p.optimizer
    if adafactor_relative(opt):
        return []  # AdaFactor's relative step ignores the rates
    rates = distinct_rates(opt, *_sides(p))
    rate = {"section": "optimizer", "key": "learning_rate"}
    if not rates:
        return [error("no parameters would be trained: every learning rate in use is 0",
                      "set `[optimizer] learning_rate` (or unet_lr / text_encoder_lr) above 0",
                      **rate)]
    if len(rates) > 1 and opt.optimizer_type in ONE_LR_ONLY:
        listed = ", ".join(f"{r:g}" for r in sorted(rates))
        return [error(f"`[optimizer] optimizer_type` = \"{opt.optimizer_type}\" refuses "
                      f"different learning rates per parameter group (here {listed}): it "
                      "stops at the first step", "use one learning rate (unet_lr and "
                      "text_encoder_lr unset or equal), without LoRA+ ratios or block "
                      "learning-rate weights", **rate)]
    return []


def _adafactor_problems(opt: OptimizerSection, args: dict[str, Any]) -> list[Problem]:
    """AdaFactor's relative_step computes its own learning rate, which only the "adafactor"
    schedule passes through (transformers' AdafactorSchedule), as in sd-scripts."""
    schedule = {"section": "optimizer", "key": "lr_scheduler"}
    if opt.optimizer_type != "AdaFactor":
        if opt.lr_scheduler == "adafactor":
            return [error("`[optimizer] lr_scheduler` = \"adafactor\" only works with "
                          "optimizer_type = \"AdaFactor\"", **schedule)]
        return []
    relative = args.get("relative_step", True)
    if args.get("warmup_init") and relative is False:
        return [error("`[optimizer] optimizer_args`: warmup_init=True needs relative_step=True "
                      "(AdaFactor's warm-up is part of its relative step size)", **_ARGS)]
    if relative and opt.lr_scheduler != "adafactor":
        return [error("`[optimizer] optimizer_type` = \"AdaFactor\" with relative_step (its "
                      "default) sets its own learning rate, so lr_scheduler must be "
                      "\"adafactor\"; or add \"relative_step=False\" (and "
                      "\"scale_parameter=False\", \"warmup_init=False\") to optimizer_args to "
                      f"use learning_rate and {opt.lr_scheduler}", **schedule)]
    if not relative and opt.lr_scheduler == "adafactor":
        return [error("`[optimizer] lr_scheduler` = \"adafactor\" needs AdaFactor's "
                      "relative_step; with relative_step=False pick another schedule "
                      "(constant_with_warmup is usual)", **schedule)]
    return []


# ----------------------------------------------------------------------------------------
# The installed optimizer


@dataclass(frozen=True)
class OptimizerSignature:
    """The keyword parameters of an optimizer's ``__init__`` and their defaults."""

    defaults: dict[str, Any]  # name -> default (_UNKNOWN when not a literal; None = any)
    var_keyword: bool  # takes **kwargs: any name is accepted

    @classmethod
    def of(cls, optimizer_class: type) -> OptimizerSignature:
        params = inspect.signature(optimizer_class.__init__).parameters
        defaults = {name: (p.default if p.default is not inspect.Parameter.empty
                           else _UNKNOWN)
                    for name, p in params.items() if name not in ("self", "params")}
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        return cls(defaults, var_kw)


def installed_optimizer_problems(opt: OptimizerSection,
                                 signature: OptimizerSignature | None = None) -> list[Problem]:
    """The optimizer's package is missing, or it does not take an argument it is given.
    ``signature`` defaults to the one read from the installed source. An optimizer named by
    its import path is read from its source too (:mod:`class_source`), never imported: the
    wizard runs this check as answers are typed and must not import torch. What the source
    cannot tell (a module that fails when imported) the run finds before any model loads
    (``session.run_checks`` imports the class)."""
    if signature is None and opt.optimizer_type not in OPTIMIZER_CLASSES:
        read = _import_path_problems(opt.optimizer_type)
        if isinstance(read, list):
            return read
        if read is None:
            return []  # the source cannot tell: run imports the class and asks again
        signature = read
    package = missing_optimizer_package(opt)
    if package:
        return [error(f"`[optimizer] optimizer_type` = \"{opt.optimizer_type}\" needs the "
                      f"{package} package, which is not installed",
                      f"pip install {package} (or choose another optimizer)",
                      section="optimizer", key="optimizer_type")]
    if signature is None:
        module, name, _ = OPTIMIZER_CLASSES[opt.optimizer_type]
        signature = static_signature(module, name)
        if signature is None:
            return []  # the source could not be read: run imports the class and asks again
    try:
        args = effective_optimizer_args(opt)
    except ProfileError:
        return []  # reported by profile_problems
    return signature_problems(opt, args, signature)


def signature_problems(opt: OptimizerSection, args: dict[str, Any],
                       signature: OptimizerSignature) -> list[Problem]:
    name, found = opt.optimizer_type, []
    given = optimizer_args_list(opt)
    if "lr" in args:
        found.append(error(f"`[optimizer] optimizer_args` {given}: the learning rate is not an "
                           "optimizer argument here", "set `[optimizer] learning_rate` "
                           "(and unet_lr / text_encoder_lr) instead", **_ARGS))
    unknown = [k for k in args if k != "lr" and k not in signature.defaults]
    if unknown and not signature.var_keyword:
        accepted = ", ".join(k for k in signature.defaults if k != "lr")
        found.append(error(f"`[optimizer] optimizer_args` {given}: {name} takes no argument "
                           f"{', '.join(repr(k) for k in unknown)}",
                           f"remove it; {name} accepts: {accepted}", **_ARGS))
    for key, value in args.items():
        default = signature.defaults.get(key, _UNKNOWN)
        expected = _shape_problem(value, default)
        if expected:
            found.append(error(f"`[optimizer] optimizer_args` {key}={_written(value)}: {name} "
                               f"expects {expected} for {key}",
                               f"write it like {key}={_written(default)}; {ARGS_EXAMPLE}",
                               **_ARGS))
    return found


def _written(value: Any) -> str:
    """A value as optimizer_args spell it: 0.9,0.99 for a tuple."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shape_problem(value: Any, default: Any) -> str | None:
    """What ``value`` should be when it does not have the shape of ``default``."""
    if default is _UNKNOWN or default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "True or False"
    if _is_number(default):
        return None if _is_number(value) else "a number"
    if isinstance(default, tuple) and all(_is_number(v) or v is None for v in default):
        if isinstance(value, (tuple, list)) and len(value) == len(default) \
                and all(_is_number(v) or v is None for v in value):
            return None
        return f"{len(default)} numbers"
    return None


def static_signature(module: str, class_name: str) -> OptimizerSignature | None:
    """The signature of ``module.class_name`` read from its source file, without importing
    anything; None when it cannot be read (the caller then imports the class)."""
    return _class_signature(class_source.find_name(module, class_name), 0)


def _class_signature(found: class_source.Found, depth: int) -> OptimizerSignature | None:
    """The class's own ``__init__``, else the first base's (in the order Python looks)."""
    if found.node is None or depth > 8:
        return None
    init = next((b for b in found.node.body
                 if isinstance(b, ast.FunctionDef) and b.name == "__init__"), None)
    if init is not None:
        return _from_function(init)
    for base in found.node.bases:
        if not isinstance(base, ast.Name):
            return None  # ``a.B`` or ``Generic[T]``: where the __init__ comes from is unsure
        signature = _class_signature(class_source.find_name(found.module, base.id), depth + 1)
        if signature is not None:
            return signature
    return None


def _import_path_problems(path: str) -> list[Problem] | OptimizerSignature | None:
    """An optimizer named by its import path, read from source: the problems that are sure
    (not installed, no such name, a module or function, a class that is no optimizer), or
    its signature; None when the source cannot tell (the run imports it and asks again
    before any model loads)."""
    module_name, _, class_name = path.rpartition(".")
    found = class_source.find_name(module_name, class_name)
    problem = None
    if found.kind == "uninstalled":
        problem = import_path_unimportable(
            path, f"is not installed (no package {module_name.split('.')[0]!r})")
    elif found.kind in ("nothing", "module", "function"):
        problem = import_path_error(path, found.kind if found.kind == "nothing"
                                    else f"a {found.kind}")
    elif found.kind == "class" and class_source.is_optimizer_class(found) is False:
        problem = import_path_error(path, "a class")
    if problem is not None:
        return [error(problem.message, problem.hint, section="optimizer",
                      key="optimizer_type")]
    return static_signature(module_name, class_name) if found.kind == "class" else None


def _from_function(init: ast.FunctionDef) -> OptimizerSignature:
    args = init.args
    positional = args.posonlyargs + args.args
    defaults: dict[str, Any] = {}
    padded = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for arg, default in zip(positional, padded, strict=True):
        defaults[arg.arg] = _literal(default)
    for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        defaults[arg.arg] = _literal(default)
    for name in ("self", "params"):
        defaults.pop(name, None)
    return OptimizerSignature(defaults, args.kwarg is not None)


def _literal(node: ast.expr | None) -> Any:
    if node is None:
        return _UNKNOWN
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return _UNKNOWN


def optimizer_notes(p: Profile) -> list[Problem]:
    """sd-scripts' optimizer warnings, as notes on optimizer_type."""
    return [warning(text, section="optimizer", key="optimizer_type")
            for text in optimizer_advisories(p.optimizer, *_sides(p))]
