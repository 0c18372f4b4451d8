"""Atomic file writes: write a temporary file beside the target, fsync, rename into place.

A crash or Ctrl+C during a write leaves either the old file or the new one, never a torn
file. ``exclusive=True`` refuses to replace an existing file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from lora_core.errors import OutputError


def atomic_write(path: Path, write: Callable[[Path], None], *, exclusive: bool = False) -> None:
    """Call ``write(tmp_path)`` then move tmp_path to ``path`` in one rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder {path.parent}: {exc.strerror}",
                          "choose a folder you can write to") from None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp makes 0600 files; give the usual permissions so a UI or server running
        # as another user (ComfyUI, A1111, a NAS) can read the result.
        os.chmod(tmp, 0o666 & ~_umask())
        if exclusive:
            _move_exclusive(tmp, path)
        else:
            os.replace(tmp, path)
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path} already exists and will not be overwritten",
                          "choose another output_name or move the old file away") from None
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"could not write {path}: {exc.strerror or exc}",
                          "check free disk space and permissions of that folder") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _move_exclusive(tmp: Path, path: Path) -> None:
    """Move tmp to path, failing with FileExistsError if path exists."""
    try:
        # link() fails if the target exists, so no existing file is ever replaced.
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        # File systems without hard links (FAT/exFAT drives, some network shares): check,
        # then rename. Not race-free against another writer, but never replaces a file
        # that existed when the save began.
        if path.exists():
            raise FileExistsError(path) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data), exclusive=exclusive)
