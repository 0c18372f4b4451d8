"""Turning an epoch's batches into tensors (the only torch code in ``dataset/``).

Each dataset item *is* a batch (a list of plan item indices from one bucket, as sd-scripts
does), so the DataLoader runs with ``batch_size=None`` and no shuffling: the order was
decided by ``plan.epoch_batches`` from (seed, epoch). Workers prefetch the next batches
while the model trains.

Per-sample randomness is a pure function of where the sample is in the run, so the same
batch gets the same captions and pixels whichever worker loads it, and a resumed run sees
what an uninterrupted one would. Two separate random sources per sample (epoch 0-based,
position = index of the batch in this process's list for the epoch, slot = index in the
batch):

* captions: ``captions.sample_rng(seed, epoch, position, slot)``;
* pixels (flip, random crop, colour): ``images.augment_rng(seed, epoch, position, slot)``.

Keeping them apart means turning an augmentation on or off never changes the captions, and
the latent-cache path, which draws only the flip, mirrors exactly the samples the pixel path
would have mirrored.

Every option comes from the subset the image belongs to
(``plan.subsets[item.subset_index].scan.options``), never from the profile.
"""

from __future__ import annotations

import signal
from typing import Any

import numpy as np
import torch

from lora_core.dataset.buckets import crop_ltrb_for_sdxl
from lora_core.dataset.captions import process_caption, sample_rng
from lora_core.dataset.images import augment_rng, draw_flip, load_mask, load_sample
from lora_core.dataset.plan import TrainingPlan
from lora_core.errors import DatasetError, LoraError
from lora_core.profile import DatasetSection


