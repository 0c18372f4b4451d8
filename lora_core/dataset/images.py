"""Turn an image file into the exact pixels one training sample uses.

Open, convert to RGB, resize to the planned ``resized_size`` and centre-crop to the bucket:
sd-scripts' ``trim_and_resize_if_required`` with its default interpolation choice. Like
sd-scripts, no EXIF rotation is applied (the size the plan used is the stored one), and an
RGBA image simply loses its alpha channel.

Interpolation: sd-scripts uses OpenCV's INTER_AREA when the image shrinks on both sides and
PIL's LANCZOS otherwise. We use PIL's BOX filter for shrinking: for a downscale it averages
exactly the source pixels each target pixel covers (the definition of INTER_AREA), so the
result matches to rounding without adding an OpenCV dependency. PIL only; no torch.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from lora_core.dataset.buckets import Size, crop_box
from lora_core.errors import DatasetError


def resample_filter(original_size: Size, resized_size: Size) -> Image.Resampling:
    """BOX when neither side grows (area averaging, no aliasing), LANCZOS when enlarging."""
    if original_size[0] >= resized_size[0] and original_size[1] >= resized_size[1]:
        return Image.Resampling.BOX
    return Image.Resampling.LANCZOS


def load_training_image(path: Path, bucket_reso: Size, resized_size: Size) -> Image.Image:
    """The RGB image of size ``bucket_reso`` for one sample.

    Raises DatasetError naming the file when it cannot be decoded (for instance a truncated
    download: its header was readable when the dataset was checked, its pixels are not).
    """
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")  # forces a full decode, inside the try
    except Exception as exc:  # every decoder failure means the same to the user
        raise DatasetError(
            f"cannot decode image {path}: {type(exc).__name__}: {exc}",
            "the file is damaged or not really an image; re-save or re-download it, or "
            "remove it from the dataset folder") from exc
    if image.size != tuple(resized_size):
        image = image.resize(tuple(resized_size), resample_filter(image.size, resized_size))
    left, top = crop_box(image.size, bucket_reso)
    if (left, top) != (0, 0) or image.size != tuple(bucket_reso):
        image = image.crop((left, top, left + bucket_reso[0], top + bucket_reso[1]))
    return image
