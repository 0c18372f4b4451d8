"""Rough inputs a newcomer hit that ended in internal errors or were let through (issue 25
item 10): each is now a message naming the path or field, with a hint, and nothing half
written."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from lora_core.cli import main
from lora_core.runs.status import RUN_FILE, list_runs, register_run
from tests.core.test_lora_tools import file_sha, write_lora
from tests.core.test_profile import MINIMAL, errors_of


def _refused(capsys, argv: list[str], *words: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err and "hint:" in err, err
    for word in words:
        assert word in err, err
    return err


def test_non_finite_numbers_are_refused_for_every_float_field_by_name():
    msg = errors_of({**MINIMAL, "optimizer": {"learning_rate": float("inf"),
                                              "unet_lr": float("-inf")},
                     "training": {"noise_offset": float("nan")}})
    assert "`[optimizer] learning_rate` = inf is not a finite number" in msg
    assert "`[optimizer] unet_lr` = -inf is not a finite number" in msg
    assert "`[training] noise_offset` = nan is not a finite number" in msg


def test_check_refuses_learning_rate_inf_from_a_toml_file(tmp_path, capsys, state_dir):
    profile = tmp_path / "p.toml"
    profile.write_text('[model]\npretrained_model_name_or_path = "builtin:tiny-sd1"\n'
                       '[dataset]\ntrain_data_dir = "data"\n[saving]\noutput_dir = "out"\n'
                       "[optimizer]\nlearning_rate = inf\n")
    assert main(["check", str(profile)]) != 0
    captured = capsys.readouterr()
    assert "`[optimizer] learning_rate` = inf is not a finite number" in \
        " ".join((captured.out + captured.err).split())


def _run_folder(root: Path, name: str, content: str) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / RUN_FILE).write_text(content)
    register_run(run_dir)
    return run_dir


def test_a_run_json_that_is_not_an_object_shows_as_unreadable(tmp_path, state_dir, capsys):
    good = {"run_dir": "", "output_name": "good", "status": "finished", "pid": 1,
            "host": "elsewhere", "started_at": 1.0, "updated_at": 2.0}
    _run_folder(tmp_path, "good", json.dumps(good))
    bad = _run_folder(tmp_path, "bad", "[1, 2, 3]")
    typed = _run_folder(tmp_path, "typed", json.dumps({**good, "step": "many"}))
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "finished  good" in out
    assert "unreadable bad" in out and "unreadable typed" in out
    assert f"{bad / RUN_FILE} is unreadable: it holds list, not a JSON object" in out
    assert f"{typed / RUN_FILE} is unreadable: 'step' is 'many'" in out
    # the wizard's list (no unreadable rows) still lists the good one
    assert [r.output_name for r in list_runs()] == ["good"]


def test_resize_and_inspect_read_a_backup_by_its_content(tmp_path, capsys):
    lora = write_lora(tmp_path / "mychar.safetensors")
    backup = tmp_path / "mychar.safetensors.backup"
    shutil.copy(lora, backup)
    assert main(["inspect", str(backup)]) == 0
    assert "LoCon" in capsys.readouterr().out
    assert main(["resize", str(backup), "--rank", "2", "-o",
                 str(tmp_path / "small.safetensors")]) == 0
    assert (tmp_path / "small.safetensors").is_file()
    (tmp_path / "notes.backup").write_text("not a LoRA")
    _refused(capsys, ["inspect", str(tmp_path / "notes.backup")], "notes.backup",
             "is not a .safetensors file")


def test_edit_in_a_read_only_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    lora = write_lora(folder / "mychar.safetensors")
    before = file_sha(lora)
    folder.chmod(0o555)
    try:
        _refused(capsys, ["edit", str(lora), "--title", "x"], str(folder), "read-only")
    finally:
        folder.chmod(0o755)
    assert file_sha(lora) == before and sorted(p.name for p in folder.iterdir()) == \
        ["mychar.safetensors"]


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that says it is width x height (its pixels are never needed to refuse it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
    return path


def test_a_huge_cover_is_refused_by_name(tmp_path, capsys):
    lora = write_lora(tmp_path / "mychar.safetensors")
    before = file_sha(lora)
    cover = _png_header_only(tmp_path / "huge.png", 20000, 20000)
    _refused(capsys, ["edit", str(lora), "--cover", str(cover)], str(cover),
             "too large to use as a cover")
    assert file_sha(lora) == before and not (tmp_path / "mychar.safetensors.backup").exists()


@pytest.mark.parametrize("weight", ["nan", "inf", "-inf"])
def test_merge_refuses_a_weight_that_is_not_a_number(tmp_path, capsys, weight):
    lora = write_lora(tmp_path / "a.safetensors")
    out = tmp_path / "out.safetensors"
    _refused(capsys, ["merge", f"{lora}:{weight}", "--rank", "2", "-o", str(out)],
             str(lora), f"is {float(weight)}")
    assert not out.exists()


@pytest.mark.parametrize("suffix, text", [
    (".json", '{"a": ' + "[" * 100000 + "]" * 100000 + "}"),
    (".json", '{"a": ' + '{"b": ' * 5000 + "1" + "}" * 5001),
    (".toml", "a = " + "[" * 600 + "]" * 600),
], ids=["json-lists", "json-objects", "toml-arrays"])
def test_import_of_deeply_nested_settings_is_refused_by_name(tmp_path, capsys, suffix, text):
    source = tmp_path / f"deep{suffix}"
    source.write_text(text)
    _refused(capsys, ["import", str(source)], str(source), "nested too deeply")


def test_export_onto_an_existing_file_is_refused_and_the_file_kept(tmp_path, capsys):
    profile = tmp_path / "p.toml"
    profile.write_text('[model]\npretrained_model_name_or_path = "builtin:tiny-sd1"\n'
                       '[dataset]\ntrain_data_dir = "data"\n[saving]\noutput_dir = "out"\n')
    (tmp_path / "data").mkdir()
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    _refused(capsys, ["export", str(profile), "--sd-scripts", str(target)], str(target),
             "is a file")
    assert target.read_text() == "mine\n"


def test_a_dataset_config_refuses_non_finite_numbers_and_deep_nesting(tmp_path):
    from lora_core.dataset.dataset_config import load_dataset_config
    from lora_core.errors import ProfileError
    from lora_core.profile import DatasetSection

    config = tmp_path / "dataset.toml"
    config.write_text('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "x"\n'
                      "token_warmup_step = inf\n")
    with pytest.raises(ProfileError, match=r"subsets\[0\]\.token_warmup_step` = inf is not "
                                           "a finite number"):
        load_dataset_config(config, DatasetSection(), 1)
    deep = tmp_path / "deep.json"
    deep.write_text('{"datasets": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(ProfileError, match="nested too deeply"):
        load_dataset_config(deep, DatasetSection(), 1)


def test_a_deeply_nested_profile_is_refused_by_name(tmp_path, capsys, state_dir):
    profile = tmp_path / "deep.toml"
    profile.write_text("a = " + "[" * 600 + "]" * 600 + "\n")
    _refused(capsys, ["check", str(profile)], str(profile), "nested too deeply")
