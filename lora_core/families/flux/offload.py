"""Block swap and CPU-offloaded checkpointing: Flux's two ways to train in less GPU memory
(block swap is here; the offloaded checkpoint, which the SD U-Nets use too, is
``lora_core/models/offloaded_checkpointing.py``).

**Block swap** (sd-scripts' ``blocks_to_swap``): the weights of the last N blocks live in CPU
memory (pinned, on CUDA) and only the blocks being computed are on the GPU. sd-scripts splits
N as it does: ``N // 2`` double blocks and ``(N − N // 2)·2`` single blocks (a single block
is about half a double block), at least two of each kind staying resident.

How it stays correct: it runs with gradient checkpointing only (the check refuses it
otherwise), so autograd keeps no block's weights between a block's forward and its
backward; the backward recomputes each block, which brings its weights back. A swapped block
comes in by a forward pre-hook and the previous swapped block leaves when the next one comes
in (at most ``RESIDENT`` swapped blocks on the GPU at a time). The order of use is the
model's order forward and the reverse in backward, and each block's backward is done before
the block before it is recomputed, so a block never leaves while it is needed. An evicted
block's weights are an empty tensor on the GPU, so using one out of turn fails loudly
instead of computing with stale numbers. On CUDA the copy of the next block (in the
direction of travel) runs on a side stream while the current one computes, as sd-scripts'
offloader overlaps it.

**CPU-offloaded checkpointing** (``cpu_offload_checkpointing``): the inputs gradient
checkpointing keeps for each block's recompute are kept in CPU memory instead of on the GPU
(about 1 GB at Flux's size, ~15 % slower, as sd-scripts documents); not with block swap.
``Flux._run`` calls ``offloaded_checkpoint`` for each block.

On a CPU-only machine both run the same hooks and moves between "cpu" and "cpu": the losses
equal a run without them (tested), and the memory they save is a GPU matter (bench/gpu.sh).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from lora_core.families.flux.config import (  # noqa: F401  (re-exported)
    max_blocks_to_swap,
    split_blocks_to_swap,
)

RESIDENT = 2  # swapped blocks on the compute device at once: the one running and the next


class BlockSwapper:
    """Keeps the weights of ``blocks`` (a list of modules of one model) on ``offload``
    and moves each to ``device`` for its forward (and its recompute in backward)."""

    def __init__(self, blocks: list[nn.Module], device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.blocks = blocks
        self.index = {id(b): i for i, b in enumerate(blocks)}
        self.home: dict[int, list[tuple[nn.Parameter, Tensor]]] = {}
        self.resident: OrderedDict[int, None] = OrderedDict()
        self.pending: dict[int, object] = {}  # block index -> CUDA event of its copy
        self.last: int | None = None
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.handles = []
        for i, block in enumerate(blocks):
            tensors = []
            for p in block.parameters():
                if p.requires_grad:  # only the frozen base weights travel
                    continue
                home = p.data.to("cpu")
                if self.cuda:
                    home = home.pin_memory()
                tensors.append((p, home))
            self.home[i] = tensors
            self._evict(i)
            self.handles.append(block.register_forward_pre_hook(self._before_forward))

    def remove(self) -> None:
        """Undo: every block back on the compute device, hooks removed."""
        for handle in self.handles:
            handle.remove()
        for i in range(len(self.blocks)):
            self._bring_in(i)
        self.handles.clear()

    def _evict(self, i: int) -> None:
        for p, _ in self.home[i]:
            p.data = torch.empty(0, dtype=p.dtype, device=self.device)
        self.resident.pop(i, None)

    def _bring_in(self, i: int, wait: bool = True) -> None:
        if i in self.resident:
            if wait and i in self.pending:
                compute = torch.cuda.current_stream(self.device)
                compute.wait_event(self.pending.pop(i))
                # Allocated on the side stream, used on this one: the allocator must not
                # reuse the memory after an eviction until this stream's kernels are done.
                for p, _ in self.home[i]:
                    p.data.record_stream(compute)
            return
        if self.cuda and not wait:
            # The copy must not start before the compute stream is done with memory it
            # may reuse (the block evicted just before): sd-scripts synchronises here too.
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                for p, home in self.home[i]:
                    p.data = home.to(self.device, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.stream)
            self.pending[i] = event
        else:
            for p, home in self.home[i]:
                p.data = home.to(self.device)
        self.resident[i] = None

    # torch_compile compiles a block with its hooks: this one moves weights between devices
    # (side streams, events, p.data) and differs per block, which dynamo would trace anew for
    # every block until its recompile limit. It runs as plain Python, a break in the graph.
    @torch.compiler.disable
    def _before_forward(self, module: nn.Module, args) -> None:
        i = self.index[id(module)]
        self._bring_in(i)
        self.resident.move_to_end(i)
        # The direction of travel: forward in the forward pass, back in the recompute.
        step = -1 if self.last is not None and i < self.last else 1
        self.last = i
        # Every other swapped block is done with (see the module docstring).
        for other in [j for j in self.resident if j != i]:
            self._evict(other)
        following = i + step
        if self.cuda and 0 <= following < len(self.blocks):
            self._bring_in(following, wait=False)  # overlaps this block's compute

