"""`lora-train caption DIR --tagger MODEL`: captions from a WD14-style tagger.

The model is what SmilingWolf publishes (wd-v1-4-*-tagger-v2, wd-*-tagger-v3): ``model.onnx``
and ``selected_tags.csv`` (``tag_id,name,category,count``; category 9 rating, 0 general,
4 character). Its input is float32 NHWC (the size read from the model, 448 for the published
ones), BGR, 0-255, the picture pasted on a white square; its output one sigmoid score per
row of the CSV. It runs with onnxruntime (the ``captions`` extra). Options keep sd-scripts'
tagger names and defaults (``finetune/tag_images_by_wd14_tagger.py``).

MODEL is a local folder, or a Hugging Face repo id already in the local cache: nothing is
downloaded here.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lora_core.captioning.batches import BatchPlan, caption_in_batches
from lora_core.captioning.files import Change, join_tags, split_tags
from lora_core.errors import LoraError, ModelError

RATING, GENERAL, CHARACTER = 9, 0, 4
MODEL_FILE, TAGS_FILE = "model.onnx", "selected_tags.csv"
# Tags made of punctuation and "_" (faces like ^_^): their underscores are the tag.
_KAOMOJI = re.compile(r"^[^A-Za-z0-9]*_[^A-Za-z0-9]*$")


@dataclass
class TaggerOptions:
    general_threshold: float = 0.35
    character_threshold: float = 0.85
    remove_underscore: bool = True
    escape_brackets: bool = True
    use_rating_tags: bool = False
    character_tags_first: bool = False
    undesired_tags: list[str] = field(default_factory=list)
    prefix: list[str] = field(default_factory=list)  # trigger words, first in every caption
    caption_extension: str = ".txt"
    batch_size: int = 4
    mode: str = "missing"  # "missing", "overwrite" or "append"


@dataclass
class Tag:
    name: str
    category: int


def find_model(spec: str) -> Path:
    """The folder holding model.onnx and selected_tags.csv: ``spec`` itself, or the local
    Hugging Face cache's copy of repo ``spec``."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return folder
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        from huggingface_hub import try_to_load_from_cache  # diffusers' own dependency

        found = try_to_load_from_cache(spec, MODEL_FILE)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found).parent
        raise ModelError(f"the tagger {spec} is not in the local Hugging Face cache, and "
                         "nothing is downloaded here",
                         f"on a machine with internet: hf download {spec} {MODEL_FILE} "
                         f"{TAGS_FILE} --local-dir wd-tagger, copy the folder here and give "
                         "its path")
    raise ModelError(f"tagger model folder not found: {spec}",
                     f"give a folder holding {MODEL_FILE} and {TAGS_FILE}")


def read_tags(folder: Path) -> list[Tag]:
    path = folder / TAGS_FILE
    if not path.is_file():
        raise ModelError(f"{folder} has no {TAGS_FILE}", f"a WD14 tagger folder holds "
                         f"{MODEL_FILE} and {TAGS_FILE}; copy both")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        tags = [Tag(row["name"], int(row["category"])) for row in rows]
    except (KeyError, ValueError, csv.Error, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not a tagger's tag list ({exc})",
                         "it needs the columns tag_id,name,category,count") from None
    if not tags:
        raise ModelError(f"{path} lists no tags", "copy the model's own selected_tags.csv")
    return tags


