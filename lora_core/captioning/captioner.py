"""`lora-train caption DIR --captioner MODEL`: sentence captions from a vision-language
model, for the families whose text encoder reads prose (Flux's T5) rather than tag lists.

MODEL is a folder in transformers' format (``config.json``, the weights, the processor
files) or a Hugging Face repo id already in the local cache; nothing is downloaded
(``HF_HUB_OFFLINE``). It is loaded through transformers' auto classes for image-text-to-text
models, so what transformers supports natively works: BLIP, BLIP-2, GIT, Florence-2 (the
native conversions, e.g. ``florence-community/Florence-2-base``), and chat-style models
such as LLaVA. A checkpoint that needs remote code (``auto_map`` in its config.json, what
``trust_remote_code`` would run, e.g. ``microsoft/Florence-2-base``) is refused by name:
running a model's own Python is not something a caption command should do.

How the prompt is used, by kind:

* Florence-2: one of its caption task prompts, :data:`FLORENCE_TASKS`
  (``<DETAILED_CAPTION>`` unless told);
* a chat model (its processor has a chat template): a free prompt, put in a user turn with
  the picture (:data:`CHAT_PROMPT` unless told); the prompt is not part of the caption;
* BLIP, BLIP-2, GIT: no prompt unless told; a prompt is the start of the sentence
  ("a photograph of"), as these models are trained.

The model runs on the GPU when there is one (half precision), else on the CPU in fp32;
greedy decoding, so a caption is the same on every run. The rules about which pictures,
batches, cancel and writing are ``batches.py``'s, shared with the tagger; the clean-up is
``sentences.py``'s.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lora_core.captioning.batches import BatchPlan, caption_in_batches, open_picture
from lora_core.captioning.files import Change
from lora_core.captioning.sentences import (
    appended,
    clean_sentence,
    parse_sentence_replacements,
    replace_words,
    with_prefix,
)
from lora_core.errors import LoraError, ModelError

log = logging.getLogger(__name__)
FLORENCE_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
CHAT_PROMPT = "Describe this image in one or two sentences."
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
# Files besides config.json whose auto_map would also run the model's own code.
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json",
                    "tokenizer_config.json")


@dataclass
class CaptionerOptions:
    prompt: str | None = None  # None: the default of the model's kind (module docstring)
    max_length: int = 75  # new tokens at most
    prefix: str = ""  # trigger words, first in every caption
    raw: bool = False  # no clean-up
    replace: list[str] = field(default_factory=list)  # "old=new", whole words
    caption_extension: str = ".txt"
    batch_size: int = 4
    mode: str = "missing"  # "missing", "overwrite" or "append"


def find_captioner(spec: str) -> Path:
    """The model's folder: ``spec`` itself, or the local Hugging Face cache's snapshot of
    repo ``spec``; ModelError when it is neither, or holds no transformers model."""
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        if folder.exists() or not _REPO_ID.fullmatch(spec):
            raise ModelError(f"captioner model folder not found: {spec}",
                             "give a folder in transformers' format (config.json, weights, "
                             "processor files) or a Hugging Face repo id in the local cache")
        folder = _cached_snapshot(spec)
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} is not a transformers model folder (no config.json)",
                         "give the folder that holds the captioner's config.json, weights "
                         "and processor files (a WD14 tagger goes with --tagger)")
    return folder


def _cached_snapshot(repo: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise ModelError(f"the captioner {repo} is not in the local Hugging Face cache, and "
                         "nothing is downloaded here",
                         f"on a machine with internet: hf download {repo} --local-dir "
                         f"{repo.split('/')[-1]}, copy the folder here and give its path"
                         ) from None


def read_model_config(folder: Path) -> dict:
    """config.json, refused when it asks for remote code or is no config."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not a readable JSON config ({exc})",
                         "copy the model folder again") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise ModelError(f"{path} names no model_type", "this is not a transformers model "
                         "config; give the captioner's own folder")
    for name in ("config.json", *_PROCESSOR_FILES):
        data = config if name == "config.json" else _json_or_none(folder / name)
        if isinstance(data, dict) and "auto_map" in data:
            raise ModelError(f"{folder} needs remote code (auto_map in {name}: its own Python "
                             "files, what trust_remote_code would run), which is never run "
                             "here", "use a checkpoint in transformers' native format; for "
                             "Florence-2: florence-community/Florence-2-base or -large")
    return config


