"""Builders for the bad-input corpus (issue 6, "Bad input, everywhere").

Every case starts from one good, tiny setup in a temporary folder and breaks exactly one
thing: an image, a caption, the folder layout, the profile, or the model it names. All
inputs live under ``<tmp>/in`` (profile, dataset, model files) so one snapshot proves the
CLI left them alone; outputs go to ``<tmp>/out``. Files are generated in code (PIL, struct,
zlib), never downloaded, and a case never needs torch to be *built*, except the pickled
``.ckpt`` (torch.save writes the zip layout torch.load expects).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from PIL import Image

IMAGE_SIDE_PX = 64
CLASS_FOLDER = "2_tok thing"


@dataclass
class Setup:
    """A good profile + dataset; a case edits ``profile`` or the files, then ``write()``."""

    root: Path
    profile: dict[str, Any]
    raw_profile: bytes | None = None  # written as-is instead of ``profile`` when set
    profile_written: bool = True  # False: the case wants no profile file at all

    @property
    def inputs(self) -> Path:
        return self.root / "in"

    @property
    def profile_path(self) -> Path:
        return self.inputs / "profile.toml"

    @property
    def data(self) -> Path:
        return self.inputs / "data"

    @property
    def concept(self) -> Path:
        return self.data / CLASS_FOLDER

    @property
    def models(self) -> Path:
        path = self.inputs / "models"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def set(self, section: str, key: str, value: Any) -> None:
        self.profile.setdefault(section, {})[key] = value

    def write(self) -> None:
        if not self.profile_written or self.profile_path.is_dir():
            return  # the case wants no profile file, or a folder in its place
        self.profile_path.write_bytes(self.raw_profile if self.raw_profile is not None
                                      else tomli_w.dumps(self.profile).encode("utf-8"))


def png_bytes(size: tuple[int, int] = (IMAGE_SIDE_PX, IMAGE_SIDE_PX),
              color: tuple[int, int, int] = (200, 40, 40), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(size: tuple[int, int] = (IMAGE_SIDE_PX, IMAGE_SIDE_PX),
               color: tuple[int, ...] = (200, 40, 40), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    image = Image.new(mode, size, color)
    # Noise makes the entropy-coded data long enough that half of it is really missing.
    image.putdata([tuple((c + 37 * i) % 256 for c in color) for i in range(size[0] * size[1])])
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: list[bytes] | None
            ) -> bytes:
    """A PNG written by hand: PIL cannot write 16-bit RGB, nor a header that lies about the
    size. ``rows`` None writes an empty IDAT (the pixels are never meant to be decoded)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + row for row in rows) if rows is not None else b""
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))


def png16_rgb(width: int, height: int, rgb16: tuple[int, int, int]) -> bytes:
    """A 16-bit-per-channel RGB PNG (colour type 2, bit depth 16) of one colour."""
    pixel = struct.pack(">HHH", *rgb16)
    return raw_png(width, height, 16, 2, [pixel * width] * height)


def safetensors_bytes(shapes: dict[str, tuple[int, ...]],
                      metadata: dict[str, str] | None = None) -> bytes:
    """A valid float32 .safetensors file of zeros with the given tensor names and shapes."""
    header: dict[str, Any] = {}
    offset = 0
    for key, shape in shapes.items():
        count = 1
        for n in shape:
            count *= n
        header[key] = {"dtype": "F32", "shape": list(shape),
                       "data_offsets": [offset, offset + 4 * count]}
        offset += 4 * count
    if metadata:
        header["__metadata__"] = metadata
    encoded = json.dumps(header).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + b"\x00" * offset


