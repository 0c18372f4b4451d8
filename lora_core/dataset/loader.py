"""Turning an epoch's batches into tensors (the only torch code in ``dataset/``).

Each dataset item *is* a batch (a list of plan item indices from one bucket, as sd-scripts
does), so the DataLoader runs with ``batch_size=None`` and no shuffling: the order was
decided by ``plan.epoch_batches`` from (seed, epoch). Per-sample randomness (caption
shuffling) comes from :func:`captions.sample_rng` of (seed, epoch, position), so the same
batch gets the same captions whichever worker loads it, and a resumed run sees what an
uninterrupted one would. Workers prefetch the next batches while the model trains.
"""

from __future__ import annotations

import signal
from typing import Any

import numpy as np
import torch

from lora_core.dataset.captions import process_caption, sample_rng
from lora_core.dataset.images import load_training_image
from lora_core.dataset.plan import TrainingPlan
from lora_core.errors import LoraError
from lora_core.profile import DatasetSection


def pixels_to_tensor(image) -> torch.Tensor:
    """PIL RGB → float tensor (3, H, W) in [-1, 1] (ToTensor + Normalize(0.5, 0.5))."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class EpochBatches(torch.utils.data.Dataset):
    def __init__(self, plan: TrainingPlan, ds: DatasetSection, batches: list[list[int]],
                 seed: int, epoch: int, first_position: int) -> None:
        self.plan, self.ds, self.batches = plan, ds, batches
        self.seed, self.epoch, self.first_position = seed, epoch, first_position

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return self._load(index)
        except LoraError as exc:
            # Raised in a worker this would reach the loop as a traceback string; as data
            # it keeps its message and hint (the loop raises it again).
            return {"error": (exc.message, exc.hint)}

    def _load(self, index: int) -> dict[str, Any]:
        position = self.first_position + index
        pixels, captions, weights = [], [], []
        for slot, item_index in enumerate(self.batches[index]):
            item = self.plan.items[item_index]
            image = load_training_image(item.record.path, item.bucket_reso, item.resized_size)
            pixels.append(pixels_to_tensor(image))
            rng = sample_rng(self.seed, self.epoch, position, slot)
            captions.append(process_caption(item.record.caption, rng,
                                            shuffle=self.ds.shuffle_caption,
                                            keep_tokens=self.ds.keep_tokens))
            weights.append(item.loss_weight)
        return {"pixel_values": torch.stack(pixels), "captions": captions,
                "loss_weights": torch.tensor(weights, dtype=torch.float32)}


def process_batches(batches: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """This process's share of an epoch's batches. Every process gets the same count (the
    list wraps around to fill the last round, like accelerate's even_batches), so under
    DDP no process waits forever for a gradient the others never compute."""
    if world <= 1 or not batches:
        return batches
    per = -(-len(batches) // world)
    padded = (batches * (per * world // len(batches) + 1))[:per * world]
    return padded[rank::world]


def make_epoch_loader(plan: TrainingPlan, ds: DatasetSection, batches: list[list[int]],
                      state, device: torch.device) -> torch.utils.data.DataLoader:
    """A loader over this process's batches of one epoch, starting where ``state`` is."""
    remaining = batches[state.batch_in_epoch:]
    dataset = EpochBatches(plan, ds, remaining, state.seed, state.epoch, state.batch_in_epoch)
    workers = min(ds.max_data_loader_n_workers, len(remaining))
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers,
        pin_memory=device.type == "cuda", prefetch_factor=2 if workers else None,
        worker_init_fn=_ignore_ctrl_c if workers else None)


def _ignore_ctrl_c(worker_id: int) -> None:
    """Ctrl+C is the training process's to handle (stop after the step, then save)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