def pixels_to_tensor(image) -> torch.Tensor:
    """PIL RGB → float tensor (3, H, W) in [-1, 1] (ToTensor + Normalize(0.5, 0.5))."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def size_conditioning(image_size: tuple[int, int], bucket_reso: tuple[int, int],
                      flipped: bool) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """SDXL's size conditioning of one sample: ``(original (h, w), crop (top, left),
    target (h, w))`` (kohya-compat.md §10).

    ``image_size`` is the image file's (w, h) before any resize, ``bucket_reso`` the bucket's
    (w, h). The crop is sd-scripts' ``crop_ltrb`` (§4.3): computed as if centred even with
    ``random_crop``, its left edge mirrored with the flip; the numbers are truncated to
    integers as sd-scripts does when it builds the batch.
    """
    left, top, _, _ = crop_ltrb_for_sdxl(bucket_reso, image_size, flip=flipped)
    return ((int(image_size[1]), int(image_size[0])), (int(top), int(left)),
            (int(bucket_reso[1]), int(bucket_reso[0])))


def optimizer_step_at(plan: TrainingPlan, epoch: int, position: int) -> int:
    """Optimizer steps completed before the batch at ``position`` of epoch ``epoch`` (0-based).

    Every epoch holds exactly ``plan.steps_per_epoch`` optimizer steps (each process gets
    ceil(batches / processes) batches, and ceil(ceil(b / p) / a) = ceil(b / (p · a))), and
    within an epoch the optimizer steps after every ``gradient_accumulation_steps`` batches.
    This is sd-scripts' ``global_step`` while the batch is drawn: the ``step`` that token
    warm-up reads. A pure function of the plan, so a resumed run computes the same value.
    """
    return epoch * plan.steps_per_epoch + position // plan.gradient_accumulation_steps


class EpochBatches(torch.utils.data.Dataset):
    """The batches of one epoch (or of its remaining part), as tensors.

    Each item is a dict:

    * ``item_indices`` (list[int]): the plan items of the batch;
    * ``flipped`` (list[bool]): which samples are mirrored (``flip_aug``);
    * ``pixel_values`` (B, 3, H, W) in [-1, 1], augmented; absent when ``latents_cached``
      (then no image is decoded: the cached latent source picks ``latents`` or
      ``latents_flipped`` by ``flipped``);
    * ``captions`` (list[str]): processed captions; ``loss_weights`` (B,) float32;
    * ``original_size``, ``crop_top_left``, ``target_size``: (B, 2) int64, SDXL's size
      conditioning (:func:`size_conditioning`); cheap, so always present;
    * ``masks`` (B, 1, H, W) float32 in [0, 1], only when the plan masks the loss
      (``plan.masked``): each sample's mask image, alpha channel or all ones, cut and
      mirrored as its pixels (``images.load_mask``).

    A ``LoraError`` becomes ``{"error": (message, hint)}`` (see ``__getitem__``).

    ``validation``: the batches are validation batches, read with each subset's options
    ``for_validation()`` (no augmentation, captions as written).
    """

    def __init__(self, plan: TrainingPlan, batches: list[list[int]], seed: int, epoch: int,
                 first_position: int, *, latents_cached: bool = False,
                 validation: bool = False) -> None:
        self.plan, self.batches = plan, batches
        self.seed, self.epoch, self.first_position = seed, epoch, first_position
        self.latents_cached, self.validation = latents_cached, validation

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
        step = optimizer_step_at(self.plan, self.epoch, position)
        pixels, captions, weights, flips, sizes, masks = [], [], [], [], [], []
        item_indices = self.batches[index]
        for slot, item_index in enumerate(item_indices):
            item = self.plan.items[item_index]
            opts = self.plan.subsets[item.subset_index].scan.options
            if self.validation:
                opts = opts.for_validation()
            pixel_rng = augment_rng(self.seed, self.epoch, position, slot)
            offset = None
            if self.latents_cached:
                # Cached latents exist only for flip_aug (the profile and the cache builder
                # refuse colour and crop augmentation), so the flip is the only draw.
                flips.append(draw_flip(opts, pixel_rng))
            else:
                image, flipped, offset = load_sample(item.record.path, item.bucket_reso,
                                                     item.resized_size, opts, pixel_rng)
                pixels.append(pixels_to_tensor(image))
                flips.append(flipped)
            if self.plan.masked:
                record = item.record
                if record.mask_path is not None or opts.alpha_mask:
                    masks.append(load_mask(record.path, record.mask_path, item.bucket_reso,
                                           item.resized_size, offset, flips[-1]))
                else:  # a subset without masks trains everywhere
                    masks.append(np.ones(item.bucket_reso[::-1], dtype=np.float32))
            captions.append(process_caption(
                item.record.caption, opts, sample_rng(self.seed, self.epoch, position, slot),
                epoch=self.epoch + 1, step=step, max_train_steps=self.plan.max_train_steps))
            weights.append(item.loss_weight)
            sizes.append(size_conditioning((item.record.width, item.record.height),
                                           item.bucket_reso, flips[-1]))
        batch: dict[str, Any] = {
            "item_indices": list(item_indices), "flipped": flips, "captions": captions,
            "loss_weights": torch.tensor(weights, dtype=torch.float32)}
        for key, column in zip(("original_size", "crop_top_left", "target_size"),
                               zip(*sizes, strict=True), strict=True):
            batch[key] = torch.tensor(column, dtype=torch.int64)
        if not self.latents_cached:
            batch["pixel_values"] = torch.stack(pixels)
        if masks:
            batch["masks"] = torch.from_numpy(np.stack(masks))[:, None]
        return batch


def raise_loader_error(batch: dict) -> None:
    """A loader worker reports a bad image as data (an exception would arrive as a
    traceback string); raise it here with its own message and hint."""
    if "error" in batch:
        message, hint = batch["error"]
        raise DatasetError(message, hint)


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
                      state, device: torch.device, *, latents_cached: bool = False
                      ) -> torch.utils.data.DataLoader:
    """A loader over this process's batches of one epoch, starting where ``state`` is.

    ``latents_cached``: the latent source is a ``CachedLatents``, so batches carry item
    indices and flips instead of pixels.
    """
    remaining = batches[state.batch_in_epoch:]
    dataset = EpochBatches(plan, remaining, state.seed, state.epoch, state.batch_in_epoch,
                           latents_cached=latents_cached)
    # Without pixels to decode a batch costs microseconds: worker processes would only add
    # start-up time and memory.
    workers = 0 if latents_cached else min(ds.max_data_loader_n_workers, len(remaining))
    # Its own generator: a DataLoader draws a base seed for its workers from the generator
    # it is given, by default torch's global one, which noise and dropout draw from. A
    # resumed run starts its loader at another point of that stream, so drawing from it here
    # would shift every later noise sample. (Items need no random numbers from torch: their
    # flips, crops and captions are functions of (seed, epoch, position).)
    generator = torch.Generator().manual_seed(state.seed + state.epoch)
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, generator=generator,
        pin_memory=device.type == "cuda" and not latents_cached,
        prefetch_factor=2 if workers else None,
        worker_init_fn=_ignore_ctrl_c if workers else None)


def _ignore_ctrl_c(worker_id: int) -> None:
    """Ctrl+C is the training process's to handle (stop after the step, then save)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