def make_setup(root: Path) -> Setup:
    """Two 64x64 images with captions in ``2_tok thing``, the built-in tiny model, paths
    relative to the profile (as users write them)."""
    concept = root / "in" / "data" / CLASS_FOLDER
    concept.mkdir(parents=True)
    for i in range(2):
        (concept / f"img{i}.png").write_bytes(png_bytes(color=(40 * i, 90, 160)))
        (concept / f"img{i}.txt").write_text(f"tok thing, pose{i}", encoding="utf-8")
    profile = {
        "profile_version": 1,
        "model": {"pretrained_model_name_or_path": "builtin:tiny-sd1"},
        "dataset": {"train_data_dir": "data", "caption_extension": ".txt",
                    "resolution": IMAGE_SIDE_PX, "min_bucket_reso": IMAGE_SIDE_PX,
                    "max_bucket_reso": IMAGE_SIDE_PX, "max_data_loader_n_workers": 0},
        "network": {"network_dim": 4, "network_alpha": 2.0},
        "optimizer": {"optimizer_type": "AdamW", "learning_rate": 1e-3},
        "training": {"max_train_epochs": 1, "train_batch_size": 2, "mixed_precision": "no",
                     "seed": 1},
        "saving": {"output_dir": "../out", "output_name": "corpus"},
    }
    return Setup(root, profile)


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: files by sha256, folders as "dir"."""
    return {str(p.relative_to(folder)): ("dir" if p.is_dir()
                                         else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*"))}


@dataclass(frozen=True)
class Case:
    """One bad input. ``names``: strings the CLI's message must contain (the file name or
    the ``[section] key``); ``commands``: which CLI commands must refuse it ("check" finds
    it without loading a model; "run" finds everything)."""

    id: str
    build: Callable[[Setup], None]
    names: tuple[str, ...]
    commands: tuple[str, ...] = ("check", "run")
    extra_args: tuple[str, ...] = field(default=())


# --- image files -----------------------------------------------------------------------


def corrupt_png(s: Setup) -> None:
    (s.concept / "img0.png").write_bytes(os.urandom(2048))


def truncated_jpeg(s: Setup) -> None:
    data = jpeg_bytes()
    (s.concept / "img0.png").unlink()
    (s.concept / "photo.jpg").write_bytes(data[: len(data) // 2])


def truncated_png(s: Setup) -> None:
    data = png_bytes(color=(1, 2, 3))
    (s.concept / "img0.png").write_bytes(data[: len(data) - 30])


def zero_byte_png(s: Setup) -> None:
    (s.concept / "img0.png").write_bytes(b"")


def text_as_jpeg(s: Setup) -> None:
    (s.concept / "notes.jpg").write_text("this is a shopping list, not a photo\n")


def huge_header_png(s: Setup) -> None:
    """A PNG whose header says 30000x30000 (900 megapixels) with no real pixel data: a
    decompression bomb for anything that decodes it."""
    (s.concept / "huge.png").write_bytes(raw_png(30000, 30000, 8, 2, None))


# --- captions --------------------------------------------------------------------------


def latin1_caption(s: Setup) -> None:
    (s.concept / "img0.txt").write_bytes("café, crème brûlée".encode("cp1252"))


# --- folder layout ---------------------------------------------------------------------


def images_directly_in_train_dir(s: Setup) -> None:
    for path in list(s.concept.iterdir()):
        path.rename(s.data / path.name)
    s.concept.rmdir()


def train_dir_is_concept_folder(s: Setup) -> None:
    s.set("dataset", "train_data_dir", f"data/{CLASS_FOLDER}")


def nested_too_deep(s: Setup) -> None:
    wrapper = s.data / "my dataset"
    wrapper.mkdir()
    s.concept.rename(wrapper / CLASS_FOLDER)


def images_below_concept(s: Setup) -> None:
    inner = s.concept / "inner"
    inner.mkdir()
    for path in [p for p in s.concept.iterdir() if p.is_file()]:
        path.rename(inner / path.name)


def zero_repeats(s: Setup) -> None:
    s.concept.rename(s.data / "0_tok thing")


def no_repeats_number(s: Setup) -> None:
    s.concept.rename(s.data / "abc_tok thing")


def empty_train_dir(s: Setup) -> None:
    for path in list(s.concept.iterdir()):
        path.unlink()
    s.concept.rmdir()


def missing_train_dir(s: Setup) -> None:
    s.set("dataset", "train_data_dir", "no_such_folder")


def train_dir_is_file(s: Setup) -> None:
    s.set("dataset", "train_data_dir", f"data/{CLASS_FOLDER}/img0.png")


def missing_reg_dir(s: Setup) -> None:
    s.set("dataset", "reg_data_dir", "reg_missing")


def folder_without_images(s: Setup) -> None:
    for path in list(s.concept.glob("*.png")):
        path.unlink()


def _use_dataset_config(s: Setup) -> None:
    del s.profile["dataset"]["train_data_dir"]  # the config replaces the folders
    s.set("dataset", "dataset_config", "datasets.toml")


def dataset_config_bad_toml(s: Setup) -> None:
    (s.inputs / "datasets.toml").write_text("[[datasets]\nresolution = 64\n")
    _use_dataset_config(s)


def dataset_config_missing_image_dir(s: Setup) -> None:
    (s.inputs / "datasets.toml").write_text(
        "[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"gone\"\nnum_repeats = 2\n")
    _use_dataset_config(s)


# --- profile -----------------------------------------------------------------------------


def profile_not_toml(s: Setup) -> None:
    s.raw_profile = b"profile_version = 1\n[model]\npretrained_model_name_or_path builtin\n"


def unknown_key(s: Setup) -> None:
    s.set("network", "network_dimm", 8)


def unknown_section(s: Setup) -> None:
    s.profile["netwrok"] = {"network_dim": 8}


def wrong_type(s: Setup) -> None:
    s.set("network", "network_dim", "eight")


def dim_zero(s: Setup) -> None:
    s.set("network", "network_dim", 0)


def negative_learning_rate(s: Setup) -> None:
    s.set("optimizer", "learning_rate", -1e-4)


def bad_choice(s: Setup) -> None:
    s.set("optimizer", "optimizer_type", "Adamw9bit")


def missing_output_dir(s: Setup) -> None:
    del s.profile["saving"]["output_dir"]


def profile_missing(s: Setup) -> None:
    s.profile_written = False
    s.profile_path.with_name("other.toml").write_text("# not the profile\n")


def profile_is_folder(s: Setup) -> None:
    s.profile_path.mkdir()


def profile_utf16(s: Setup) -> None:
    s.raw_profile = tomli_w.dumps(s.profile).encode("utf-16")


def bad_override_key(s: Setup) -> None:
    """Nothing wrong in the file; the ``--set`` names a field that does not exist."""


# --- models --------------------------------------------------------------------------------


def model_missing(s: Setup) -> None:
    s.set("model", "pretrained_model_name_or_path", "models/sd15.safetensors")


def model_folder_not_diffusers(s: Setup) -> None:
    folder = s.models / "some-model"
    folder.mkdir()
    (folder / "readme.txt").write_text("weights go here\n")
    s.set("model", "pretrained_model_name_or_path", "models/some-model")


def _model_file(s: Setup, name: str, data: bytes) -> None:
    (s.models / name).write_bytes(data)
    s.set("model", "pretrained_model_name_or_path", f"models/{name}")


def safetensors_random(s: Setup) -> None:
    _model_file(s, "random.safetensors", os.urandom(4096))


def safetensors_header_too_long(s: Setup) -> None:
    _model_file(s, "cut.safetensors", struct.pack("<Q", 10**6) + b'{"a": 1}' + b"\x00" * 64)


def safetensors_truncated(s: Setup) -> None:
    good = safetensors_bytes({"model.diffusion_model.input_blocks.0.0.weight": (32, 4, 3, 3)})
    _model_file(s, "truncated.safetensors", good[: len(good) - 100])


def safetensors_zero_bytes(s: Setup) -> None:
    _model_file(s, "empty.safetensors", b"")


def safetensors_lora(s: Setup) -> None:
    _model_file(s, "style_lora.safetensors", safetensors_bytes({
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 32),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (32, 4),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": ()}))


def safetensors_vae(s: Setup) -> None:
    _model_file(s, "vae-ft-mse.safetensors", safetensors_bytes({
        "encoder.conv_in.weight": (8, 3, 3, 3), "decoder.conv_out.weight": (3, 8, 3, 3)}))


def model_wrong_suffix(s: Setup) -> None:
    _model_file(s, "model.txt", b"see https://example.invalid for the weights\n")


def unknown_builtin(s: Setup) -> None:
    s.set("model", "pretrained_model_name_or_path", "builtin:tiny-sd9")


def ckpt_not_pickle(s: Setup) -> None:
    _model_file(s, "broken.ckpt", b"<html><body>404 Not Found</body></html>\n" * 20)


PWNED_MARKER_NAME = "PWNED_bad_input_corpus"


class _RunsCode:
    """Pickles as "call os.system(...)": what a malicious .ckpt contains."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def ckpt_runs_code(s: Setup) -> None:
    import torch

    marker = s.root / PWNED_MARKER_NAME
    path = s.models / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": _RunsCode(marker)}}, path)
    s.set("model", "pretrained_model_name_or_path", "models/evil.ckpt")


