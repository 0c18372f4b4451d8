"""The published architecture configs of SD 1.5, SD 2.1 and SDXL base 1.0, shipped as JSON.

One folder per family (``sd1``, ``sd2``, ``sdxl``) with ``unet.json``, ``vae.json``,
``text_encoder.json`` (SDXL also ``text_encoder_2.json``) and ``scheduler.json``, copied value
for value from the ``config.json`` files of runwayml/stable-diffusion-v1-5,
stabilityai/stable-diffusion-2-1 and stabilityai/stable-diffusion-xl-base-1.0 (the SD2 text
encoder is the 23-layer OpenCLIP ViT-H form diffusers and sd-scripts use, kohya-compat.md
§11). A single-file checkpoint carries no config, and nothing may be fetched at run time, so
these are the defaults that ``checkpoint.py`` overrides with whatever the tensor shapes tell.

Pure Python: reading a config imports no torch.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

FAMILIES = ("sd1", "sd2", "sdxl")
PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")


def load_config(family: str, part: str) -> dict[str, Any]:
    """A fresh copy of ``<family>/<part>.json`` (``_class_name`` and other ``_`` keys kept;
    strip them with :func:`init_kwargs` before passing the dict to a constructor)."""
    if family not in FAMILIES or part not in PARTS:
        raise KeyError(f"no shipped config {family}/{part}")
    text = resources.files(__name__).joinpath(family, f"{part}.json").read_text("utf-8")
    return json.loads(text)


def init_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The config without its ``_class_name``-style bookkeeping keys and ``architectures``."""
    return {k: v for k, v in config.items() if not k.startswith("_") and k != "architectures"}
