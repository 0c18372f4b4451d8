"""Rules for the learning-rate schedule and the sd-scripts options that shape it.

The schedule options each belong to some schedules only (sd-scripts' ``get_scheduler_fix``):
``lr_decay_steps`` to warmup_stable_decay, ``lr_scheduler_min_lr_ratio`` to
cosine_with_min_lr (where it is needed) and warmup_stable_decay, ``lr_scheduler_timescale``
to inverse_sqrt; ``lr_scheduler_type`` replaces ``lr_scheduler`` with any class. A value set
where it means nothing is a warning; a combination that cannot run is an error. Pure Python:
``training.optim`` builds the schedule these rules allow.
"""

from __future__ import annotations

import ast

from lora_core.checks.problem import Problem, error, warning
from lora_core.profile import Profile
from lora_core.training.optimizer_args import steps_or_ratio
from lora_core.values import format_value

# Option -> the schedules it acts on.
_ONLY_FOR = {
    "lr_decay_steps": ("warmup_stable_decay",),
    "lr_scheduler_min_lr_ratio": ("cosine_with_min_lr", "warmup_stable_decay"),
    "lr_scheduler_timescale": ("inverse_sqrt",),
}


def schedule_problems(p: Profile) -> list[Problem]:
    """Every schedule setting that cannot run, or that has no effect."""
    opt, found = p.optimizer, []

    def add(key: str, message: str, hint: str = "", kind=error) -> None:
        found.append(kind(message, hint, section="optimizer", key=key))

    parsed = _arg_problems(opt.lr_scheduler_args)
    for message in parsed:
        add("lr_scheduler_args", message, "write each as name=value with a Python literal "
            "value, like \"gamma=0.5\" or \"step_rules='1:10,0.1'\"")
    if opt.lr_scheduler_type:
        if opt.lr_warmup_steps:
            add("lr_warmup_steps", f"`[optimizer] lr_warmup_steps` must be 0 with "
                f"lr_scheduler_type = {format_value(opt.lr_scheduler_type)}: that class "
                "gets no warm-up (sd-scripts stops there too)",
                "pass the class its own warm-up arguments through lr_scheduler_args")
        return found  # lr_scheduler and its options are not used
    if opt.lr_scheduler == "piecewise_constant":
        if opt.lr_warmup_steps:
            add("lr_warmup_steps", "`[optimizer] lr_warmup_steps` must be 0 with lr_scheduler "
                "= \"piecewise_constant\": its step_rules say the whole schedule")
        if not any(a.split("=", 1)[0].strip() == "step_rules" for a in opt.lr_scheduler_args):
            add("lr_scheduler_args", "`[optimizer] lr_scheduler` = \"piecewise_constant\" "
                "needs its steps in lr_scheduler_args",
                "add \"step_rules='1:100,0.1:200,0.01'\" (multiplier 1 until step 100, 0.1 "
                "until step 200, then 0.01)")
    if opt.lr_scheduler == "cosine_with_min_lr" and opt.lr_scheduler_min_lr_ratio is None:
        add("lr_scheduler_min_lr_ratio", "`[optimizer] lr_scheduler` = \"cosine_with_min_lr\" "
            "needs lr_scheduler_min_lr_ratio (the lowest rate as a share of the learning "
            "rate)", "set lr_scheduler_min_lr_ratio, like 0.1")
    if opt.lr_decay_steps >= 1 and opt.lr_decay_steps != int(opt.lr_decay_steps):
        add("lr_decay_steps", f"`[optimizer] lr_decay_steps` = "
            f"{format_value(opt.lr_decay_steps)}: use a whole number of steps, or a ratio of "
            "all steps below 1")
    if opt.lr_scheduler == "warmup_stable_decay" and not opt.lr_decay_steps:
        add("lr_decay_steps", "`[optimizer] lr_scheduler` = \"warmup_stable_decay\" with "
            "lr_decay_steps = 0 never decays: the rate stays at learning_rate after the "
            "warm-up", "set lr_decay_steps, like 0.2 for the last fifth of the run",
            kind=warning)
    for key, schedules in _ONLY_FOR.items():
        if getattr(opt, key) and opt.lr_scheduler not in schedules:
            add(key, f"`[optimizer] {key}` has no effect with lr_scheduler = "
                f"\"{opt.lr_scheduler}\" (only with {' / '.join(schedules)})",
                "remove it, or choose one of those schedules", kind=warning)
    return found


def plan_schedule_problems(p: Profile, max_train_steps: int, warmup_steps: int
                           ) -> list[Problem]:
    """What the run's length rules out: a warmup_stable_decay whose warm-up and decay
    together outlast the run (it would have no stable phase)."""
    opt = p.optimizer
    if opt.lr_scheduler_type or opt.lr_scheduler != "warmup_stable_decay":
        return []
    decay = steps_or_ratio(opt.lr_decay_steps, max_train_steps)
    if warmup_steps + decay <= max_train_steps:
        return []
    return [error(f"`[optimizer] lr_warmup_steps` ({warmup_steps} steps) and lr_decay_steps "
                  f"({decay} steps) add up to more than the run's {max_train_steps} steps, so "
                  "warmup_stable_decay would have no stable phase",
                  "lower lr_warmup_steps or lr_decay_steps (a value below 1 is a share of the "
                  "run)", section="optimizer", key="lr_decay_steps")]


def _arg_problems(args: list[str]) -> list[str]:
    found = []
    for item in args:
        key, sep, raw = item.partition("=")
        where = f"`[optimizer] lr_scheduler_args` item {item!r}"
        if not sep or not key.strip() or not raw.strip():
            found.append(f"{where} is not of the form name=value")
            continue
        try:
            ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            found.append(f"{where}: {raw.strip()!r} is not a Python literal (a number, "
                         "True/False, or a quoted string)")
    return found