def network_weights_missing(s: Setup) -> None:
    s.set("network", "network_weights", "models/previous.safetensors")


def network_weights_not_lora(s: Setup) -> None:
    (s.models / "not_a_lora.safetensors").write_bytes(
        safetensors_bytes({"some.weight": (2, 2)}))
    s.set("network", "network_weights", "models/not_a_lora.safetensors")


def sample_prompts_missing(s: Setup) -> None:
    s.set("sample", "sample_prompts", "prompts.txt")


CASES: tuple[Case, ...] = (
    # images
    Case("corrupt-png", corrupt_png, ("img0.png",)),
    Case("truncated-jpeg", truncated_jpeg, ("photo.jpg", "truncated")),
    Case("truncated-png", truncated_png, ("img0.png", "truncated")),
    Case("zero-byte-png", zero_byte_png, ("img0.png", "empty")),
    Case("text-file-as-jpeg", text_as_jpeg, ("notes.jpg",)),
    Case("huge-header-png", huge_header_png, ("huge.png", "30000x30000", "decompression bomb")),
    # captions
    Case("caption-not-utf8", latin1_caption, ("img0.txt", "UTF-8")),
    # folder layout
    Case("images-directly-in-train-dir", images_directly_in_train_dir,
         ("train_data_dir", "subfolder")),
    Case("train-dir-is-concept-folder", train_dir_is_concept_folder,
         ("train_data_dir", CLASS_FOLDER)),
    Case("concept-nested-too-deep", nested_too_deep, ("my dataset", CLASS_FOLDER,
                                                       "one level deeper")),
    Case("images-below-concept-folder", images_below_concept, (CLASS_FOLDER, "inner")),
    Case("repeats-zero", zero_repeats, ("0_tok thing", "repeats", "\"1_tok thing\"")),
    Case("repeats-not-a-number", no_repeats_number, ("abc_tok thing",)),
    Case("train-dir-empty", empty_train_dir, ("train_data_dir", "no image folders")),
    Case("train-dir-missing", missing_train_dir, ("train_data_dir", "no_such_folder")),
    Case("train-dir-is-a-file", train_dir_is_file, ("train_data_dir", "img0.png")),
    Case("reg-dir-missing", missing_reg_dir, ("reg_data_dir", "reg_missing")),
    Case("folder-without-images", folder_without_images, (CLASS_FOLDER, "no usable")),
    Case("dataset-config-not-toml", dataset_config_bad_toml, ("datasets.toml", "line")),
    Case("dataset-config-image-dir-missing", dataset_config_missing_image_dir,
         ("datasets.toml", "image_dir", "gone")),
    # profile
    Case("profile-not-toml", profile_not_toml, ("profile.toml", "line 3")),
    Case("profile-unknown-key", unknown_key, ("network_dimm", "network_dim")),
    Case("profile-unknown-section", unknown_section, ("[netwrok]", "[network]")),
    Case("profile-wrong-type", wrong_type, ("network_dim", "eight")),
    Case("profile-dim-zero", dim_zero, ("network_dim",)),
    Case("profile-negative-lr", negative_learning_rate, ("learning_rate",)),
    Case("profile-bad-choice", bad_choice, ("optimizer_type", "Adamw9bit")),
    Case("profile-missing-output-dir", missing_output_dir, ("output_dir",)),
    Case("profile-file-missing", profile_missing, ("profile.toml", "not found")),
    Case("profile-is-a-folder", profile_is_folder, ("profile.toml", "folder")),
    Case("profile-not-utf8", profile_utf16, ("profile.toml", "UTF-16", "UTF-8")),
    Case("override-unknown-key", bad_override_key, ("network_dimm",),
         extra_args=("--set", "network.network_dimm=8")),
    # models
    Case("model-missing", model_missing, ("sd15.safetensors", "does not exist")),
    Case("model-folder-not-diffusers", model_folder_not_diffusers,
         ("some-model", "model_index.json")),
    Case("model-safetensors-random-bytes", safetensors_random, ("random.safetensors",)),
    Case("model-safetensors-header-too-long", safetensors_header_too_long,
         ("cut.safetensors", "header")),
    Case("model-safetensors-truncated", safetensors_truncated,
         ("truncated.safetensors", "truncated")),
    Case("model-safetensors-zero-bytes", safetensors_zero_bytes, ("empty.safetensors",)),
    Case("model-is-a-lora", safetensors_lora, ("style_lora.safetensors", "LoRA")),
    Case("model-is-a-vae", safetensors_vae, ("vae-ft-mse.safetensors", "VAE")),
    Case("model-wrong-suffix", model_wrong_suffix, ("model.txt",)),
    Case("model-unknown-builtin", unknown_builtin, ("tiny-sd9",)),
    Case("model-ckpt-not-a-checkpoint", ckpt_not_pickle,
         ("broken.ckpt", "not a PyTorch checkpoint")),
    Case("model-ckpt-runs-code", ckpt_runs_code, ("evil.ckpt", "system", "not loaded"),
         commands=("run",)),
    Case("network-weights-missing", network_weights_missing,
         ("network_weights", "previous.safetensors")),
    Case("network-weights-not-lora", network_weights_not_lora,
         ("network_weights", "not_a_lora.safetensors")),
    Case("sample-prompts-missing", sample_prompts_missing, ("prompts.txt",)),
)
