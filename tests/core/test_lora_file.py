"""The LoRA file: names, precision, sd-scripts' hashes, atomic and never-overwriting writes."""

from __future__ import annotations

import hashlib
import struct

import pytest
import torch
from safetensors import safe_open

from lora_core import output_names as names
from lora_core.atomic import atomic_write_bytes
from lora_core.errors import ModelError, OutputError
from lora_core.saving import lora_file


def sample_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "lora_unet_a.lora_down.weight": torch.randn(4, 16),
        "lora_unet_a.lora_up.weight": torch.randn(8, 4),
        "lora_unet_a.alpha": torch.tensor(2.0),
    }


def test_file_names_follow_sd_scripts():
    assert names.final_file_name("x") == "x.safetensors"
    assert names.epoch_file_name("x", 2) == "x-000002.safetensors"
    assert names.step_file_name("x", 500) == "x-step00000500.safetensors"
    assert names.interrupted_file_name("x") == "x-interrupted.safetensors"


def test_saved_file_has_all_tensors_in_save_precision_and_string_metadata(tmp_path):
    path = tmp_path / "a.safetensors"
    lora_file.save_lora(path, sample_state(), {"ss_network_dim": 4, "ss_x": True}, "fp16")
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float16}
        assert fh.get_tensor("lora_unet_a.alpha").shape == ()
    assert meta["ss_network_dim"] == "4" and meta["ss_x"] == "True"
    assert len(meta["sshs_model_hash"]) == 64 and len(meta["sshs_legacy_hash"]) == 8


def test_model_hash_is_sha256_of_tensor_data_with_ss_metadata_only(tmp_path):
    state = lora_file.cast_state_dict(sample_state(), "float")
    metadata = {"ss_a": "1", "modelspec.title": "t"}
    model_hash, legacy = lora_file.model_hashes(state, metadata)
    # Recompute independently: serialise, skip the 8-byte length and the JSON header.
    from safetensors.torch import save

    data = save(state, {"ss_a": "1"})
    (n,) = struct.unpack("<Q", data[:8])
    assert model_hash == hashlib.sha256(data[8 + n:]).hexdigest()
    assert legacy == hashlib.sha256(b"").hexdigest()[:8]  # file < 1 MiB: empty read
    # The hash ignores non-ss metadata but not ss_ metadata changes in the header position
    assert lora_file.model_hashes(state, {"ss_a": "1"})[0] == model_hash


def test_legacy_hash_reads_64k_at_1mib_for_big_files():
    big = {"w": torch.arange(400_000, dtype=torch.float32)}
    from safetensors.torch import save

    data = save(big, {})
    _, legacy = lora_file.model_hashes(big, {})
    assert legacy == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


def test_existing_file_is_never_overwritten_and_no_temp_file_is_left(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists"):
        lora_file.save_lora(path, sample_state(), {}, "fp16")
    assert path.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path):
    path = tmp_path / "f.json"
    atomic_write_bytes(path, b"old")

    def boom(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    from lora_core.atomic import atomic_write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, boom)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_free_output_name_numbers_when_taken(tmp_path):
    assert names.free_output_name(tmp_path, "x") == "x"
    (tmp_path / "x-000001.safetensors").write_bytes(b"")
    assert names.free_output_name(tmp_path, "x") == "x_2"
    (tmp_path / "x_2.safetensors").write_bytes(b"")
    assert names.free_output_name(tmp_path, "x") == "x_3"
    # another name that merely starts with "x" does not count
    assert names.free_output_name(tmp_path, "xy") == "xy"
    # a tag summary left by an earlier run also takes the name
    (tmp_path / "z.txt").write_text("[1] tag\n")
    assert names.free_output_name(tmp_path, "z") == "z_2"


def test_broken_file_error_names_the_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 50) + b"{not json")
    with pytest.raises(ModelError, match="bad.safetensors is not a readable"):
        lora_file.read_lora(bad)


def test_written_files_get_normal_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = tmp_path / "p.safetensors"
        lora_file.save_lora(path, sample_state(), {}, "fp16")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_exclusive_move_without_hard_links_still_never_overwrites(tmp_path, monkeypatch):
    import os

    from lora_core import atomic

    def no_links(src, dst):
        raise PermissionError("no hard links here")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "a.bin"
    atomic.atomic_write_bytes(path, b"one", exclusive=True)
    assert path.read_bytes() == b"one"
    with pytest.raises(OutputError, match="already exists"):
        atomic.atomic_write_bytes(path, b"two", exclusive=True)
    assert path.read_bytes() == b"one"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
