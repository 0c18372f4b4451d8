"""Read a kohya-style dataset folder tree and report what training would see.

This module answers "what is in these folders?" the way sd-scripts would read them. In CLI
folder mode (``--train_data_dir`` / ``--reg_data_dir``): one subset per immediate subfolder
named ``<repeats>_<class tokens>``; with a ``dataset_config`` (:func:`scan_config`): the
subsets it lists, with their own repeats, class tokens and options. Either way images are
globbed non-recursively and captions come from ``<image stem><caption_extension>`` (the first
line; every non-empty line with enable_wildcard) with the class tokens as the fallback.
It also collects everything a user may have got wrong (captions under another
extension, undecodable images, non-UTF-8 captions, ...), which ``checks.dataset`` turns into
problems before any GPU time is spent.

It reads only: image sizes come from file headers (no pixel decoding), and nothing is ever
written inside the dataset folders. Pure Python + PIL; no torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageFile

from lora_core.dataset.subset_options import SubsetOptions
from lora_core.errors import DatasetError

if TYPE_CHECKING:
    from lora_core.dataset.dataset_config import DatasetConfig, SubsetSpec

# sd-scripts lists these in lower and upper case; we accept any letter case (".Jpg" too).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Caption extensions people use; a caption found only under one of the *other* ones is the
# classic "my captions are ignored" mistake (sd-scripts defaults to .caption, most taggers
# write .txt) and is reported, never silently used.
KNOWN_CAPTION_EXTENSIONS = (".txt", ".caption", ".tags", ".md")
# How many file names one message lists before it says "and N more".
_MAX_LISTED = 5
_EXAMPLE_FOLDER = "10_mychar"
# How far from the end of an image file its end marker is looked for. Cameras and editors
# may append data after a JPEG's end marker; beyond this the file is decoded to be sure.
_TAIL_BYTES = 4096
# The bytes a complete file of each format ends with (PNG: the IEND chunk and its CRC).
_END_MARKERS = {"PNG": b"IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}


@dataclass(frozen=True)
class ImageRecord:
    """One readable image and the caption sd-scripts would train it with."""

    path: Path
    width: int
    height: int
    caption: str
    # The caption file found (None: none exists). The class tokens are the caption when
    # there is none, or when it is empty or unreadable (see SubsetScan).
    caption_file: Path | None
    # The mask image (the subset's conditioning_data_dir), or None.
    mask_path: Path | None = None
    has_alpha: bool = False  # the file has an alpha channel (or a transparent colour)


@dataclass
class SubsetScan:
    """One image folder (a ``<repeats>_<class tokens>`` folder, or a dataset_config subset):
    its images and everything odd about them."""

    folder: Path
    name: str  # the folder's basename, e.g. "10_sks dog" (the key sd-scripts' metadata uses)
    repeats: int
    class_tokens: str
    is_reg: bool
    # How this folder's captions and pixels are processed (see subset_options).
    options: SubsetOptions = field(default_factory=SubsetOptions)
    # Images with a side below this are listed in too_small (the dataset's smallest bucket).
    min_side_px: int = 0
    dataset_index: int = 0  # which [[datasets]] it belongs to (always 0 in folder mode)
    spec: SubsetSpec | None = None  # its dataset_config table (None in folder mode)
    images: list[ImageRecord] = field(default_factory=list)
    # Readable images with no caption file under caption_extension (class tokens used).
    missing_captions: list[Path] = field(default_factory=list)
    # (image, caption file) for images of missing_captions that do have a caption file
    # under another known extension, which sd-scripts does not read.
    other_extension_captions: list[tuple[Path, Path]] = field(default_factory=list)
    undecodable: list[tuple[Path, str]] = field(default_factory=list)  # (image, reason)
    too_small: list[Path] = field(default_factory=list)
    # Caption files whose first line is empty: class tokens are used instead.
    empty_captions: list[Path] = field(default_factory=list)
    bad_captions: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)
    # Caption files with text after the first line, which is ignored (without
    # enable_wildcard; with it every non-empty line is the caption).
    multiline_captions: list[Path] = field(default_factory=list)
    # Caption files starting with a UTF-8 byte-order mark (removed before use).
    bom_captions: list[Path] = field(default_factory=list)
    # Subfolders holding images, which are not read (sd-scripts does not recurse): set only
    # when the folder itself has no images, the "one level too deep" mistake.
    nested_image_dirs: list[Path] = field(default_factory=list)
    tag_frequency: dict[str, int] = field(default_factory=dict)
    # masked_loss mask images: their folder, and the images that have none there.
    mask_dir: Path | None = None
    missing_masks: list[Path] = field(default_factory=list)

    @property
    def captions_found(self) -> int:
        """Images whose caption came from a caption file."""
        return sum(1 for record in self.images if record.caption_file is not None)

    @property
    def label(self) -> str:
        """How messages name it: the folder name; in config mode after its dataset, where
        two datasets may use the same folder ("datasets[1] reg/person")."""
        if self.spec is None:
            return self.name
        return f"datasets[{self.dataset_index}] {'reg/' if self.is_reg else ''}{self.name}"


@dataclass
class DatasetScan:
    """Everything found under train_data_dir (and reg_data_dir), or in the subsets of a
    dataset_config (``config``; ``train`` / ``reg`` then hold every dataset's subsets)."""

    train: list[SubsetScan]
    reg: list[SubsetScan]
    skipped: list[tuple[Path, str]]  # folders not used as subsets, and why
    warnings: list[str]
    train_dir: Path | None = None
    reg_dir: Path | None = None
    caption_extension: str = ".txt"
    min_side_px: int = 0
    config: DatasetConfig | None = None

    @property
    def subsets(self) -> list[SubsetScan]:
        """Train subsets then reg subsets: the order sd-scripts registers images in."""
        return [*self.train, *self.reg]

    def caption_extension_of(self, subset: SubsetScan) -> str:
        """The caption extension a subset reads (per subset with a dataset_config)."""
        return subset.options.caption_extension if self.config else self.caption_extension


def parse_folder_name(name: str) -> tuple[int, str] | None:
    """``"10_sks dog"`` → ``(10, "sks dog")``; ``"5_my_char"`` → ``(5, "my_char")``.

    Same rule as sd-scripts: split on "_", the first piece must parse with ``int()``, the rest
    is re-joined with "_". Returns None when there is no integer prefix. Repeats below 1 are
    returned as parsed; the caller decides to skip them.
    """
    first, _, rest = name.partition("_")
    try:
        repeats = int(first)
    except ValueError:
        return None
    return repeats, rest


def is_image_name(name: str) -> bool:
    # glob("*.png") in sd-scripts never matches names starting with a dot, which also keeps
    # macOS "._photo.jpg" resource-fork files out.
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def scan_dataset(train_dir: Path, reg_dir: Path | None, caption_extension: str,
                 min_side_px: int, options: SubsetOptions | None = None) -> DatasetScan:
    """Scan the train (and optional reg) parent folders.

    ``min_side_px``: images with a side below this are listed as too small (the caller passes
    the smallest bucket side). Raises DatasetError for folder-layout mistakes that leave
    nothing to train on; per-file problems are collected instead (see :func:`problems`).
    """
    if caption_extension and not caption_extension.startswith("."):
        caption_extension = "." + caption_extension  # sd-scripts adds the missing dot too
    train_dir = Path(train_dir)
    _require_folder(train_dir, "train_data_dir",
                    "set train_data_dir to the folder that holds your <repeats>_<name> folders")
    scan = DatasetScan(train=[], reg=[], skipped=[], warnings=[], train_dir=train_dir,
                       reg_dir=Path(reg_dir) if reg_dir else None,
                       caption_extension=caption_extension, min_side_px=min_side_px)
    options = options or SubsetOptions(caption_extension=caption_extension)
    scan.train = _scan_parent(train_dir, False, caption_extension, min_side_px, scan, options)
    if scan.reg_dir is not None:
        _require_folder(scan.reg_dir, "reg_data_dir",
                        "fix the path, or leave reg_data_dir empty to train without "
                        "regularization images")
        if scan.reg_dir.resolve() == train_dir.resolve():
            raise DatasetError(
                f"reg_data_dir and train_data_dir are the same folder: {train_dir}",
                "put regularization images in their own parent folder, or leave "
                "reg_data_dir empty")
        scan.reg = _scan_parent(scan.reg_dir, True, caption_extension, min_side_px, scan,
                                options)
    return scan


def scan_config(config: DatasetConfig) -> DatasetScan:
    """Scan the subsets a dataset_config lists, each with its own options.

    Per-file findings are the same as in folder mode. An image_dir that is missing or not a
    folder is an error (sd-scripts only warns and trains without it); a subset without
    images is a warning, and ``problems`` says so when no train subset has any.
    """
    scan = DatasetScan(train=[], reg=[], skipped=list(config.skipped),
                       warnings=list(config.warnings), config=config)
    missing = [f"`{spec.where}.image_dir` = {spec.image_dir} "
               f"{'is a file, not a folder' if spec.image_dir.exists() else 'does not exist'}"
               for dataset in config.datasets for spec in dataset.subsets
               if not spec.image_dir.is_dir()]
    masks = [spec for dataset in config.datasets for spec in dataset.subsets
             if spec.conditioning_data_dir is not None]
    missing += [f"`{spec.where}.conditioning_data_dir` = {spec.conditioning_data_dir} "
                + ("is a file, not a folder" if spec.conditioning_data_dir.exists()
                   else "does not exist")
                for spec in masks if not spec.conditioning_data_dir.is_dir()]
    if missing:
        raise DatasetError(f"dataset_config {config.path}: " + "; ".join(missing),
                           "fix image_dir / conditioning_data_dir (a path relative to the "
                           "config file's folder, or absolute) to name the folder that holds "
                           "the images / masks")
    sides = []
    for dataset in config.datasets:
        min_side_px = dataset.bucket.smallest_side()
        sides.append(min_side_px)
        for spec in dataset.subsets:
            subset = _scan_subset(spec.image_dir, spec.num_repeats, spec.class_tokens,
                                  spec.is_reg, spec.options.caption_extension, min_side_px,
                                  scan, spec.options, spec.conditioning_data_dir)
            subset.dataset_index, subset.spec = dataset.index, spec
            (scan.reg if spec.is_reg else scan.train).append(subset)
    scan.min_side_px = min(sides, default=0)
    first = next((s for d in config.datasets for s in d.subsets), None)
    if first is not None:
        scan.caption_extension = first.options.caption_extension
    return scan


def _require_folder(path: Path, key: str, hint: str) -> None:
    if not path.exists():
        raise DatasetError(f"{key} does not exist: {path}", hint)
    if not path.is_dir():
        raise DatasetError(f"{key} is a file, not a folder: {path}", hint)


def _scan_parent(parent: Path, is_reg: bool, caption_extension: str, min_side_px: int,
                 scan: DatasetScan, options: SubsetOptions) -> list[SubsetScan]:
    """One subset per immediate ``<repeats>_<name>`` subfolder, sorted by name.

    sd-scripts takes the subfolders in directory-listing order, which differs between file
    systems; sorting makes reg balancing (which depends on the order) reproducible.
    """
    key = "reg_data_dir" if is_reg else "train_data_dir"
    subdirs: list[Path] = []
    loose_images = 0
    with os.scandir(parent) as entries:
        for entry in entries:
            if entry.is_dir():
                subdirs.append(Path(entry.path))
            elif entry.is_file() and is_image_name(entry.name):
                loose_images += 1
    subsets: list[SubsetScan] = []
    skipped: list[tuple[Path, str]] = []
    for folder in sorted(subdirs, key=lambda p: p.name):
        parsed = parse_folder_name(folder.name)
        if parsed is None:
            skipped.append((folder, "its name does not start with a number of repeats and "
                                    f"\"_\" (like {_EXAMPLE_FOLDER})"))
            continue
        repeats, class_tokens = parsed
        if repeats < 1:
            skipped.append((folder, f"its repeats ({repeats}) are less than 1"))
            continue
        subsets.append(_scan_subset(folder, repeats, class_tokens, is_reg, caption_extension,
                                    min_side_px, scan, options))
    scan.skipped.extend(skipped)
    for folder, reason in skipped:
        scan.warnings.append(f"skipped folder {folder}: {reason}")
    if not subsets:
        raise _no_subsets_error(parent, key, loose_images, skipped)
    if loose_images:
        scan.warnings.append(
            f"{loose_images} image(s) directly inside {key} {parent} are ignored: only images "
            "inside its <repeats>_<name> subfolders are used")
    return subsets


def _no_subsets_error(parent: Path, key: str, loose_images: int,
                      skipped: list[tuple[Path, str]]) -> DatasetError:
    """The message for 'nothing usable here', tailored to the likely mistake."""
    convention = (f"{key} must be the parent of folders named <repeats>_<name>, e.g. "
                  f"{parent / _EXAMPLE_FOLDER} (10 repeats per epoch; \"mychar\" is the caption "
                  "of images that have no caption file)")
    parsed = parse_folder_name(parent.name)
    if parsed is not None:
        # The famous one: train_data_dir points at the image folder itself.
        what = f"contains {loose_images} image(s) directly and " if loose_images else ""
        return DatasetError(
            f"{key} {parent} looks like a concept folder itself (its name \"{parent.name}\" "
            f"means {parsed[0]} repeats of \"{parsed[1]}\"): it {what}has no "
            "<repeats>_<name> subfolders",
            f"set {key} to {parent.parent} (the folder that contains \"{parent.name}\")")
    if loose_images:
        return DatasetError(
            f"{key} {parent} contains {loose_images} image(s) directly but no <repeats>_<name> "
            "subfolders; sd-scripts only reads images inside such subfolders",
            f"move the images into a subfolder such as {parent / _EXAMPLE_FOLDER} and keep "
            f"{key} = {parent}. {convention}")
    if skipped:
        names = ", ".join(f"\"{folder.name}\"" for folder, _ in skipped[:_MAX_LISTED])
        more = f" and {len(skipped) - _MAX_LISTED} more" if len(skipped) > _MAX_LISTED else ""
        deeper = _concept_folders_below(skipped)
        if deeper:
            return _one_level_too_high(parent, key, deeper)
        first = skipped[0][0].name
        parsed = parse_folder_name(first)
        # A folder with 0 or negative repeats gets a new count; one without gets one added.
        renamed = f"1_{parsed[1]}" if parsed is not None else f"10_{first}"
        return DatasetError(
            f"{key} {parent} has no usable <repeats>_<name> subfolder: skipped {names}{more} "
            f"({skipped[0][1]})",
            f"rename the folders with a repeat count of at least 1 in front, e.g. "
            f"\"{first}\" → \"{renamed}\". {convention}")
    return DatasetError(f"{key} {parent} contains no image folders", convention)


def _concept_folders_below(skipped: list[tuple[Path, str]]
                           ) -> list[tuple[Path, list[Path]]]:
    """Each skipped folder that itself holds ``<repeats>_<name>`` folders with images, and
    those folders."""
    found = []
    for folder, _ in skipped:
        try:
            with os.scandir(folder) as entries:
                concepts = sorted((Path(e.path) for e in entries if e.is_dir()
                                   and (parse_folder_name(e.name) or (0, ""))[0] >= 1
                                   and _has_images(Path(e.path))), key=lambda p: p.name)
        except OSError:
            continue
        if concepts:
            found.append((folder, concepts))
    return found


# Folder names that say "regularization images" (kohya_ss' layout: img/ reg/ model/ log/).
_REG_NAMES = ("reg", "regs", "reg_images", "regularization", "regularisation", "class",
              "class_images")


def _looks_like_reg(folder: Path) -> bool:
    name = folder.name.lower().replace("-", "_").replace(" ", "_")
    return name in _REG_NAMES or name.startswith(("reg_", "regulari"))


def _one_level_too_high(parent: Path, key: str, deeper: list[tuple[Path, list[Path]]]
                        ) -> DatasetError:
    """The <repeats>_<name> folders sit one level deeper ("data/train/10_char" with
    train_data_dir = "data"). Where several folders hold some (``train/`` and ``reg/``, as
    the example dataset and kohya_ss lay them out), train_data_dir is pointed at the
    training images and the regularization folder is named as such, never the other way
    round (issue 24: the hint once sent train_data_dir into reg/, the first by name)."""
    is_reg = key == "reg_data_dir"
    ours = [d for d in deeper if _looks_like_reg(d[0]) == is_reg] or deeper
    wrapper, concepts = ours[0]
    others = [d for d in deeper if d[0] != wrapper]

    def listed(folders: list[Path]) -> str:
        return ", ".join(f"{c.name!r}" for c in folders[:_MAX_LISTED])

    inside = "; ".join(f"inside \"{w.name}\" ({listed(c)})" for w, c in (ours[0], *others))
    what = "regularization" if is_reg else "training"
    hint = f"set {key} to {wrapper} (its <repeats>_<name> folders hold the {what} images"
    hint += "; the name after the repeats is the trigger of pictures without a caption)" \
        if not is_reg else ")"
    for folder, _ in others:
        if _looks_like_reg(folder) and not is_reg:
            hint += (f"; {folder} looks like regularization images: for those set "
                     f"reg_data_dir to it (optional), never train_data_dir")
        elif is_reg and not _looks_like_reg(folder):
            hint += f"; {folder} looks like the training images: train_data_dir names that"
        else:
            hint += f"; {folder} holds <repeats>_<name> folders too"
    return DatasetError(f"{key} {parent} has no usable <repeats>_<name> subfolder: the "
                        f"<repeats>_<name> folders are one level deeper, {inside}", hint)


def _scan_subset(folder: Path, repeats: int, class_tokens: str, is_reg: bool,
                 caption_extension: str, min_side_px: int, scan: DatasetScan,
                 options: SubsetOptions, mask_dir: Path | None = None) -> SubsetScan:
    subset = SubsetScan(folder=folder, name=folder.name, repeats=repeats,
                        class_tokens=class_tokens, is_reg=is_reg, options=options,
                        min_side_px=min_side_px, mask_dir=mask_dir)
    masks = _mask_files(mask_dir) if mask_dir is not None else {}
    # One directory listing answers every "does this caption file exist?" question, which
    # keeps a 1000-image folder at 1000 header reads instead of thousands of stat calls.
    files: set[str] = set()
    child_dirs: list[Path] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file():
                files.add(entry.name)
            elif entry.is_dir():
                child_dirs.append(Path(entry.path))
    files_lower: dict[str, str] = {name.lower(): name for name in files}
    image_paths = sorted((folder / name for name in files if is_image_name(name)), key=str)
    other_extensions = [ext for ext in KNOWN_CAPTION_EXTENSIONS
                        if ext.lower() != caption_extension.lower()]
    captions: list[str] = []
    for image_path in image_paths:
        size, reason, has_alpha = _read_size(image_path)
        if size is None:
            # Reported as a problem on its own; its caption does not matter until it opens.
            subset.undecodable.append((image_path, reason))
            continue
        caption_file = _find_caption(folder, image_path.name, caption_extension, files,
                                     files_lower)
        caption = (_read_caption(caption_file, subset, options.enable_wildcard)
                   if caption_file else None)
        if caption_file is None:
            subset.missing_captions.append(image_path)
            alternative = next((found for ext in other_extensions
                                if (found := _find_caption(folder, image_path.name, ext, files,
                                                           files_lower))), None)
            if alternative is not None:
                subset.other_extension_captions.append((image_path, alternative))
        if caption is None:
            caption = class_tokens
        width, height = size
        if width < min_side_px or height < min_side_px:
            subset.too_small.append(image_path)
        mask = masks.get(image_path.stem)
        if mask_dir is not None and mask is None:
            subset.missing_masks.append(image_path)
        subset.images.append(ImageRecord(image_path, width, height, caption, caption_file,
                                         mask, has_alpha))
        captions.append(caption)
    subset.tag_frequency = count_tags(captions)
    if not image_paths:
        nested = sorted((d for d in child_dirs if _has_images(d)), key=lambda p: p.name)
        subset.nested_image_dirs = nested
        where = (f"; images in deeper folders are not read (found some in "
                 f"{nested[0].name}/)" if nested else "")
        scan.warnings.append(f"folder {folder} contains no images "
                             f"({' '.join(IMAGE_EXTENSIONS)}), so it is not used{where}")
    return subset


def _mask_files(folder: Path) -> dict[str, Path]:
    """Image stem -> its mask in ``folder``: the image file with the same stem (any image
    extension, as sd-scripts matches conditioning images)."""
    found: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_file() and is_image_name(entry.name):
                found.setdefault(Path(entry.name).stem, Path(entry.path))
    return found


def _read_size(path: Path) -> tuple[tuple[int, int] | None, str, bool]:
    """(width, height) from the file header, "" and whether the image has transparency (an
    alpha channel or a transparent colour, for alpha_mask); (None, reason, False) if the
    file cannot be trained on.

    Pixels are decoded only for a file whose end looks missing (:func:`_looks_truncated`):
    a truncated download has a readable header, and would otherwise pass the check and stop
    the run when the loader reaches it, after the model was loaded.
    """
    try:
        if path.stat().st_size == 0:
            return None, "the file is empty (0 bytes)", False
        # Image.open reads the header lazily; no .load(), so no pixels are decoded.
        with Image.open(path) as image:
            size = image.size  # before draft(), which changes it to the reduced size
            alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") \
                or "transparency" in image.info
            if _looks_truncated(path, image.format):
                # A JPEG decoded at 1/8 scale still reads every byte of its data, in a
                # fraction of the time (draft() is a no-op for other formats).
                image.draft(None, (image.width // 8, image.height // 8))
                try:
                    image.load()
                except Exception as exc:  # the decoder's own words say where it stopped
                    return None, f"truncated: the file ends inside its image data ({exc})", \
                        False
            return size, "", alpha
    except Image.DecompressionBombError:
        return None, _too_large_reason(path), False
    except Exception as exc:  # any decoder failure is a per-file finding
        # PIL's messages repeat the full path; the finding already names the file.
        return None, f"{type(exc).__name__}: {str(exc).replace(str(path), path.name)}", False


def _looks_truncated(path: Path, image_format: str | None) -> bool:
    """Whether the file may end early: no end marker near its end (PNG, JPEG), or shorter
    than the length its header declares (WebP's RIFF size, BMP's file size). Cheap: reads
    at most the last 4 KiB. A yes is confirmed by decoding, so a JPEG with data appended
    after its end marker is not blamed."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        marker = _END_MARKERS.get(image_format or "")
        if marker is not None:
            fh.seek(max(0, size - _TAIL_BYTES))
            return marker not in fh.read()
    if image_format == "WEBP" and head[:4] == b"RIFF":
        return size < int.from_bytes(head[4:8], "little") + 8
    if image_format == "BMP" and head[:2] == b"BM":
        return size < int.from_bytes(head[2:6], "little")
    return False


def _too_large_reason(path: Path) -> str:
    """Why a header PIL refuses as a decompression bomb cannot be trained, with the size it
    claims. Image.open refuses before it says the size, so the header is read again by the
    format's own PIL reader, which runs no bomb check and decodes nothing."""
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # PIL refuses at twice its warning limit
    claimed = "more pixels"
    try:
        with open(path, "rb") as fh:
            prefix = fh.read(16)
            for image_format in Image.ID:
                factory, accept = Image.OPEN[image_format]
                if accept is not None and not accept(prefix):
                    continue
                fh.seek(0)
                try:
                    image: ImageFile.ImageFile = factory(fh, path.name)
                except Exception:  # not this format: try the next reader, as Image.open does
                    continue
                width, height = image.size
                claimed = f"{width}x{height} ({width * height / 1e6:,.0f} megapixels)"
                break
    except OSError:
        pass
    return (f"its header says {claimed}, more than the {limit / 1e6:,.0f} megapixels PIL "
            "decodes safely: a damaged file or a decompression bomb")


def _find_caption(folder: Path, image_name: str, extension: str, files: set[str],
                  files_lower: dict[str, str]) -> Path | None:
    """The caption file sd-scripts would read for this image, or None.

    Candidates in order: ``<stem><ext>``, then, when the stem has at least 5 "_"-separated
    pieces (face-crop naming ``name_cx_cy_w_h``), the stem without its last 4 pieces.
    sd-scripts splits the full path rather than the stem, so for it a folder name containing
    "_" can add pieces; we follow the compatibility reference and count the stem only.
    """
    stem = os.path.splitext(image_name)[0]
    pieces = stem.split("_")
    candidates = [stem + extension]
    if len(pieces) >= 5:
        candidates.append("_".join(pieces[:-4]) + extension)
    for name in candidates:
        if name in files:
            return folder / name
        # On case-insensitive file systems (Windows, macOS) sd-scripts' isfile() also finds
        # "photo.TXT" for "photo.txt"; ask the file system only in that rare case.
        if name.lower() in files_lower and (folder / name).is_file():
            return folder / files_lower[name.lower()]
    return None


def _read_caption(path: Path, subset: SubsetScan, all_lines: bool = False) -> str | None:
    """The first line of a caption file, stripped; None (and a finding) if unusable.

    With ``all_lines`` (enable_wildcard) every non-empty line, stripped, joined with "\n",
    as sd-scripts keeps them: the caption processor picks one line per step.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        subset.bad_captions.append(
            (path, f"not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"))
        return None
    except OSError as exc:
        subset.bad_captions.append((path, f"cannot be read: {exc}"))
        return None
    if text.startswith("\ufeff"):
        # Notepad-style byte-order mark. sd-scripts would keep it glued to the first tag;
        # we drop it and say so (see advisories).
        subset.bom_captions.append(path)
        text = text[1:]
    # Python's text mode (which sd-scripts reads with) treats \r\n and \r as line ends.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if all_lines:
        kept = "\n".join(line.strip() for line in lines if line.strip())
        if not kept:
            subset.empty_captions.append(path)
            return None
        return kept
    first = lines[0].strip()
    if any(line.strip() for line in lines[1:]):
        subset.multiline_captions.append(path)
    if not first:
        subset.empty_captions.append(path)
        return None
    return first


def _has_images(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(entry.is_file() and is_image_name(entry.name) for entry in entries)
    except OSError:
        return False


def count_tags(captions: Iterable[str]) -> dict[str, int]:
    """Tag counts as sd-scripts' metadata records them: split on ",", strip, lower-case.

    Always a comma (whatever caption_separator is), empty pieces are not counted, and the
    captions are the raw ones (class tokens where there is no caption file).
    """
    counts: dict[str, int] = {}
    for caption in captions:
        for tag in caption.split(","):
            tag = tag.strip()
            if tag:
                tag = tag.lower()
                counts[tag] = counts.get(tag, 0) + 1
    return counts
