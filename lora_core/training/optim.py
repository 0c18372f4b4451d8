"""Optimizer and learning-rate schedule built from the profile's [optimizer] section.

Parameter groups follow sd-scripts (kohya-compat.md §6.6): text-encoder LoRA parameters
at ``text_encoder_lr`` (else ``learning_rate``), U-Net LoRA parameters at ``unet_lr`` (else
``learning_rate``); a group whose rate is 0 is left out (its modules stay in the file,
untrained). Schedules come from diffusers' ``get_scheduler``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from lora_core.errors import ProfileError
from lora_core.network.lora import LoRANetwork
from lora_core.profile import OptimizerSection
from lora_core.training.optimizer_args import parse_optimizer_args

log = logging.getLogger(__name__)


@dataclass
class ParamGroupSpec:
    name: str  # "textencoder" or "unet", as sd-scripts logs them (lr/textencoder, lr/unet)
    params: list[torch.nn.Parameter]
    lr: float


def param_groups(network: LoRANetwork, opt: OptimizerSection) -> list[ParamGroupSpec]:
    groups = []
    te_lr = opt.text_encoder_lr if opt.text_encoder_lr is not None else opt.learning_rate
    unet_lr = opt.unet_lr if opt.unet_lr is not None else opt.learning_rate
    if network.text_encoder_names and te_lr > 0:
        groups.append(ParamGroupSpec("textencoder",
                                     network.parameters_of(network.text_encoder_names), te_lr))
    if network.unet_names and unet_lr > 0:
        groups.append(ParamGroupSpec("unet", network.parameters_of(network.unet_names), unet_lr))
    if not groups:
        raise ProfileError("no parameters would be trained: every learning rate in use is 0 "
                           "or no LoRA modules were created",
                           "set `[optimizer] learning_rate` (or unet_lr / text_encoder_lr) "
                           "above 0")
    return groups


def _optimizer_class(name: str) -> type:
    if name == "AdamW":
        return torch.optim.AdamW
    if name == "AdamW8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ProfileError("optimizer AdamW8bit needs the bitsandbytes package",
                               "pip install bitsandbytes, or set optimizer_type = \"AdamW\""
                               ) from None
        return bnb.optim.AdamW8bit
    raise AssertionError(f"optimizer {name!r} passed profile validation")  # unreachable


def build_optimizer(groups: list[ParamGroupSpec], opt: OptimizerSection
                    ) -> torch.optim.Optimizer:
    cls = _optimizer_class(opt.optimizer_type)
    kwargs = parse_optimizer_args(opt.optimizer_args)
    try:
        optimizer = cls([{"params": g.params, "lr": g.lr, "name": g.name} for g in groups],
                        lr=opt.learning_rate, **kwargs)
    except TypeError as exc:
        raise ProfileError(f"`[optimizer] optimizer_args` {opt.optimizer_args} do not fit "
                           f"{opt.optimizer_type}: {exc}",
                           "remove or rename the argument named above") from None
    return optimizer


OPTIMIZER_CLASS_PATHS = {"AdamW": "torch.optim.adamw.AdamW",
                         "AdamW8bit": "bitsandbytes.optim.adamw.AdamW8bit"}


def optimizer_description(opt: OptimizerSection) -> str:
    """``ss_optimizer`` in sd-scripts' format: ``<module>.<Class>(k=v,...)``."""
    described = ",".join(f"{k}={v}" for k, v in parse_optimizer_args(opt.optimizer_args).items())
    return OPTIMIZER_CLASS_PATHS[opt.optimizer_type] + (f"({described})" if described else "")


def build_scheduler(optimizer: torch.optim.Optimizer, opt: OptimizerSection,
                    max_train_steps: int, warmup_steps: int, num_processes: int = 1) -> Any:
    """The schedule; ``warmup_steps`` comes from the plan (a ratio is already resolved)."""
    from diffusers.optimization import get_scheduler

    # accelerate steps a prepared scheduler once per process, hence the product (§8.2).
    total = max_train_steps * num_processes
    warmup = warmup_steps * num_processes
    kwargs: dict[str, Any] = {"num_warmup_steps": warmup, "num_training_steps": total}
    if opt.lr_scheduler == "cosine_with_restarts":
        kwargs["num_cycles"] = opt.lr_scheduler_num_cycles
    elif opt.lr_scheduler == "polynomial":
        kwargs["power"] = opt.lr_scheduler_power
    elif opt.lr_scheduler == "constant":
        kwargs = {}
    elif opt.lr_scheduler == "constant_with_warmup":
        kwargs = {"num_warmup_steps": warmup}
    return get_scheduler(opt.lr_scheduler, optimizer, **kwargs)
