"""Another machine's paths on Linux/macOS (issue 24 item 4): ``C:\\...``, ``C:/...`` and
``\\\\server\\...`` from an imported Windows command are never joined to the profile's folder;
every such field is named at once by `check` (and by the wizard, through the same read), and
`run` refuses before writing anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lora_core.cli import main
from lora_core.errors import ModelError
from lora_core.models.loading import inspect_model
from lora_core.paths import foreign_path
from lora_core.profile_load import read_profile
from lora_tui.draft import Draft

pytestmark = pytest.mark.skipif(os.name == "nt", reason="these are local paths on Windows")

# The command of issue 24 item 3, as a user pastes it from a Windows guide.
WINDOWS_COMMAND = (
    'accelerate launch --num_cpu_threads_per_process 1 train_network.py '
    '--pretrained_model_name_or_path="C:\\sd\\models\\model.safetensors" '
    '--train_data_dir="C:\\lora\\train" --reg_data_dir="C:\\lora\\reg" '
    '--output_dir="C:\\lora\\out" --resolution=512,512 --save_every_n_epochs=1 '
    "--save_model_as=safetensors --clip_skip=2 --seed=42 --color_aug --flip_aug "
    "--min_bucket_reso=320 --max_bucket_reso=960 --learning_rate=1e-4 --network_dim=128 "
    "--xformers --mixed_precision=fp16 --save_precision=fp16 --max_train_epochs=10 "
    "--network_module=networks.lora --caption_extension=.txt --use_8bit_adam --enable_bucket")
FIELDS = ("[model] pretrained_model_name_or_path", "[dataset] train_data_dir",
          "[dataset] reg_data_dir", "[saving] output_dir")


def _files(folder: Path) -> list[str]:
    """Every file under the profile's folder but the test's own state folder (the log)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.relative_to(folder).parts[0] != "state")


@pytest.mark.parametrize("text, kind", [
    ("C:\\sd\\model.safetensors", "a Windows drive path"),
    ("C:/sd/model.safetensors", "a Windows drive path"),
    ("d:\\", "a Windows drive path"),
    ("\\\\nas\\share\\model.safetensors", "a Windows network share"),
    ("models/C:model.safetensors", None), ("/home/me/C:\\x", None), ("relative/x", None),
    ("//server/x", None),  # POSIX: the same as /server/x
])
def test_what_counts_as_another_machines_path(text, kind):
    assert foreign_path(text) == kind


def test_check_names_every_foreign_path_at_once_and_run_writes_nothing(tmp_path, capsys,
                                                                      state_dir):
    command = tmp_path / "train.bat"
    command.write_text(WINDOWS_COMMAND + "\n")
    profile = tmp_path / "imported.toml"
    assert main(["import", str(command), "-o", str(profile)]) == 0
    capsys.readouterr()
    before = _files(tmp_path)
    assert main(["check", str(profile)]) == 2
    captured = capsys.readouterr()
    out = " ".join((captured.out + captured.err).split())
    assert "Problems (4)" in out
    for field in FIELDS:
        assert f"`{field}` = \"C:\\\\" in out and "is a Windows drive path" in out, field
    assert str(tmp_path / "C:") not in out  # never "<profile folder>/C:\..."
    assert main(["run", str(profile)]) == 2
    captured = capsys.readouterr()
    err = " ".join((captured.out + captured.err).split())
    assert "4 problems" in err and all(f"`{field}`" in err for field in FIELDS)
    assert _files(tmp_path) == before  # no C:\lora\out folder, no run folder


def test_other_forms_and_fields_are_named_and_left_as_written(tmp_path):
    data = {"model": {"pretrained_model_name_or_path": "D:/models/sdxl.safetensors",
                      "vae": "\\\\nas\\models\\vae.safetensors"},
            "dataset": {"train_data_dir": str(tmp_path)},
            "network": {"network_weights": "C:\\loras\\start.safetensors"},
            "sample": {"sample_prompts": "e:\\prompts.txt"},
            "saving": {"output_dir": str(tmp_path / "out")}}
    profile, problems = read_profile(data, tmp_path)
    named = {(p.section, p.key) for p in problems if p.is_error}
    assert named == {("model", "pretrained_model_name_or_path"), ("model", "vae"),
                     ("network", "network_weights"), ("sample", "sample_prompts")}
    assert profile.model.vae == "\\\\nas\\models\\vae.safetensors"  # not joined
    assert profile.network.network_weights == "C:\\loras\\start.safetensors"
    assert profile.dataset.train_data_dir == str(tmp_path)  # local paths as before


def test_the_wizard_flags_them_on_their_fields_and_the_model_note_says_why(tmp_path):
    draft, _ = Draft.from_import("pasted command", WINDOWS_COMMAND)
    errors = draft.validate().field_errors
    for section, key in (("model", "pretrained_model_name_or_path"),
                         ("dataset", "train_data_dir"), ("dataset", "reg_data_dir"),
                         ("saving", "output_dir")):
        assert any("Windows drive path" in m for m in errors[(section, key)]), key
    with pytest.raises(ModelError, match="is a Windows drive path, from another machine"):
        inspect_model("C:\\sd\\models\\model.safetensors", tmp_path)


def test_a_dataset_configs_windows_folders_are_named_not_joined(tmp_path):
    from lora_core.dataset.dataset_config import load_dataset_config
    from lora_core.errors import ProfileError
    from lora_core.profile import DatasetSection

    config = tmp_path / "dataset.toml"
    config.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'C:\\lora\\img\\10_x'\n"
                      "[[datasets.subsets]]\nimage_dir = '\\\\nas\\img\\5_y'\n")
    with pytest.raises(ProfileError) as info:
        load_dataset_config(config, DatasetSection(), 1)
    assert "`datasets[0].subsets[0].image_dir` = \"C:\\\\lora\\\\img\\\\10_x\" is a Windows " \
           "drive path" in info.value.message
    assert "`datasets[0].subsets[1].image_dir` = \"\\\\\\\\nas\\\\img\\\\5_y\" is a Windows " \
           "network share" in info.value.message
