"""Atomic file writes: write a temporary file beside the target, fsync, rename into place.

A crash or Ctrl+C during a write leaves either the old file or the new one, never a torn
file. ``exclusive=True`` refuses to replace an existing file.
"""

from __future__ import annotations

import errno
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
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
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
        raise _write_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_error(path: Path, exc: OSError) -> OutputError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(
            f"the disk is full: {path} could not be written (the files written before are "
            "intact)", "free some space and resume the run (`lora-train resume RUN_FOLDER`), "
            "or resume it on another disk with --set saving.output_dir=<folder on that disk>",
            kind="disk_full")
    return OutputError(f"could not write {path}: {exc.strerror or exc}",
                       "check free disk space and permissions of that folder")


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