class Tagger:
    def __init__(self, folder: Path) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise LoraError("the tagger needs onnxruntime, which is not installed",
                            "install it: .venv/bin/pip install onnxruntime (or the project's "
                            "extra: pip install -e \".[captions]\")") from None
        self.tags = read_tags(folder)
        model = folder / MODEL_FILE
        if not model.is_file():
            raise ModelError(f"{folder} has no {MODEL_FILE}", f"copy the tagger's {MODEL_FILE}")
        try:
            self.session = onnxruntime.InferenceSession(str(model),
                                                        providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for a bad file
            raise ModelError(f"{model} cannot be loaded by onnxruntime ({exc})",
                             "copy the model again") from None
        inputs, outputs = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name = inputs.name
        shape = inputs.shape
        if len(shape) != 4 or not isinstance(shape[1], int) or shape[3] != 3:
            raise ModelError(f"{model} takes input of shape {shape}, not a picture in NHWC "
                             "order", "use a WD14 tagger model")
        self.size = int(shape[1])
        width = outputs.shape[-1]
        if isinstance(width, int) and width != len(self.tags):
            raise ModelError(f"{model} gives {width} scores but {TAGS_FILE} lists "
                             f"{len(self.tags)} tags", "the two files come from different "
                             "taggers: copy both from the same one")

    def prepare(self, image_path: Path):
        """The picture as the model takes it: on a white square, resized, BGR, 0-255."""
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(image_path) as image:
                image.load()
                image = image.convert("RGBA")
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise LoraError(f"{image_path} cannot be read as a picture ({exc})",
                            "replace or remove it; no caption was written for it") from None
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        canvas.alpha_composite(image)
        side = max(image.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(canvas.convert("RGB"), ((side - image.width) // 2,
                                             (side - image.height) // 2))
        if side != self.size:
            square = square.resize((self.size, self.size), Image.Resampling.BICUBIC)
        return np.asarray(square, dtype=np.float32)[:, :, ::-1]  # RGB -> BGR

    def scores(self, images: list[Path]):
        import numpy as np

        batch = np.stack([self.prepare(p) for p in images])
        out = self.session.run(None, {self.input_name: batch})[0]
        if out.shape[-1] != len(self.tags):
            raise ModelError(f"the tagger gave {out.shape[-1]} scores but {TAGS_FILE} lists "
                             f"{len(self.tags)} tags", "copy both files from the same tagger")
        return out


def tag_text(name: str, options: TaggerOptions) -> str:
    if options.remove_underscore and len(name) > 3 and not _KAOMOJI.match(name):
        name = name.replace("_", " ")
    if options.escape_brackets:
        name = name.replace("(", "\\(").replace(")", "\\)")
    return name


def caption_tags(scores, tags: list[Tag], options: TaggerOptions) -> list[str]:
    """The tags a picture's scores give, in order: prefix, (rating,) character first when
    asked, then by score."""
    general, character, rating = [], [], []
    for score, tag in zip(scores, tags, strict=True):
        if tag.category == GENERAL and score >= options.general_threshold:
            general.append((float(score), tag.name))
        elif tag.category == CHARACTER and score >= options.character_threshold:
            character.append((float(score), tag.name))
        elif tag.category == RATING:
            rating.append((float(score), tag.name))
    general.sort(key=lambda item: -item[0])
    character.sort(key=lambda item: -item[0])
    chosen = [name for _, name in (character + general if options.character_tags_first
                                   else sorted(character + general, key=lambda i: -i[0]))]
    if options.use_rating_tags and rating:
        chosen.insert(0, max(rating)[1])
    undesired = set(options.undesired_tags)
    texts = [tag_text(name, options) for name in chosen]
    texts = [t for t in texts if t not in undesired and t not in options.prefix]
    return list(dict.fromkeys(options.prefix + texts))


def caption_folder(folder: Path, model: str, options: TaggerOptions, dry_run: bool = False,
                   progress: Callable[[int, int], None] | None = None,
                   cancelled: Callable[[], bool] | None = None,
                   limit: int | None = None) -> list[Change]:
    """Tag the pictures of ``folder`` (those without a caption unless the mode says
    otherwise); returns the caption changes (written unless ``dry_run``). A cancel stops
    between batches: the captions of finished batches are written, none half-way
    (``batches.caption_in_batches``, the loop the sentence captioners share)."""
    def load() -> Callable[[list[Path]], list[str | None]]:
        tagger = Tagger(find_model(model))
        return lambda images: [join_tags(caption_tags(scores, tagger.tags, options))
                               for scores in tagger.scores(images)]

    def merge(existing: str | None, tags: str) -> str:
        if existing is None:
            return tags
        old = split_tags(existing)
        return join_tags(old + [t for t in split_tags(tags) if t not in old])

    plan = BatchPlan(options.caption_extension, options.mode, options.batch_size, limit)
    return caption_in_batches(folder, plan, load, merge, dry_run, progress, cancelled)
