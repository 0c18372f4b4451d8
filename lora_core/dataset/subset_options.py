"""The per-subset options: how one image folder's captions and pixels are processed.

In folder mode every ``<repeats>_<name>`` folder takes these from the profile's [dataset]
section; an sd-scripts ``dataset_config`` can set them per subset (subset → dataset →
general → profile, first set value wins). The loader reads them from the subset an image
belongs to, never from the profile. Pure Python.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lora_core.profile import DatasetSection


@dataclass(frozen=True)
class SubsetOptions:
    caption_extension: str = ".txt"
    shuffle_caption: bool = False
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    caption_separator: str = ","
    secondary_separator: str = ""
    caption_prefix: str = ""
    caption_suffix: str = ""
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    enable_wildcard: bool = False
    token_warmup_min: int = 1
    token_warmup_step: float = 0
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    alpha_mask: bool = False
    resize_interpolation: str = ""  # "" = sd-scripts' rule (area shrinking, lanczos growing)

    @property
    def captions_vary(self) -> bool:
        """True when a caption can differ between two fetches of the same image, so
        text-encoder outputs cannot be computed once and reused."""
        return bool(self.shuffle_caption or self.caption_dropout_rate
                    or self.caption_dropout_every_n_epochs or self.caption_tag_dropout_rate
                    or self.enable_wildcard or self.token_warmup_step)

    def for_validation(self) -> SubsetOptions:
        """These options as validation reads an image: no caption shuffling, dropout or
        warm-up and no augmentation, so every evaluation sees the same samples."""
        return dataclasses.replace(
            self, shuffle_caption=False, caption_dropout_rate=0.0,
            caption_dropout_every_n_epochs=0, caption_tag_dropout_rate=0.0, token_warmup_step=0,
            flip_aug=False, color_aug=False, random_crop=False)

    @property
    def pixels_vary(self) -> bool:
        """True when the pixels of an image differ between fetches beyond a flip, so its
        latents cannot be cached."""
        return bool(self.pixel_changes())

    def pixel_changes(self) -> list[str]:
        """The options on that change an image's pixels every step."""
        return [name for name in PIXEL_CHANGING_OPTIONS if getattr(self, name)]


# Options that change an image's pixels every step (a flip aside: both sides are cached).
PIXEL_CHANGING_OPTIONS = ("color_aug", "random_crop")


def uncacheable_latents(named: str, key: str, where: str = "") -> str:
    """The rule "latents cannot be cached when the pixels change every step", in its one
    wording: ``named`` is how the option was set (```[dataset] color_aug```, a config key),
    ``where`` the subset. The profile check (checks.rules) and a dataset_config's subsets
    (dataset_config) say it; the run only asserts it (training.conditioning)."""
    return (f"{named} = true changes the pixels every step, so latents cannot be cached"
            + (f" ({where})" if where else "") + ": turn off `[dataset] cache_latents` / "
            f"cache_latents_to_disk or {key}")


SUBSET_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(SubsetOptions))


def options_from_dataset_section(ds: DatasetSection) -> SubsetOptions:
    """Folder mode: every subset uses the profile's [dataset] values."""
    return SubsetOptions(**{name: getattr(ds, name) for name in SUBSET_OPTION_NAMES})
