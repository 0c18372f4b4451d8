"""Pickled checkpoints judged without unpickling: the globals they name against torch's
weights-only allow list, so `check` refuses what `run`'s loader would refuse."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest

from lora_core.errors import ModelError
from lora_core.models.pickle_scan import ALLOWED, check_pickle_checkpoint, pickle_globals


def test_every_global_torch_allows_is_allowed_here():
    from torch import _weights_only_unpickler

    allowed = _weights_only_unpickler._get_allowed_globals()
    assert len(allowed) > 50
    refused = sorted(name for name in allowed if not ALLOWED.match(name))
    assert refused == []


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "builtins.exec",
                                  "builtins.getattr", "subprocess.Popen", "posix.system",
                                  "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
                                  "torch.load", "torch.hub.load",
                                  "numpy.core.multiarray._reconstruct"])
def test_code_and_foreign_classes_are_refused(name):
    assert not ALLOWED.match(name)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _zip_checkpoint(path: Path, payload: object, protocol: int) -> Path:
    """A torch.save-style zip: archive/data.pkl holding the pickle."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(payload, protocol=protocol))
        archive.writestr("archive/version", "3\n")
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_pickle_that_calls_code_is_named_without_running_it(tmp_path, protocol):
    path = _zip_checkpoint(tmp_path / "evil.ckpt", {"state_dict": {"w": _Evil()}}, protocol)
    with pytest.raises(ModelError) as info:
        check_pickle_checkpoint(path)
    assert "it would call posix.system" in info.value.message \
        or "it would call os.system" in info.value.message
    assert "none of its code was executed" in info.value.message


def test_real_torch_checkpoints_pass(tmp_path):
    import torch

    for legacy in (False, True):
        path = tmp_path / f"model-{legacy}.ckpt"
        torch.save({"state_dict": {"a": torch.zeros(2, 3, dtype=torch.float16),
                                   "b": torch.nn.Parameter(torch.ones(4))},
                    "global_step": 7}, path, _use_new_zipfile_serialization=not legacy)
        check_pickle_checkpoint(path)  # no error
        names = pickle_globals(path, zipfile.is_zipfile(path))
        assert "torch._utils._rebuild_tensor_v2" in names
        torch.load(path, weights_only=True)  # and torch agrees


def test_damaged_and_foreign_files_are_named(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    html = tmp_path / "page.ckpt"
    html.write_bytes(b"<!DOCTYPE html><html>Not found</html>")
    cut = tmp_path / "cut.ckpt"
    buffer = io.BytesIO()
    pickle.dump({"a": list(range(100))}, buffer, protocol=2)
    cut.write_bytes(buffer.getvalue()[:20])
    for path, words in ((empty, "empty"), (html, "not a PyTorch checkpoint"),
                        (cut, "damaged")):
        with pytest.raises(ModelError) as info:
            check_pickle_checkpoint(path)
        assert words in info.value.message and str(path) in info.value.message
