"""Turn an image file into the exact pixels one training sample uses.

Open, convert to RGB, resize to the planned ``resized_size``, crop to the bucket, then the
per-sample augmentations of the image's subset (kohya-compat.md §4.3, §4.5), in sd-scripts'
order: decide the flip, crop (centre, or a random offset with ``random_crop``), colour
augmentation (``color_aug``), flip (``flip_aug``). Like sd-scripts, no EXIF rotation is
applied (the size the plan used is the stored one), and an RGBA image simply loses its alpha
channel. Unlike PIL's plain ``convert("RGB")``, 16-bit greyscale is scaled to 8 bits rather
than clipped to white (:func:`to_rgb`).

Interpolation: sd-scripts uses OpenCV's INTER_AREA when the image shrinks on both sides and
PIL's LANCZOS otherwise. We use PIL's BOX filter for shrinking: for a downscale it averages
exactly the source pixels each target pixel covers (the definition of INTER_AREA), so the
result matches to rounding without adding an OpenCV dependency.

Randomness: every random decision takes a ``random.Random`` argument, never the global
``random`` module. The loader passes :func:`augment_rng` of the sample's place in the run
(seed, epoch, position, slot), so the same sample always gets the same pixels, whichever
worker loads it and whether or not the run was resumed. PIL and numpy only; no torch.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

from lora_core.dataset.buckets import Size, crop_box
from lora_core.dataset.subset_options import SubsetOptions
from lora_core.errors import DatasetError

# sd-scripts' AugHelper.color_aug (the albumentations recipe it replaced:
# OneOf([HueSaturationValue(8, 0, 0), RandomGamma((95, 105))], p=0.33)).
COLOR_AUG_PROBABILITY = 0.33
HUE_SHIFT_LIMIT = 8.0  # in OpenCV's 8-bit hue units: 0..180 for 360 degrees, so ±16 degrees
GAMMA_RANGE = (0.95, 1.05)


# resize_interpolation -> PIL filter. sd-scripts resizes lanczos and box with PIL and the
# others with OpenCV; OpenCV's INTER_AREA is exact area averaging, which PIL's BOX is for a
# downscale, and its linear / cubic / nearest are PIL's filters of the same names.
INTERPOLATIONS = {
    "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR, "linear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC, "cubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX, "box": Image.Resampling.BOX,
}


def resample_filter(original_size: Size, resized_size: Size,
                    interpolation: str = "") -> Image.Resampling:
    """The filter ``interpolation`` names (``resize_interpolation``); unset, sd-scripts'
    rule: BOX when neither side grows (area averaging, no aliasing), LANCZOS when enlarging."""
    if interpolation:
        return INTERPOLATIONS[interpolation]
    if original_size[0] >= resized_size[0] and original_size[1] >= resized_size[1]:
        return Image.Resampling.BOX
    return Image.Resampling.LANCZOS


def load_training_image(path: Path, bucket_reso: Size, resized_size: Size,
                        offset: tuple[int, int] | None = None,
                        interpolation: str = "") -> Image.Image:
    """The RGB image of size ``bucket_reso`` for one sample, before colour and flip.

    ``offset`` is the (left, top) of the crop in the resized image (:func:`crop_offset`);
    None means the centre crop (:func:`buckets.crop_box`). Raises DatasetError naming the
    file when it cannot be decoded (for instance a truncated download: its header was
    readable when the dataset was checked, its pixels are not).
    """
    try:
        with Image.open(path) as opened:
            image = to_rgb(opened)  # forces a full decode, inside the try
    except Exception as exc:  # every decoder failure means the same to the user
        raise DatasetError(
            f"cannot decode image {path}: {type(exc).__name__}: {exc}",
            "the file is damaged or not really an image; re-save or re-download it, or "
            "remove it from the dataset folder") from exc
    return fit_to_bucket(image, bucket_reso, resized_size, offset, interpolation)


def fit_to_bucket(image: Image.Image, bucket_reso: Size, resized_size: Size,
                  offset: tuple[int, int] | None = None,
                  interpolation: str = "") -> Image.Image:
    """Resize to ``resized_size`` (with ``interpolation``: :func:`resample_filter`) and cut
    the bucket out at ``offset`` (None: centred)."""
    if image.size != tuple(resized_size):
        image = image.resize(tuple(resized_size),
                             resample_filter(image.size, resized_size, interpolation))
    left, top = crop_box(image.size, bucket_reso) if offset is None else offset
    if (left, top) != (0, 0) or image.size != tuple(bucket_reso):
        image = image.crop((left, top, left + bucket_reso[0], top + bucket_reso[1]))
    return image


# PIL modes holding one 16-bit sample per pixel: what a 16-bit greyscale PNG opens as
# ("I" in older Pillow versions, "I;16" now).
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB, with the colours it shows.

    PIL's ``convert("RGB")`` clips a 16-bit greyscale pixel to 255 (32768, mid-grey, becomes
    white), so those are scaled instead: ``v8 = round(v16 · 255 / 65535) = round(v16 / 257)``
    (65535 → 255, 32768 → 128). 16-bit RGB PNGs already open as 8-bit RGB (PIL keeps each
    sample's high byte). A palette image with a transparent colour goes through RGBA first,
    which is what PIL asks for; the alpha is then dropped as for RGBA, keeping the palette
    colours. CMYK JPEGs are converted by PIL (it undoes Adobe's inverted storage).
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.floor(values / 257.0 + 0.5), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def augment_rng(seed: int, epoch: int, position: int, slot: int) -> random.Random:
    """The random source for one sample's pixel augmentations.

    Separate from the caption's ``captions.sample_rng`` on purpose: turning ``flip_aug`` or
    ``color_aug`` on does not change which captions a run trains with, and the latent-cache
    path (which draws only the flip) makes the same flip decisions as the pixel path. A str
    seed is hashed with SHA-512 by ``random.seed``, so it is the same in every process and
    unaffected by PYTHONHASHSEED.
    """
    return random.Random(f"augment/{seed}/{epoch}/{position}/{slot}")


def draw_flip(opts: SubsetOptions, rng: random.Random) -> bool:
    """``flip_aug``: mirror this sample with probability 0.5 (no draw when it is off)."""
    return opts.flip_aug and rng.random() < 0.5


def crop_offset(resized_size: Size, bucket_reso: Size,
                rng: random.Random | None) -> tuple[int, int]:
    """(left, top) of the crop that cuts the bucket out of the resized image.

    Centred (``excess // 2``) without an rng; with one (``random_crop``) each side's offset
    is uniform over 0..excess inclusive, width drawn before height, and no draw for a side
    without excess, as sd-scripts' ``trim_and_resize_if_required``.
    """
    if rng is None:
        return crop_box(resized_size, bucket_reso)
    centre_left, centre_top = crop_box(resized_size, bucket_reso)  # also checks coverage
    excess_w = resized_size[0] - bucket_reso[0]
    excess_h = resized_size[1] - bucket_reso[1]
    left = rng.randint(0, excess_w) if excess_w > 0 else centre_left
    top = rng.randint(0, excess_h) if excess_h > 0 else centre_top
    return left, top


def flip_horizontal(image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def color_augment(image: Image.Image, rng: random.Random) -> Image.Image:
    """sd-scripts' ``color_aug``: with p = 0.33 either shift the hue or apply a gamma.

    Draws, in order: ``u1 = random()``; nothing happens unless ``u1 <= 0.33``; then
    ``u2 = random()``: ``u2 > 0.5`` shifts the hue by ``uniform(-8, 8)`` OpenCV hue units
    (±16 degrees), otherwise ``gamma = uniform(0.95, 1.05)`` is applied.
    """
    if rng.random() > COLOR_AUG_PROBABILITY:
        return image
    pixels = np.asarray(image, dtype=np.uint8)
    if rng.random() > 0.5:
        shifted = shift_hue(pixels, rng.uniform(-HUE_SHIFT_LIMIT, HUE_SHIFT_LIMIT))
    else:
        shifted = apply_gamma(pixels, rng.uniform(*GAMMA_RANGE))
    return Image.fromarray(shifted, "RGB")


def apply_gamma(pixels: np.ndarray, gamma: float) -> np.ndarray:
    """``clip(x ** gamma, 0, 255)`` on the raw 0..255 values, truncated to uint8.

    This is sd-scripts' arithmetic, not a normalised gamma curve ((x/255)**g * 255): raising
    the raw value makes gamma < 1 darken and gamma > 1 brighten (255**0.95 = 194). We keep
    it because it is what "color_aug" trains with there.
    """
    return np.clip(pixels.astype(np.float64) ** gamma, 0, 255).astype(np.uint8)


def shift_hue(pixels: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue of uint8 RGB ``pixels`` (H, W, 3) by ``shift`` OpenCV hue units.

    OpenCV's 8-bit HSV, reproduced with numpy (kohya-compat.md §4.5): V = max(R, G, B),
    S = round(255 · (V − min) / V), H = round(hue° / 2) in 0..180. The shift is applied as
    sd-scripts does it: a negative shift becomes ``180 + shift``, the new hue is
    ``(H + shift) mod 180`` truncated to an integer, and S and V are unchanged. Grey pixels
    (S = 0) are unaffected. sd-scripts calls COLOR_BGR2HSV on RGB data, which mirrors the hue
    circle and so only flips the sign of a symmetric random shift; we work in true RGB.
    Matches OpenCV to within its fixed-point rounding (±1 per channel).
    """
    hue, sat, val = _rgb_to_hsv_u8(pixels)
    if shift < 0:
        shift += 180.0
    hue = np.floor(np.mod(hue + shift, 180.0))
    return _hsv_u8_to_rgb(hue, sat, val)


def _rgb_to_hsv_u8(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rgb = pixels.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    val = rgb.max(axis=-1)
    diff = val - rgb.min(axis=-1)
    sat = np.floor(np.divide(255.0 * diff, val, out=np.zeros_like(val), where=val > 0) + 0.5)
    safe = np.where(diff > 0, diff, 1.0)
    # OpenCV's priority when two channels tie for the maximum: R, then G, then B.
    sixths = np.where(val == r, (g - b) / safe,
                      np.where(val == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = np.floor(30.0 * sixths + 0.5)  # 60 degrees per sixth, halved for 8 bits
    hue = np.where(diff > 0, np.where(hue < 0, hue + 180.0, hue), 0.0)
    return hue, sat, val


def _hsv_u8_to_rgb(hue: np.ndarray, sat: np.ndarray, val: np.ndarray) -> np.ndarray:
    h = np.mod(hue / 30.0, 6.0)  # sector position, 0..6
    sector = np.floor(h).astype(np.int64)
    frac = h - sector
    s, v = sat / 255.0, val / 255.0
    p = v * (1.0 - s)
    q = v * (1.0 - s * frac)
    t = v * (1.0 - s * (1.0 - frac))
    # (R, G, B) per sector: red→yellow, yellow→green, ..., magenta→red.
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    channels = [np.select([sector == k for k in range(6)], [c[i] for c in choices])
                for i in range(3)]
    rgb = np.stack(channels, axis=-1) * 255.0
    return np.clip(np.floor(rgb + 0.5), 0, 255).astype(np.uint8)


def load_sample_image(path: Path, bucket_reso: Size, resized_size: Size, opts: SubsetOptions,
                      rng: random.Random) -> tuple[Image.Image, bool]:
    """The augmented pixels of one sample and whether they were mirrored.

    Draws from ``rng`` in a fixed order (flip, crop offsets, colour), each only when its
    option is on, so a given rng state always gives the same image.
    """
    image, flipped, _ = load_sample(path, bucket_reso, resized_size, opts, rng)
    return image, flipped


def load_sample(path: Path, bucket_reso: Size, resized_size: Size, opts: SubsetOptions,
                rng: random.Random) -> tuple[Image.Image, bool, tuple[int, int]]:
    """:func:`load_sample_image`, and the (left, top) of its crop (where a mask is cut)."""
    flipped = draw_flip(opts, rng)
    offset = crop_offset(resized_size, bucket_reso, rng if opts.random_crop else None)
    image = load_training_image(path, bucket_reso, resized_size, offset,
                                opts.resize_interpolation)
    if opts.color_aug:
        image = color_augment(image, rng)
    if flipped:
        image = flip_horizontal(image)
    return image, flipped, offset


def load_mask(image_path: Path, mask_path: Path | None, bucket_reso: Size, resized_size: Size,
              offset: tuple[int, int] | None, flipped: bool) -> np.ndarray:
    """The loss mask of one sample, ``(H, W)`` float32 in [0, 1] at the bucket's size.

    From ``mask_path`` (a conditioning_data_dir mask: its red channel, as sd-scripts reads
    it) or, without one, from the image's own alpha channel (alpha_mask; an image without
    transparency is opaque: all ones). Resized, cropped at ``offset`` (None: centred) and
    mirrored exactly as the sample's pixels (:func:`load_sample`), so the mask follows
    bucketing, random crops and flips. Raises DatasetError naming a file that cannot be read.
    """
    source = mask_path or image_path
    try:
        with Image.open(source) as opened:
            if mask_path is not None:
                mask = opened.convert("RGB").getchannel("R")
            elif opened.mode in ("RGBA", "LA", "PA", "RGBa", "La") \
                    or "transparency" in opened.info:
                mask = opened.convert("RGBA").getchannel("A")
            else:
                return np.ones((bucket_reso[1], bucket_reso[0]), dtype=np.float32)
    except Exception as exc:
        what = "mask image" if mask_path is not None else "image (for its alpha mask)"
        raise DatasetError(f"cannot decode {what} {source}: {type(exc).__name__}: {exc}",
                           "re-save the file as a PNG, or remove it") from exc
    mask = fit_to_bucket(mask, bucket_reso, resized_size, offset)
    if flipped:
        mask = flip_horizontal(mask)
    return np.asarray(mask, dtype=np.float32) / 255.0