def _json_or_none(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None  # absent or unreadable: the processor's loading names it


def check_prompt(kind: str, prompt: str | None) -> None:
    """Florence-2 takes only its caption tasks; its tasks mean nothing to other models."""
    task = prompt is not None and prompt.strip() in FLORENCE_TASKS
    if kind == "florence2" and prompt is not None and not task:
        raise LoraError(f"--prompt {prompt!r} is not a Florence-2 caption task",
                        f"give one of {', '.join(FLORENCE_TASKS)}")
    if kind != "florence2" and task:
        raise LoraError(f"--prompt {prompt} is a Florence-2 task, and this captioner is "
                        f"{kind}", "give a plain prompt, or none")


class Captioner:
    """One loaded model and its processor: ``captions(pictures)`` gives one text each."""

    def __init__(self, folder: Path, prompt: str | None, max_length: int) -> None:
        config = read_model_config(folder)
        self.kind = str(config["model_type"])
        self.max_length = max_length
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded, ever
        import torch
        import transformers

        transformers.utils.logging.disable_progress_bar()  # the events say the progress
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(
                folder, local_files_only=True)
            self.model = transformers.AutoModelForImageTextToText.from_pretrained(
                folder, local_files_only=True, dtype=self._dtype(torch)).eval()
        except ImportError as exc:
            raise ModelError(f"{folder} ({self.kind}) needs a package that is not installed "
                             f"({str(exc).splitlines()[0]})", "install the package it names "
                             "into this environment, or use another captioner") from None
        except (ValueError, OSError, KeyError) as exc:
            raise ModelError(f"{folder} cannot be loaded as an image-to-text model "
                             f"({self.kind}: {str(exc).splitlines()[0]})",
                             "give a captioner transformers supports natively (BLIP, BLIP-2, "
                             "GIT, Florence-2, LLaVA) with its processor files") from None
        self.model.to(self.device)
        self.chat = self.kind != "florence2" and bool(
            getattr(self.processor, "chat_template", None))
        self.prompt = self._prompt(prompt)
        tokenizer = getattr(self.processor, "tokenizer", None)
        if self.chat and tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only: the answer follows the prompt

    @property
    def device(self) -> str:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _dtype(self, torch):
        if not torch.cuda.is_available():
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _prompt(self, prompt: str | None) -> str | None:
        check_prompt(self.kind, prompt)
        if self.kind == "florence2":
            return (prompt or "<DETAILED_CAPTION>").strip()
        if self.chat:
            return prompt or CHAT_PROMPT
        return prompt or None

    def _inputs(self, pictures: list) -> dict:
        count = len(pictures)
        if self.chat:
            messages = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": self.prompt}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            return self.processor(images=pictures, text=[text] * count, return_tensors="pt",
                                  padding=True)
        if self.prompt is None:
            return self.processor(images=pictures, return_tensors="pt")
        return self.processor(images=pictures, text=[self.prompt] * count,
                              return_tensors="pt", padding=True)

    def _new_tokens(self, inputs) -> int:
        """``--max-length``, within the positions the text model has (a longer caption
        would index past its position table)."""
        config = self.model.config
        text = getattr(config, "text_config", None) or config
        positions = getattr(text, "max_position_embeddings", None)
        if not isinstance(positions, int):
            return self.max_length
        used = 2 if config.is_encoder_decoder else inputs["input_ids"].shape[1] \
            if "input_ids" in inputs else 1
        return max(1, min(self.max_length, positions - used))

    def captions(self, images: list[Path]) -> list[str]:
        import torch

        pictures = [open_picture(path) for path in images]
        inputs = self._inputs(pictures).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        try:
            with torch.inference_mode():
                out = self.model.generate(**inputs, max_new_tokens=self._new_tokens(inputs),
                                          do_sample=False, num_beams=1)
        except torch.cuda.OutOfMemoryError:
            raise LoraError(f"the GPU ran out of memory captioning {len(images)} picture(s) "
                            "at once", "give a smaller --batch-size (1 uses the least), or a "
                            "smaller captioner; nothing was written") from None
        if self.chat:  # a chat model's output repeats the prompt: the caption follows it
            out = out[:, inputs["input_ids"].shape[1]:]
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [" ".join(text.split()) for text in texts]


def finish_caption(text: str, options: CaptionerOptions,
                   replacements: list | None = None) -> str | None:
    """The sentence as written (before ``--append``): cleaned unless raw, the replacements,
    the prefix. None when the model said nothing."""
    if not options.raw:
        text = clean_sentence(text)
    text = replace_words(text, replacements or [])
    if not text.strip():
        return None
    return with_prefix(text, options.prefix)


def caption_folder(folder: Path, model: str, options: CaptionerOptions, dry_run: bool = False,
                   progress: Callable[[int, int], None] | None = None,
                   cancelled: Callable[[], bool] | None = None,
                   limit: int | None = None) -> list[Change]:
    """Sentence captions for the pictures of ``folder`` (those without a caption unless the
    mode says otherwise); returns the changes, written unless ``dry_run``. Every input is
    checked (the replacements, the model folder, the pictures) before the model loads."""
    replacements = parse_sentence_replacements(options.replace)
    if options.max_length < 1:
        raise LoraError(f"--max-length must be 1 or more, not {options.max_length}",
                        "e.g. --max-length 75")
    found = find_captioner(model)
    check_prompt(str(read_model_config(found)["model_type"]), options.prompt)

    def load() -> Callable[[list[Path]], list[str | None]]:
        captioner = Captioner(found, options.prompt, options.max_length)

        def caption_batch(images: list[Path]) -> list[str | None]:
            finished = [finish_caption(text, options, replacements)
                        for text in captioner.captions(images)]
            for image, text in zip(images, finished, strict=True):
                if text is None:
                    log.warning("the captioner said nothing about %s: it keeps no caption",
                                image)
            return finished

        return caption_batch

    plan = BatchPlan(options.caption_extension, options.mode, options.batch_size, limit)
    return caption_in_batches(folder, plan, load, appended, dry_run, progress, cancelled)
