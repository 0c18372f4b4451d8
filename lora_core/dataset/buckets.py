"""Aspect-ratio buckets: which bucket an image goes to, how it is resized and cropped.

The formulas are sd-scripts' (``model_util.make_bucket_resolutions`` and
``BucketManager.select_bucket``), reproduced number for number, because the bucket an image
lands in decides the batches, the step count and what the ``ss_bucket_info`` metadata says.
Three modes:

* ``aspect`` (enable_bucket, the default): a fixed list of buckets of about the training
  area; each image goes to the bucket whose aspect ratio is closest, scaled to cover it
  (small images are enlarged) and centre-cropped.
* ``no_upscale`` (bucket_no_upscale): images larger than the training area are shrunk to
  it, smaller ones keep their size; the bucket is each side floored to a multiple of
  bucket_reso_steps, so buckets are made on the fly and images are never enlarged.
* ``single`` (enable_bucket = false): one bucket equal to the resolution; every image is
  resized to cover it and centre-cropped (what sd-scripts' latent-cache path does).

Pure arithmetic: no image I/O (see ``images``), no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from lora_core.profile import DatasetSection

Size = tuple[int, int]  # (width, height) in pixels
BucketMode = Literal["aspect", "no_upscale", "single"]


def make_bucket_resolutions(max_reso: Size, min_size: int, max_size: int,
                            divisible: int) -> list[Size]:
    """The predefined buckets: about ``W*H`` pixels each, sides multiples of ``divisible``.

    A square of side floor(sqrt(W*H)/d)*d, plus for every width w in min..max (step d) the
    largest height h <= max_size with w*h <= W*H, and its transpose. Sorted, no duplicates.
    """
    width, height = max_reso
    max_area = width * height
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos = {(side, side)}
    for w in range(min_size, max_size + 1, divisible):
        h = min(max_size, int((max_area // w) // divisible) * divisible)
        if h >= min_size:
            resos.add((w, h))
            resos.add((h, w))
    return sorted(resos)


def aspect_ratio_error(bucket_reso: Size, image_size: Size) -> float:
    """bucket aspect - image aspect (signed; sd-scripts reports the mean of its abs)."""
    return bucket_reso[0] / bucket_reso[1] - image_size[0] / image_size[1]


def assign_bucket(image_size: Size, buckets: list[Size]) -> tuple[Size, Size]:
    """Predefined-bucket mode: (bucket_reso, resized_size) for an image.

    An image whose exact size is a bucket uses it; otherwise the bucket with the smallest
    |bucket aspect - image aspect| (the first one on a tie, in list order). The image is then
    scaled to *cover* the bucket (this enlarges small images) and rounded half up.
    """
    width, height = image_size
    aspect = width / height
    if image_size in buckets:
        bucket = image_size
    else:
        bucket = min(buckets, key=lambda b: abs(b[0] / b[1] - aspect))
    if aspect > bucket[0] / bucket[1]:
        scale = bucket[1] / height  # wider than the bucket: match heights, crop the sides
    else:
        scale = bucket[0] / width
    resized = (int(width * scale + 0.5), int(height * scale + 0.5))
    return bucket, resized


def round_to_steps(x: float, steps: int) -> int:
    """Round half up to an integer, then down to a multiple of ``steps``."""
    rounded = int(x + 0.5)
    return rounded - rounded % steps


def assign_bucket_no_upscale(image_size: Size, max_area: int, steps: int) -> tuple[Size, Size]:
    """bucket_no_upscale mode: (bucket_reso, resized_size); the bucket may have a 0 side
    when an image side is below ``steps`` (the caller must reject that)."""
    width, height = image_size
    aspect = width / height
    if width * height > max_area:
        # Shrink to the training area keeping the aspect ratio, then make either the width
        # or the height a multiple of steps: whichever keeps the aspect ratio closer.
        target_w = math.sqrt(max_area * aspect)
        target_h = max_area / target_w
        bw = round_to_steps(target_w, steps)
        bh_for_w = round_to_steps(bw / aspect, steps)
        bh = round_to_steps(target_h, steps)
        bw_for_h = round_to_steps(bh * aspect, steps)
        # sd-scripts divides by zero on extreme aspect ratios; treat that candidate as worst.
        err_w = abs(bw / bh_for_w - aspect) if bh_for_w else math.inf
        err_h = abs(bw_for_h / bh - aspect) if bh else math.inf
        if err_w < err_h:
            resized = (bw, int(bw / aspect + 0.5))
        else:
            resized = (int(bh * aspect + 0.5), bh)
    else:
        resized = (width, height)
    # Crop, never pad: each side floored to a multiple of steps.
    bucket = (resized[0] - resized[0] % steps, resized[1] - resized[1] % steps)
    return bucket, resized


def crop_box(resized_size: Size, bucket_reso: Size) -> tuple[int, int]:
    """(left, top) of the centre crop that cuts ``bucket_reso`` out of the resized image."""
    excess_w = resized_size[0] - bucket_reso[0]
    excess_h = resized_size[1] - bucket_reso[1]
    if excess_w < 0 or excess_h < 0:
        raise ValueError(f"resized size {resized_size} does not cover bucket {bucket_reso}")
    return excess_w // 2, excess_h // 2


def crop_ltrb_for_sdxl(bucket_reso: Size, image_size: Size,
                       flip: bool = False) -> tuple[float, float, float, float]:
    """SDXL's crop conditioning (left, top, right, bottom), as sd-scripts computes it.

    The original image is fitted *inside* the bucket and centred; the numbers are floats
    exactly as sd-scripts' arithmetic gives them (floor divisions of floats). Always computed
    as if centred. With a horizontal flip the left edge becomes ``bucket_w - right``.
    """
    bucket_w, bucket_h = bucket_reso
    image_aspect = image_size[0] / image_size[1]
    if bucket_w / bucket_h > image_aspect:
        fit_w, fit_h = bucket_h * image_aspect, float(bucket_h)
    else:
        fit_w, fit_h = float(bucket_w), bucket_w / image_aspect
    left = float((bucket_w - fit_w) // 2)
    top = float((bucket_h - fit_h) // 2)
    right, bottom = left + fit_w, top + fit_h
    if flip:
        left, right = bucket_w - right, bucket_w - left
    return left, top, right, bottom


@dataclass(frozen=True)
class BucketConfig:
    """How images are put into buckets, resolved from the [dataset] section."""

    mode: BucketMode
    resolution: Size
    min_bucket_reso: int
    max_bucket_reso: int
    bucket_reso_steps: int

    @property
    def predefined(self) -> list[Size]:
        """The fixed bucket list (aspect mode), [resolution] (single), [] (no_upscale)."""
        if self.mode == "aspect":
            return make_bucket_resolutions(self.resolution, self.min_bucket_reso,
                                           self.max_bucket_reso, self.bucket_reso_steps)
        if self.mode == "single":
            return [self.resolution]
        return []

    def assign(self, image_size: Size, buckets: list[Size] | None = None) -> tuple[Size, Size]:
        """(bucket_reso, resized_size); pass ``predefined`` as ``buckets`` to avoid
        recomputing the list for every image."""
        if self.mode == "no_upscale":
            area = self.resolution[0] * self.resolution[1]
            return assign_bucket_no_upscale(image_size, area, self.bucket_reso_steps)
        return assign_bucket(image_size, buckets if buckets is not None else self.predefined)

    def smallest_side(self) -> int:
        """The smallest bucket side: images below it are enlarged (aspect, single) or get a
        zero-size bucket (no_upscale, where it is bucket_reso_steps)."""
        if self.mode == "no_upscale":
            return self.bucket_reso_steps
        return min(min(b) for b in self.predefined)


def bucket_config(dataset: DatasetSection) -> tuple[BucketConfig, list[str]]:
    """The profile's [dataset] bucket settings resolved (folder mode); see
    :func:`resolve_bucket_config`."""
    return resolve_bucket_config(
        dataset.resolution, enable_bucket=dataset.enable_bucket,
        bucket_no_upscale=dataset.bucket_no_upscale, min_bucket_reso=dataset.min_bucket_reso,
        max_bucket_reso=dataset.max_bucket_reso, bucket_reso_steps=dataset.bucket_reso_steps)


def resolve_bucket_config(resolution: Size, *, enable_bucket: bool, bucket_no_upscale: bool,
                          min_bucket_reso: int, max_bucket_reso: int,
                          bucket_reso_steps: int) -> tuple[BucketConfig, list[str]]:
    """One dataset's bucket settings, and warnings about anything adjusted or ignored.

    Like sd-scripts, min_bucket_reso is rounded down and max_bucket_reso up to a multiple of
    bucket_reso_steps (with a warning), and bucket_no_upscale ignores both. A
    ``dataset_config`` calls this once per dataset with that dataset's resolved values.
    """
    steps = bucket_reso_steps
    low, high = min_bucket_reso, max_bucket_reso
    warnings: list[str] = []
    if not enable_bucket:
        mode: BucketMode = "single"
    elif bucket_no_upscale:
        mode = "no_upscale"
        warnings.append("min_bucket_reso and max_bucket_reso are ignored with "
                        "bucket_no_upscale: buckets follow the image sizes")
    else:
        mode = "aspect"
        if low % steps:
            warnings.append(f"min_bucket_reso {low} rounded down to {low - low % steps}, a "
                            f"multiple of bucket_reso_steps {steps}")
            low -= low % steps
        if high % steps:
            warnings.append(f"max_bucket_reso {high} rounded up to "
                            f"{high + steps - high % steps}, a multiple of bucket_reso_steps "
                            f"{steps}")
            high += steps - high % steps
    return BucketConfig(mode, resolution, low, high, steps), warnings
