"""v-prediction checkpoints that say so in their weights (issue 25): NoobAI-XL v-pred and
similar carry top-level ``v_pred`` / ``ztsnr`` marker tensors, which ComfyUI's model
detection and Forge read. An unset ``v_parameterization`` (and ``zero_terminal_snr``) follows
them, and `check` says so; a ``false`` given beside them is warned about."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from lora_core.checks import check_profile
from lora_core.cli import main
from lora_core.models.loading import inspect_model
from lora_core.models.prediction import decide_prediction
from lora_core.profile import ModelSection, TrainingSection
from lora_core.profile_load import load_profile
from tests.helpers.ldm_export import checkpoint_state_dict
from tests.helpers.tiny_models import full_size_meta


@pytest.fixture(scope="module")
def sd1_shapes() -> dict[str, tuple[int, ...]]:
    state = checkpoint_state_dict(full_size_meta("sd1"), "sd1")
    return {k: tuple(v.shape) for k, v in state.items()}


def _checkpoint(path: Path, shapes: dict[str, tuple[int, ...]], markers: tuple[str, ...]
                ) -> Path:
    """A header-only .safetensors (what inspecting reads) with the marker tensors as the
    released files carry them: zero-size top-level keys."""
    header: dict = {k: {"dtype": "F16", "shape": list(s), "data_offsets": [0, 0]}
                    for k, s in shapes.items()}
    for key in markers:
        header[key] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def _profile(tmp_path: Path, model: Path, model_extra: str = "", training: str = "") -> Path:
    data = tmp_path / "data" / "1_tok"
    data.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "p.toml"
    path.write_text(f'[model]\npretrained_model_name_or_path = "{model}"\n{model_extra}\n'
                    f'[dataset]\ntrain_data_dir = "{data.parent}"\n'
                    f'[saving]\noutput_dir = "{tmp_path / "out"}"\n'
                    f"[training]\n{training}\n")
    return path


def _notes(report, key: str) -> list[str]:
    return [p.text() for p in report.problems if p.key == key and not p.is_error]


def test_the_markers_are_read_from_the_header(tmp_path, sd1_shapes):
    plain = _checkpoint(tmp_path / "plain.safetensors", sd1_shapes, ())
    vpred = _checkpoint(tmp_path / "noob-vpred.safetensors", sd1_shapes, ("v_pred", "ztsnr"))
    assert inspect_model(str(plain), tmp_path).markers == ()
    source = inspect_model(str(vpred), tmp_path)
    assert source.markers == ("v_pred", "ztsnr")
    assert "ignores" not in source.summary  # the markers are not tensors it drops


@pytest.mark.parametrize("given, markers, expected, decided", [
    ((None, None), ("v_pred", "ztsnr"), (True, True), ("v_parameterization",
                                                       "zero_terminal_snr")),
    ((None, None), ("v_pred",), (True, False), ("v_parameterization",)),
    ((None, None), ("ztsnr",), (False, False), ()),  # as ComfyUI: ztsnr only beside v_pred
    ((None, None), (), (False, False), ()),
    ((False, None), ("v_pred", "ztsnr"), (False, False), ()),  # the user's word wins
    ((True, False), ("v_pred", "ztsnr"), (True, False), ()),
    ((True, None), ("v_pred", "ztsnr"), (True, True), ("zero_terminal_snr",)),
])
def test_unset_settings_follow_the_markers_given_ones_win(given, markers, expected, decided):
    model = ModelSection(v_parameterization=given[0])
    training = TrainingSection(zero_terminal_snr=given[1])
    result = decide_prediction(model, training, markers)
    assert (result.v_parameterization, result.zero_terminal_snr) == expected
    assert result.from_markers == decided


def test_check_says_the_markers_decided_and_the_checks_see_v_prediction(tmp_path, sd1_shapes):
    model = _checkpoint(tmp_path / "noob-vpred.safetensors", sd1_shapes, ("v_pred", "ztsnr"))
    profile = load_profile(_profile(tmp_path, model))
    assert profile.model.v_parameterization is None  # the key is absent
    report = check_profile(profile)
    (note,) = _notes(report, "v_parameterization")
    assert "`[model] v_parameterization` is unset and noob-vpred.safetensors carries a " \
           "`v_pred` marker tensor" in note and "with zero terminal SNR" in note
    # the other checks judge what the run uses: no "zero_terminal_snr is meant for v-pred"
    assert _notes(report, "zero_terminal_snr") == []
    assert profile.model.v_parameterization is None  # check never changes the profile


def test_an_explicit_false_beside_the_markers_is_warned_about(tmp_path, sd1_shapes, capsys,
                                                             state_dir):
    model = _checkpoint(tmp_path / "noob-vpred.safetensors", sd1_shapes, ("v_pred", "ztsnr"))
    path = _profile(tmp_path, model, "v_parameterization = false")
    report = check_profile(load_profile(path))
    (note,) = _notes(report, "v_parameterization")
    assert "`[model] v_parameterization` = false, but noob-vpred.safetensors carries a " \
           "`v_pred` marker tensor" in note
    path = _profile(tmp_path, model, "v_parameterization = true", "zero_terminal_snr = false")
    report = check_profile(load_profile(path))
    assert _notes(report, "v_parameterization") == []
    (note,) = _notes(report, "zero_terminal_snr")
    assert "`[training] zero_terminal_snr` = false, but noob-vpred.safetensors carries a " \
           "`ztsnr` marker tensor" in note
    main(["check", str(path)])
    out = " ".join(capsys.readouterr().out.split())
    assert "`[training] zero_terminal_snr` = false, but" in out


def test_export_gives_sd_scripts_what_the_markers_decide(tmp_path, sd1_shapes, state_dir):
    import tomllib

    model = _checkpoint(tmp_path / "noob-vpred.safetensors", sd1_shapes, ("v_pred", "ztsnr"))
    assert main(["export", str(_profile(tmp_path, model)), "--sd-scripts",
                 str(tmp_path / "export")]) == 0
    config = tomllib.loads((tmp_path / "export" / "config.toml").read_text())
    options = next(iter(config.values()))
    assert options["v_parameterization"] is True and options["zero_terminal_snr"] is True
    assert "--v_parameterization" in (tmp_path / "export" / "command.sh").read_text()


def test_v_pred_like_loss_is_refused_when_the_markers_make_the_run_v_prediction(
        tmp_path, sd1_shapes):
    model = _checkpoint(tmp_path / "noob-vpred.safetensors", sd1_shapes, ("v_pred",))
    report = check_profile(load_profile(_profile(tmp_path, model, training="v_pred_like_loss "
                                                 "= 0.1")))
    assert any(p.key == "v_pred_like_loss" and "its `v_pred` marker" in p.message
               for p in report.errors)
