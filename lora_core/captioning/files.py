"""Caption files of a dataset, and the one way they are written: every command that changes
captions records what it changes on the undo stack first, then writes each file atomically.
Images are only ever read.

A dataset folder is either a folder of pictures, or the parent of ``<repeats>_<name>``
folders (the layout training reads); both are walked the same way.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from lora_core.atomic import atomic_write
from lora_core.dataset.scan import IMAGE_EXTENSIONS
from lora_core.errors import DatasetError, LoraError
from lora_core.paths import state_dir


def images_in(folder: Path) -> list[Path]:
    """The pictures of ``folder`` and of its sub-folders (``<repeats>_<name>`` and any
    other), sorted; DatasetError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder", "give the folder of your pictures, or "
                           "the one holding the <repeats>_<name> folders")
    found = sorted(p for p in folder.rglob("*") if p.is_file()
                   and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not found:
        raise DatasetError(f"{folder} holds no pictures ({' '.join(IMAGE_EXTENSIONS)})",
                           "check the folder")
    return found


def caption_path(image: Path, extension: str) -> Path:
    return image.with_suffix(extension if extension.startswith(".") else f".{extension}")


def read_caption(path: Path) -> str | None:
    """The caption text (None when there is no file)."""
    try:
        return path.read_text(encoding="utf-8-sig").strip()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise DatasetError(f"{path} is not UTF-8 text", "save it as UTF-8") from None


def split_tags(caption: str) -> list[str]:
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def caption_tags(caption: str) -> list[list[str]]:
    """The tags of each non-empty line: a multi-line caption file holds one alternative
    caption per line (sd-scripts' enable_wildcard picks one per step), so an edit applies
    to every line, never to a tag that spans two."""
    return [split_tags(line) for line in caption.split("\n") if line.strip()]


def caption_bytes(text: str, like: bytes | None) -> bytes:
    """``text`` as a caption file's bytes, in the form of the file it replaces (``like``):
    its byte-order mark and line ends (CRLF or LF) kept; a new file is UTF-8 with LF."""
    like = like or b""
    newline = "\r\n" if b"\r\n" in like else "\n"
    bom = "\ufeff" if like.startswith(b"\xef\xbb\xbf") else ""
    return (bom + text.replace("\n", newline) + newline).encode("utf-8")


def _file_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def join_tags(tags: list[str]) -> str:
    return ", ".join(tags)


@dataclass
class Change:
    path: Path
    before: str | None  # None: the file did not exist
    after: str


def check_writable(changes: list[Change]) -> None:
    """Every file to write can be written: refused before anything is (nothing half done)."""
    for change in changes:
        target = change.path if change.path.exists() else change.path.parent
        # A file marked read-only is respected even by a user who could write it (root).
        marked = change.path.exists() and not change.path.stat().st_mode & stat.S_IWUSR
        if marked or not os.access(target, os.W_OK):
            raise LoraError(f"{change.path} cannot be written (read-only)",
                            "make it writable (chmod u+w), then run the command again; "
                            "nothing was changed")


def write_changes(changes: list[Change], command: str, folder: Path) -> Path | None:
    """Record ``changes`` on the undo stack, then write them; returns the undo record (None
    when there was nothing to change)."""
    changes = [c for c in changes if c.before != c.after]
    if not changes:
        return None
    check_writable(changes)
    # The exact bytes on both sides go on the undo stack, so undo puts back the file as it
    # was (byte-order mark, CRLF, trailing spaces) and knows the file it wrote.
    old = [_file_bytes(c.path) for c in changes]
    new = [caption_bytes(c.after, before) for c, before in zip(changes, old, strict=True)]
    record = UNDO.push(command, folder, changes, old, new)
    for change, data in zip(changes, new, strict=True):
        atomic_write(change.path, lambda tmp, data=data: tmp.write_bytes(data))
    return record


class UndoStack:
    """One JSON file per caption-writing command, in the state folder (never in the
    dataset): the folder, each file's text before and after. ``undo`` puts back the newest
    command's files for a folder; a file changed since (by hand) is left as it is, and
    named."""

    @property
    def folder(self) -> Path:
        return state_dir() / "caption-undo"

    def push(self, command: str, dataset: Path, changes: list[Change],
             old: list[bytes | None], new: list[bytes]) -> Path:
        """Record ``changes`` with each file's bytes before (None: no file) and after."""
        self.folder.mkdir(parents=True, exist_ok=True)
        record = self.folder / f"{time.time_ns()}.json"
        data = {"command": command, "folder": str(Path(dataset).resolve()),
                "time": time.time(),
                "files": [{"path": str(c.path.resolve()), "before": c.before, "after": c.after,
                           "before_bytes": _b64(before), "after_bytes": _b64(after)}
                          for c, before, after in zip(changes, old, new, strict=True)]}
        atomic_write(record, lambda tmp: tmp.write_text(json.dumps(data), encoding="utf-8"))
        return record

    def records(self, dataset: Path) -> list[Path]:
        """This folder's records, newest last."""
        wanted = str(Path(dataset).resolve())
        found = []
        for path in sorted(self.folder.glob("*.json"), key=lambda p: int(p.stem)) \
                if self.folder.is_dir() else []:
            try:
                if json.loads(path.read_text(encoding="utf-8"))["folder"] == wanted:
                    found.append(path)
            except (ValueError, KeyError, OSError):
                continue
        return found

    def undo(self, dataset: Path) -> tuple[str, int, list[Path]]:
        """Undo the newest command on ``dataset``: (its command, files restored, files left
        alone because they changed since)."""
        records = self.records(dataset)
        if not records:
            raise LoraError(f"nothing to undo for {dataset}",
                            "only caption and tags commands on this folder can be undone")
        record = records[-1]
        data = json.loads(record.read_text(encoding="utf-8"))
        changes, skipped, restore = [], [], []
        for entry in data["files"]:
            path = Path(entry["path"])
            if "after_bytes" in entry:
                unchanged = _file_bytes(path) == _unb64(entry["after_bytes"])
                before = _unb64(entry["before_bytes"])
            else:  # a record from before the bytes were kept: the text is all there is
                unchanged = read_caption(path) == entry["after"]
                before = None if entry["before"] is None \
                    else (entry["before"] + "\n").encode("utf-8")
            if not unchanged:
                skipped.append(path)
                continue
            changes.append(Change(path, entry["after"], entry["before"]))
            restore.append(before)
        check_writable([c for c in changes if c.after is not None])
        for change, before in zip(changes, restore, strict=True):
            if before is None:
                change.path.unlink(missing_ok=True)
            else:
                atomic_write(change.path, lambda tmp, data=before: tmp.write_bytes(data))
        record.unlink()
        return data["command"], len(changes), skipped


UNDO = UndoStack()
