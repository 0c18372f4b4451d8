"""Gradient checkpointing whose saved block inputs wait in CPU memory: sd-scripts'
``cpu_offload_checkpointing``, for any model's blocks (the Flux transformer's, the SD 1.x /
2.x / SDXL U-Nets' resnets and transformer blocks).

With gradient checkpointing (torch's non-reentrant ``checkpoint``) a block keeps nothing of
its forward but its inputs, and runs again in the backward from them. Here the inputs are
copied to CPU memory before the checkpoint keeps them (``to_cpu``: from a GPU into pinned
memory, so the copies back need not wait), and the block, on entry, copies them back to the
compute device, in the forward and again in the recompute (``offloaded``). The GPU copies
are freed when nothing else holds them; what the model holds anyway stays (a U-Net's skip
connections, the text conditioning every block reads), so the saving is the block inputs
that only the checkpoint kept: measured on a GPU (bench/gpu.sh), at some speed cost (about
15 % for Flux, as sd-scripts documents).

On a CPU the copies are from "cpu" to "cpu", which torch skips (the same tensor comes
back): the lever changes nothing there, and the gradients equal plain checkpointing's
(tested).

The random state: torch's checkpoint restores, for the recompute, the random state of the
devices its inputs are on; with the inputs in CPU memory it would restore the CPU's only,
and a block drawing random numbers on the GPU (a LoRA's dropout) would draw other ones in
the recompute than in the forward. An empty tensor on the compute device goes in with the
inputs, so the checkpoint keeps that device's random state too.

Nothing here is family-specific; it must not import a family.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

CPU = torch.device("cpu")


def to_cpu(value: Any) -> Any:
    """A tensor copied into CPU memory (the same tensor when it is there already); anything
    else as it is. From a GPU the copy is non-blocking, which torch makes into pinned
    memory; the copy back is queued behind it on the same stream, and nothing reads it on
    the CPU side."""
    if isinstance(value, Tensor) and value.device != CPU:
        return value.to(CPU, non_blocking=True)
    return value


def to_device(value: Any, device: torch.device) -> Any:
    """A tensor moved to ``device`` (itself when it is there); anything else as it is."""
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    return value


def offloaded(block: Callable[..., Any]) -> Callable[..., Any]:
    """``block`` as a function of (an empty tensor on the compute device, its inputs), the
    inputs arriving from CPU memory and moved to that device to compute."""
    def run(anchor: Tensor, *args: Any) -> Any:
        return block(*(to_device(a, anchor.device) for a in args))

    return run


def offloaded_checkpoint(block: Callable[..., Any], *args: Any) -> Any:
    """``checkpoint(block, *args)`` with the inputs it keeps for the backward in CPU memory.
    The compute device is the first tensor input's. Its signature is diffusers'
    ``gradient_checkpointing_func`` (``ModelMixin.enable_gradient_checkpointing``)."""
    device = next((a.device for a in args if isinstance(a, Tensor)), None)
    if device is None:  # nothing to keep
        return checkpoint(block, *args, use_reentrant=False)
    anchor = torch.empty(0, device=device)  # see the module docstring: the random state
    return checkpoint(offloaded(block), anchor, *(to_cpu(a) for a in args),
                      use_reentrant=False)
