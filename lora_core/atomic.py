"""Atomic writes: build a temporary file or folder beside the target, fsync, rename it into
place.

A crash or Ctrl+C during a write leaves either the old file or the new one, never a torn
file. ``exclusive=True`` refuses to replace an existing file. Temporaries are hidden names
(``.<name>.<random>.tmp``), so a reader listing the folder never takes one for the real thing.
"""

from __future__ import annotations

import errno
import os
import shutil
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


def atomic_folder(path: Path, build: Callable[[Path], None], *, replace: bool = False) -> bool:
    """Call ``build(tmp_folder)``, fsync its files, and rename it to ``path`` in one step.

    ``replace``: an existing ``path`` is moved aside first and deleted only once the new one
    is in place (a kill in between leaves a complete folder, the aside one being a hidden
    temporary). Without it an existing ``path`` wins (another process built it first) and
    the new one is discarded; returns False then.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise _write_error(path, exc) from None
    aside = None
    try:
        build(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; this is an ordinary folder
        if replace and path.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp",
                                          dir=path.parent))
            os.rename(path, aside / path.name)
        try:
            os.rename(tmp, path)
        except OSError:
            if replace or not path.exists():
                raise
            return False  # built by someone else meanwhile: theirs is complete too
        return True
    except OSError as exc:
        raise _write_error(path, exc) from None
    finally:
        for leftover in (tmp, aside):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


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
