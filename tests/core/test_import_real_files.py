"""`lora-train import` / `export` on files shaped like the real ones of issue 25 (and the
command of issue 24 item 3): a .bat with quoted paths holding spaces and `pause`, a .sh with
comments and --config_file, kohya_ss GUI presets, a LETS TOML with subsets, SDXL's two
text-encoder rates, a Shift-JIS command, an oversized source, LoRA metadata, and the export's
command checked against sd-scripts' own argument lists (tests/data/sd_scripts_args).
Each file is written here, in the form of the public files it stands for.
"""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import pytest

from lora_core.cli import main
from lora_core.errors import LoraError
from lora_core.importing import import_source
from lora_core.importing.command_line import commands_of, script_name
from lora_core.importing.export import export_sd_scripts
from lora_core.importing.mapping import MAPPED, NO_EFFECT, OFF, UNKNOWN
from lora_core.profile_load import read_profile
from tests.core.test_import_export import full_profile
from tests.helpers.commands import ISSUE_24_COMMAND

ARGS = Path(__file__).resolve().parents[1] / "data" / "sd_scripts_args"


def fields(result) -> dict:
    return {(section, key): value for section, values in result.data.items()
            if isinstance(values, dict) for key, value in values.items()}


def lines(result) -> dict:
    return {line.option: line for line in result.mapped.lines}


# --- 1. quoted Windows paths with spaces ------------------------------------------------------

def test_quoted_windows_paths_keep_their_spaces_from_a_paste():
    text = ('accelerate launch train_network.py --train_data_dir="D:\\My Data\\img" '
            '--output_name="my lora v2"\n')
    got = fields(import_source("standard input", text))
    assert got[("dataset", "train_data_dir")] == "D:\\My Data\\img"
    assert got[("saving", "output_name")] == "my lora v2"


def test_a_bat_file_ends_its_command_before_pause(tmp_path):
    bat = tmp_path / "train lora.bat"
    bat.write_bytes(b'@echo off\r\nREM my first LoRA\r\ncd /d "D:\\kohya\\sd-scripts"\r\n'
                    b'call venv\\Scripts\\activate.bat\r\n'
                    b'accelerate launch --num_cpu_threads_per_process 1 train_network.py ^\r\n'
                    b'  --pretrained_model_name_or_path="D:\\SD Models\\any v3.safetensors" ^\r\n'
                    b'  --train_data_dir="D:\\My Data\\img" ^\r\n'
                    b'  --output_name="my lora v2" ^\r\n'
                    b'  --network_dim=16 --xformers\r\npause\r\n')
    result = import_source(bat)
    got = fields(result)
    assert got[("model", "pretrained_model_name_or_path")] == "D:\\SD Models\\any v3.safetensors"
    assert got[("dataset", "train_data_dir")] == "D:\\My Data\\img"
    assert got[("saving", "output_name")] == "my lora v2"
    assert got[("network", "network_dim")] == 16
    assert "pause" not in json.dumps(result.data)
    assert lines(result)["xformers"].status == NO_EFFECT


# --- 2. --config_file followed; 3. comments, full fine-tunes -----------------------------------

SDXL_TOML = """
[model_arguments]
pretrained_model_name_or_path = "/models/sdxl base.safetensors"
[additional_network_arguments]
network_module = "networks.lora"
network_dim = 32
network_alpha = 16
[optimizer_arguments]
optimizer_type = "Prodigy"
learning_rate = 1.0
[training_arguments]
max_train_epochs = 12
"""


def test_a_scripts_config_file_is_followed_from_the_scripts_folder(tmp_path, monkeypatch):
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "x.toml").write_text(SDXL_TOML)
    (folder / "train.sh").write_text(
        "#!/usr/bin/env bash\n"
        "set -e  # stop on the first error\n"
        "# the character LoRA\n"
        "accelerate launch --num_cpu_threads_per_process 1 sdxl_train_network.py \\\n"
        "  --config_file=\"./x.toml\" \\\n"
        "  --network_dim 64  # the command's own option wins over the file's\n"
        "echo finished\n")
    monkeypatch.chdir(tmp_path)  # not the script's folder
    result = import_source(folder / "train.sh")
    got = fields(result)
    assert got[("optimizer", "optimizer_type")] == "Prodigy"
    assert got[("optimizer", "learning_rate")] == 1
    assert got[("training", "max_train_epochs")] == 12
    assert got[("network", "network_dim")] == 64 and got[("network", "network_alpha")] == 16
    assert got[("model", "pretrained_model_name_or_path")] == "/models/sdxl base.safetensors"
    assert lines(result)["config_file"].status == MAPPED


def test_a_config_file_that_is_not_there_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "run.sh"
    script.write_text("accelerate launch train_network.py --config_file=gone.toml\n")
    with pytest.raises(LoraError, match="gone.toml was not found"):
        import_source(script)


def test_a_comment_before_the_command_keeps_the_command():
    text = ("set -e  # stop on the first error\n"
            "accelerate launch train_network.py --network_dim=24 --learning_rate=3e-4\n")
    got = fields(import_source("standard input", text))
    assert got[("network", "network_dim")] == 24
    assert got[("optimizer", "learning_rate")] == 3e-4


def test_a_full_fine_tune_script_is_refused_by_name(tmp_path):
    script = tmp_path / "finetune.sh"
    script.write_text("#!/bin/bash\nset -e  # stop on errors\n"
                      "accelerate launch sdxl_train.py --config_file=ft.toml\n")
    with pytest.raises(LoraError, match="sdxl_train.py.*full model"):
        import_source(script)


# --- 4. kohya_ss GUI meaning ---------------------------------------------------------------

def kohya_preset(**changes) -> dict:
    """A kohya_ss GUI LoRA preset, in the shape of its presets/lora/*.json."""
    preset = {
        "LoRA_type": "Standard", "adaptive_noise_scale": 0.00375, "additional_parameters": "",
        "block_alphas": "", "block_dims": "", "bucket_no_upscale": True,
        "bucket_reso_steps": 64, "cache_latents": True, "caption_extension": ".txt",
        "clip_skip": "1", "conv_alpha": 32, "conv_dim": 32, "enable_bucket": True,
        "epoch": 160, "factor": -1, "gradient_checkpointing": True, "keep_tokens": "0",
        "learning_rate": 0.0001, "lr_scheduler": "constant", "lr_scheduler_args": "",
        "lr_scheduler_num_cycles": "1", "lr_warmup": 0, "max_resolution": "1024,1024",
        "max_train_epochs": "", "max_train_steps": "0", "min_snr_gamma": 5,
        "mixed_precision": "bf16", "module_dropout": 0, "multires_noise_discount": 0.3,
        "multires_noise_iterations": 8, "network_alpha": 32, "network_dim": 32,
        "network_dropout": 0, "noise_offset": 0.0375, "noise_offset_type": "Original",
        "optimizer": "AdamW", "optimizer_args": "", "pretrained_model_name_or_path":
        "/m/sdxl.safetensors", "train_data_dir": "/d/img", "output_dir": "/o",
        "rank_dropout": 0, "save_every_n_epochs": 5, "save_every_n_steps": 0,
        "save_precision": "bf16", "scale_weight_norms": 0, "sdxl": True, "seed": "0",
        "text_encoder_lr": 0.0001, "train_batch_size": 4, "train_on_input": True,
        "unet_lr": 0.0001, "unit": 1, "use_cp": False, "v_pred_like_loss": 0,
        "vae_batch_size": 0, "xformers": "xformers"}
    preset.update(changes)
    return preset


def test_kohya_noise_offset_type_leaves_the_other_kinds_values_out():
    result = import_source("preset.json", json.dumps(kohya_preset()))
    got = fields(result)
    assert got[("training", "noise_offset")] == 0.0375
    assert ("training", "multires_noise_iterations") not in got
    assert lines(result)["multires_noise_iterations"].status == NO_EFFECT
    result = import_source("preset.json", json.dumps(kohya_preset(
        noise_offset_type="Multires")))
    got = fields(result)
    assert got[("training", "multires_noise_iterations")] == 8
    assert ("training", "noise_offset") not in got
    assert ("training", "adaptive_noise_scale") not in got


def test_kohya_zeros_mean_off_and_the_result_passes_its_own_checks():
    result = import_source("preset.json", json.dumps(kohya_preset(
        unet_lr=0, text_encoder_lr="", max_train_epochs=0, epoch=6)))
    got = fields(result)
    assert got[("training", "max_train_epochs")] == 6  # epoch: the GUI's count
    for key in (("optimizer", "unet_lr"), ("optimizer", "text_encoder_lr"),
                ("training", "seed"), ("optimizer", "scale_weight_norms"),
                ("training", "v_pred_like_loss"), ("training", "max_train_steps")):
        assert key not in got, key
    assert result.problems == [], [p.text() for p in result.problems]
    # one rate 0 with the other set: kohya_ss trains the other side only
    got = fields(import_source("preset.json", json.dumps(kohya_preset(text_encoder_lr=0))))
    assert got[("network", "network_train_unet_only")] is True
    assert got[("optimizer", "unet_lr")] == 0.0001


def test_kohya_quoted_optimizer_args_lose_their_quotes():
    got = fields(import_source("preset.json", json.dumps(kohya_preset(
        optimizer_args='"weight_decay=0.1" "betas=0.9,0.99" "eps=1e-8"'))))
    assert got[("optimizer", "optimizer_args")] == ["weight_decay=0.1", "betas=0.9,0.99",
                                                    "eps=1e-8"]


@pytest.mark.parametrize(("lora_type", "network", "extra"), [
    ("LyCORIS/iA3", "IA3", {("network", "train_on_input"): True}),
    ("LyCORIS/DyLoRA", "DyLoRA", {("network", "dylora_unit"): 4}),
    ("Kohya DyLoRA", "DyLoRA", {("network", "dylora_unit"): 4}),
    ("LyCORIS/Diag-OFT", "DiagOFT", {("network", "constraint"): 0.5,
                                     ("network", "rescaled"): True}),
])
def test_kohya_lycoris_presets_map_to_the_types_trained_here(lora_type, network, extra):
    preset = kohya_preset(LoRA_type=lora_type, unit=4, constrain=0.5, rescaled=True,
                          network_dim=16, network_alpha=8)
    result = import_source("preset.json", json.dumps(preset))
    got = fields(result)
    assert got[("network", "network_module")] == network
    for key, value in extra.items():
        assert got[key] == value
    if network != "IA3":  # train_on_input is iA3's alone: a leftover elsewhere
        assert lines(result)["train_on_input"].status == NO_EFFECT
    profile, problems = read_profile(result.data, Path.cwd())
    assert profile.network.network_module == network


def test_kohya_guis_defaults_file_is_refused_by_name(tmp_path):
    defaults = tmp_path / "config example.toml"
    defaults.write_text('[settings]\nuse_shell = false\n[model]\nmodels_dir = "./models"\n'
                        'output_name = "new model"\n[folders]\noutput_dir = "./outputs"\n'
                        '[accelerate_launch]\nmixed_precision = "fp16"\nnum_processes = 1\n'
                        '[basic]\nepoch = 1\nlearning_rate = 0.0001\n')
    with pytest.raises(LoraError, match="kohya_ss GUI's defaults file"):
        import_source(defaults)


def test_a_kohya_dreambooth_preset_is_refused_by_name():
    preset = {"pretrained_model_name_or_path": "/m/x.safetensors", "train_data_dir": "/d",
              "learning_rate_te": 1e-5, "max_resolution": "512,512", "epoch": 1}
    with pytest.raises(LoraError, match="full model"):
        import_source("db.json", json.dumps(preset))


# --- 5. LETS subsets stay subsets ----------------------------------------------------------

LETS = """
[[subsets]]
num_repeats = 10
keep_tokens = 1
caption_extension = ".txt"
shuffle_caption = true
image_dir = "{root}/10_hero"
name = "hero"

[[subsets]]
num_repeats = 2
image_dir = "{root}/2_hero_closeups"
name = "closeups"

[train_mode]
train_mode = "lora"

[general_args.args]
pretrained_model_name_or_path = "builtin:tiny-sd1"
mixed_precision = "no"
max_train_epochs = 1
sdxl = false

[general_args.dataset_args]
resolution = 64
batch_size = 1

[bucket_args.dataset_args]
enable_bucket = true
min_bucket_reso = 64
max_bucket_reso = 128

[network_args.args]
network_dim = 4
network_alpha = 2.0

[saving_args.args]
output_dir = "{root}/out"
"""


def test_lets_subsets_are_written_as_a_dataset_config(tmp_path):
    root = tmp_path / "data"
    for name in ("10_hero", "2_hero_closeups", "5_not_listed"):
        (root / name).mkdir(parents=True)
    source = tmp_path / "lets.toml"
    source.write_text(LETS.format(root=root.as_posix()))
    out = tmp_path / "profile.toml"
    assert main(["import", str(source), "-o", str(out)]) == 0
    profile_data = tomllib.loads(out.read_text())
    assert "train_data_dir" not in profile_data["dataset"]  # not the parent of all three
    config_path = out.parent / profile_data["dataset"]["dataset_config"]
    config = tomllib.loads(config_path.read_text())
    subsets = config["datasets"][0]["subsets"]
    assert [(Path(s["image_dir"]).name, s["num_repeats"]) for s in subsets] == [
        ("10_hero", 10), ("2_hero_closeups", 2)]
    assert subsets[0]["keep_tokens"] == 1 and subsets[0]["caption_extension"] == ".txt"
    assert "shuffle_caption" not in subsets[1]
    from lora_core.profile_load import read_profile_file

    profile, problems = read_profile_file(out)
    assert [p.text() for p in problems if p.severity == "error"] == []


# --- 6. SDXL's two text-encoder rates --------------------------------------------------------

def test_two_text_encoder_rates_are_both_kept():
    result = import_source("standard input", "accelerate launch sdxl_train_network.py "
                           "--text_encoder_lr 1e-5 2e-5 --unet_lr=1e-4\n")
    assert fields(result)[("optimizer", "text_encoder_lr")] == [1e-5, 2e-5]
    profile, _ = read_profile(result.data, Path.cwd())
    assert profile.optimizer.text_encoder_lr == (1e-5, 2e-5)
    assert UNKNOWN not in {line.status for line in result.mapped.lines}  # 2e-5 is no stray
    toml = import_source("c.toml", "text_encoder_lr = [1e-5, 2e-5]\nnetwork_dim = 8\n")
    assert fields(toml)[("optimizer", "text_encoder_lr")] == [1e-5, 2e-5]


# --- 7. size and encodings -----------------------------------------------------------------

def test_a_huge_source_is_refused_at_once_naming_its_size(tmp_path):
    big = tmp_path / "huge.sh"
    big.write_bytes(b"accelerate launch train_network.py --x=" + b"a" * (50 * 1024 * 1024))
    started = time.monotonic()
    with pytest.raises(LoraError, match="50.0 MB"):
        import_source(big)
    assert time.monotonic() - started < 1.0


def test_shift_jis_and_utf16_command_files_are_read(tmp_path):
    command = ("rem 学習\naccelerate launch train_network.py "
               "--output_name=\"キャラ v1\" --network_dim=8\n")
    for encoding in ("cp932", "utf-16"):
        path = tmp_path / f"train-{encoding}.bat"
        path.write_bytes(command.encode(encoding))
        got = fields(import_source(path))
        assert got[("saving", "output_name")] == "キャラ v1", encoding
        assert got[("network", "network_dim")] == 8


# --- 8. export: what sd-scripts' parsers define ---------------------------------------------

def sd_scripts_args(script: str) -> set[str]:
    text = (ARGS / script.replace(".py", ".txt")).read_text()
    return {line.strip() for line in text.splitlines() if line and not line.startswith("#")}


def exported_command(path: Path) -> tuple[list[str], str, list[str]]:
    """(accelerate's words, the script, the script's option names) of an exported file."""
    windows = path.suffix == ".bat"
    words = next(w for w in commands_of(path.read_text(), windows) if any(
        x.endswith(".py") for x in w))
    at = next(i for i, w in enumerate(words) if w.endswith(".py"))
    names = [w[2:].partition("=")[0] for w in words[at + 1:] if w.startswith("--")]
    return words[:at], script_name(words[at]), names


def test_exported_commands_use_only_options_the_script_defines(tmp_path):
    for name in ("train/10_hero", "reg/1_person"):
        (tmp_path / name).mkdir(parents=True)
    data = full_profile(tmp_path)
    data["training"].update(num_processes=2, gpu_ids="0,1")
    profile, problems = read_profile(data, tmp_path)
    assert [p.text() for p in problems if p.severity == "error"] == []
    export_sd_scripts(profile, tmp_path / "export")
    for source in ("command.sh", "command.bat"):
        launcher, script, names = exported_command(tmp_path / "export" / source)
        assert script == "train_network.py"  # a built-in SD1 model
        assert "--num_processes=2" in launcher and "--gpu_ids=0,1" in launcher, launcher
        assert not set(names) - sd_scripts_args(script), set(names) - sd_scripts_args(script)
    config = tomllib.loads((tmp_path / "export" / "config.toml").read_text())
    assert not set(config["lora_train_export"]) - sd_scripts_args("train_network.py")


def test_an_sdxl_profile_without_its_model_file_still_exports_sdxl_or_says_so(tmp_path):
    (tmp_path / "train" / "10_hero").mkdir(parents=True)
    data = {"profile_version": 1,
            "model": {"pretrained_model_name_or_path": "/elsewhere/sdxl.safetensors"},
            "dataset": {"train_data_dir": str(tmp_path / "train"),
                        "cache_text_encoder_outputs": True},
            "network": {"network_train_unet_only": True},
            "optimizer": {"text_encoder_lr": [1e-5, 2e-5]},
            "saving": {"output_dir": str(tmp_path / "out")}}
    profile, _ = read_profile(data, tmp_path)
    export_sd_scripts(profile, tmp_path / "sdxl")
    _, script, names = exported_command(tmp_path / "sdxl" / "command.sh")
    assert script == "sdxl_train_network.py"
    assert not set(names) - sd_scripts_args(script), set(names) - sd_scripts_args(script)
    del data["dataset"]["cache_text_encoder_outputs"], data["optimizer"]
    profile, _ = read_profile(data, tmp_path)
    export_sd_scripts(profile, tmp_path / "unknown")
    note = (tmp_path / "unknown" / "NOT-EXPORTED.txt").read_text()
    assert "could not tell its family" in note
    assert "could not tell" in (tmp_path / "unknown" / "command.sh").read_text()


# --- 9. LoRA metadata: the steps the run did ------------------------------------------------

def test_lora_metadata_gives_the_steps_not_the_derived_epochs(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "short.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(path), metadata={
        "ss_max_train_steps": "20", "ss_num_epochs": "1", "ss_network_dim": "8",
        "ss_network_alpha": "4.0", "ss_network_module": "networks.lora",
        "ss_text_encoder_lr": "[1e-05, 2e-05]", "ss_learning_rate": "0.0001"})
    got = fields(import_source(path))
    assert got[("training", "max_train_steps")] == 20
    assert ("training", "max_train_epochs") not in got
    assert got[("optimizer", "text_encoder_lr")] == [1e-5, 2e-5]


# --- issue 24 item 3: near misses and --use_8bit_adam ---------------------------------------



def test_issue_24_command_names_its_near_miss_and_reads_use_8bit_adam():
    result = import_source("pasted", ISSUE_24_COMMAND)
    seen = lines(result)
    assert seen["net_dim"].status == UNKNOWN
    assert "did you mean `--network_dim`?" in seen["net_dim"].text()
    assert seen["net_dim"].suggestion == "network_dim"
    assert "did you mean `--network_dim`?" in result.render()
    got = fields(result)
    assert got[("network", "network_dim")] == 4  # sd-scripts' default, said so, not 128
    assert got[("optimizer", "optimizer_type")] == "AdamW8bit"
    assert seen["use_8bit_adam"].status == MAPPED
    with pytest.raises(LoraError, match="use_8bit_adam"):
        import_source("pasted", ISSUE_24_COMMAND + " --optimizer_type=Lion")


# --- carried-over options ----------------------------------------------------------------

def test_carried_over_options_map_to_their_fields_and_the_wandb_key_is_never_kept():
    command = ("accelerate launch train_network.py --save_last_n_epochs=3 "
               "--ip_noise_gamma=0.1 --network_multiplier=0.5 --weighted_captions "
               "--lr_scheduler_type=StepLR --lr_scheduler_args step_size=10 gamma=0.5 "
               "--v_pred_like_loss=0.2 --resize_interpolation=lanczos "
               "--base_weights a.safetensors b.safetensors --base_weights_multiplier 0.5 1 "
               "--wandb_api_key=SECRET-KEY-123 --log_with=wandb")
    result = import_source("pasted", command)
    got = fields(result)
    assert got[("saving", "save_last_n_epochs")] == 3
    assert got[("training", "ip_noise_gamma")] == 0.1
    assert got[("network", "network_multiplier")] == 0.5
    assert got[("optimizer", "lr_scheduler_type")] == "StepLR"
    assert got[("optimizer", "lr_scheduler_args")] == ["step_size=10", "gamma=0.5"]
    assert got[("network", "base_weights")] == ["a.safetensors", "b.safetensors"]
    assert got[("network", "base_weights_multiplier")] == [0.5, 1]
    assert got[("dataset", "weighted_captions")] is True
    assert "SECRET-KEY-123" not in json.dumps(result.data) + result.render()
    assert "WANDB_API_KEY" in lines(result)["wandb_api_key"].text()
    assert lines(result)["wandb_api_key"].status in (NO_EFFECT, OFF)


# --- the review of issue 25: values sd-scripts' parsers accept ------------------------------

VALUES = json.loads((ARGS / "values.json").read_text())


def option_values(words: list[str]) -> list[tuple[str, list[str]]]:
    """The script's options as (name, [values]) the way argparse groups them."""
    found: list[tuple[str, list[str]]] = []
    for word in words:
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            found.append((name, [value] if eq else []))
        else:
            found[-1][1].append(word)
    return found


def int_or_float(value: str) -> float:
    """sd-scripts' own type of lr_warmup_steps / lr_decay_steps (train_util.py)."""
    if value.endswith("%"):
        return float(value[:-1]) / 100
    return int(value) if float(value) >= 1 else float(value)


def refused_values(script: str, options: list[tuple[str, list]]) -> list[str]:
    """What sd-scripts' parser of ``script`` refuses among ``options`` (choices, int/float
    types, the number of values)."""
    refused = []
    for name, values in options:
        spec = VALUES[script].get(name, {})
        nargs = spec.get("nargs")
        if nargs == 0 and values or nargs is None and len(values) != 1 or \
                nargs == "+" and not values:
            refused.append(f"{name}: {values!r} (nargs {nargs})")
            continue
        for value in values:
            kind = {"int": int, "float": float, "int_or_float": int_or_float}.get(
                spec.get("type", ""), str)
            try:
                typed = kind(value)
            except ValueError:
                refused.append(f"{name}={value!r}: not {kind.__name__}")
                continue
            if "choices" in spec and typed not in spec["choices"]:
                refused.append(f"{name}={value!r}: not one of {spec['choices']}")
    return refused


def test_exported_values_are_ones_sd_scripts_accepts(tmp_path):
    for name in ("train/10_hero", "reg/1_person"):
        (tmp_path / name).mkdir(parents=True)
    data = full_profile(tmp_path)
    data["optimizer"]["text_encoder_lr"] = [1e-5, 2e-5]  # SDXL's two encoders
    data["dataset"]["max_token_length"] = 75
    profile, problems = read_profile(data, tmp_path)
    assert [p.text() for p in problems if p.severity == "error"] == []
    export_sd_scripts(profile, tmp_path / "export")
    for source in ("command.sh", "command.bat"):
        path = tmp_path / "export" / source
        words = next(w for w in commands_of(path.read_text(), source.endswith(".bat"))
                     if any(x.endswith(".py") for x in w))
        at = next(i for i, w in enumerate(words) if w.endswith(".py"))
        script = script_name(words[at])
        options = option_values(words[at + 1:])
        assert len(options) > 50
        assert refused_values(script, options) == [], source
        assert "max_token_length" not in dict(options)  # 75: sd-scripts' default, left out
        assert dict(options)["text_encoder_lr"] == ["1e-05", "2e-05"]
    config = tomllib.loads((tmp_path / "export" / "config.toml").read_text())
    table = config["lora_train_export"]
    as_words = [(k, [] if v is True else [str(x) for x in v] if isinstance(v, list) else
                 [str(v)]) for k, v in table.items()]
    assert refused_values(script, [(k, v) for k, v in as_words
                                   if k not in ("network_args",)]) == []
    assert table["text_encoder_lr"] == [1e-5, 2e-5]


def test_a_comment_line_inside_a_continued_bash_command_ends_it_as_bash_does(tmp_path):
    script = tmp_path / "train.sh"
    script.write_text("#!/bin/bash\naccelerate launch train_network.py \\\n"
                      "  --network_dim=16 \\\n  # the optimizer\n"
                      "  --optimizer_type=Lion \\\n  --learning_rate=1e-4\n")
    result = import_source(script)
    got = fields(result)
    assert got[("network", "network_dim")] == 16
    assert got[("optimizer", "optimizer_type")] == "AdamW"  # bash never passed Lion
    cut = [line for line in result.mapped.lines if "--optimizer_type=Lion" in line.option]
    assert cut and cut[0].status == NO_EFFECT
    assert "not part of it" in result.render()


def test_a_western_windows_bat_is_refused_not_garbled_as_shift_jis(tmp_path):
    command = ('accelerate launch train_network.py --train_data_dir="D:\\Entraînement\\img" '
               '--output_name=Renée --pretrained_model_name_or_path="C:\\Users\\José\\m.ckpt"\r\n')
    path = tmp_path / "train.bat"
    path.write_bytes(command.encode("cp1252"))
    with pytest.raises(LoraError, match="UTF-8, UTF-16 and Shift-JIS") as caught:
        import_source(path)
    assert "cp1252" in str(caught.value) and "UTF-8" in caught.value.hint


def test_utf16_without_a_bom_is_read(tmp_path):
    command = "REM 学習\r\naccelerate launch train_network.py --output_name=\"キャラ v1\"\r\n"
    for encoding in ("utf-16-le", "utf-16-be"):
        path = tmp_path / f"{encoding}.bat"
        path.write_bytes(command.encode(encoding))
        assert fields(import_source(path))[("saving", "output_name")] == "キャラ v1"


def test_kohya_ss_warmup_percentage_and_its_absolute_override(tmp_path):
    base = {"LoRA_type": "Standard", "pretrained_model_name_or_path": "/m.safetensors",
            "network_dim": 8, "learning_rate": 1e-4}
    cases = [({"lr_warmup": 10, "lr_warmup_steps": 0}, 0.1),
             ({"lr_warmup_steps": 0, "lr_warmup": 10}, 0.1),
             ({"lr_warmup": 10, "lr_warmup_steps": 50}, 50),
             ({"lr_warmup": 0, "lr_warmup_steps": ""}, None)]
    for index, (warmup, expected) in enumerate(cases):
        path = tmp_path / f"preset{index}.json"
        path.write_text(json.dumps({**base, **warmup}))
        result = import_source(path)
        assert fields(result).get(("optimizer", "lr_warmup_steps")) == expected, warmup
        assert [line.option for line in result.mapped.lines
                if line.where == "[optimizer] lr_warmup_steps"] == (
            [] if expected is None else ["lr_warmup" if expected == 0.1 else "lr_warmup_steps"])


def test_a_later_value_never_silently_overwrites_a_mapped_one():
    result = import_source("pasted", "accelerate launch train_network.py --network_dim=8 "
                           "--learning_rate=1e-4 --network_dim=16")
    assert fields(result)[("network", "network_dim")] == 16
    first = [line for line in result.mapped.lines if line.option == "network_dim"][0]
    assert first.value == 8 and first.status == NO_EFFECT and "overridden" in first.why
    assert [line.value for line in result.mapped.lines
            if line.where == "[network] network_dim" and line.status == MAPPED] == [16]


def test_a_5_mb_one_word_command_is_answered_within_seconds(tmp_path):
    word = "a" * (5 * 1024 * 1024)
    for name, text in (("value.sh", f"accelerate launch train_network.py --output_name={word}"
                                    " --network_dim=8\n"),
                       ("option.sh", f"accelerate launch train_network.py --{word}\n"),
                       ("bare.sh", word + "\n")):
        path = tmp_path / name
        path.write_text(text)
        started = time.monotonic()
        try:
            result = import_source(path)
        except LoraError as exc:
            assert "training script" in str(exc), name
        else:
            assert len(result.render()) < 10_000, name  # the word is shown cut short
            if name == "value.sh":
                assert fields(result)[("saving", "output_name")] == word
        assert time.monotonic() - started < 5.0, name


def test_shell_variables_come_from_the_scripts_own_assignments(tmp_path):
    sh = tmp_path / "train.sh"
    sh.write_text('#!/bin/bash\nMODEL="/models/sd 15.safetensors"\nexport DIM=32\n'
                  'accelerate launch train_network.py --pretrained_model_name_or_path="$MODEL" '
                  "\\\n  --network_dim=$DIM --output_name=run_${DIM} --training_comment='$DIM'\n")
    got = fields(import_source(sh))
    assert got[("model", "pretrained_model_name_or_path")] == "/models/sd 15.safetensors"
    assert got[("network", "network_dim")] == 32
    assert got[("saving", "output_name")] == "run_32"
    assert got[("saving", "training_comment")] == "$DIM"  # single quotes: no expansion
    bat = tmp_path / "train.bat"
    bat.write_text('@echo off\r\nset MODEL=D:\\SD Models\\any.safetensors\r\n'
                   'set "NAME=my lora"\r\naccelerate launch train_network.py '
                   '--pretrained_model_name_or_path="%MODEL%" --output_name="%name%" '
                   '--training_comment="100%%"\r\n')
    got = fields(import_source(bat))
    assert got[("model", "pretrained_model_name_or_path")] == "D:\\SD Models\\any.safetensors"
    assert got[("saving", "output_name")] == "my lora"
    assert got[("saving", "training_comment")] == "100%"
    for name, text in (("home.sh", 'accelerate launch train_network.py --output_dir="${HOME}/out"'
                                   " --network_dim=8\n"),
                       ("home.bat", "accelerate launch train_network.py --output_dir=%~dp0out\r\n"),
                       ("env.bat", "accelerate launch train_network.py --output_dir=%OUT%\\x\r\n")):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(LoraError, match="does not set") as caught:
            import_source(path)
        assert {"home.sh": "${HOME}", "home.bat": "%~dp0", "env.bat": "%OUT%"}[name] in str(
            caught.value)


def test_a_config_file_reached_from_a_command_gets_the_imports_guards(tmp_path):
    script = tmp_path / "train.bat"
    script.write_text("accelerate launch train_network.py --config_file=cfg.toml\r\n")
    config = tmp_path / "cfg.toml"
    config.write_bytes('output_name = "キャラ"\r\nnetwork_dim = 8\r\n'.encode("cp932"))
    assert fields(import_source(script))[("saving", "output_name")] == "キャラ"
    config.write_text("x = " + "[" * 100_000 + "]" * 100_000)
    with pytest.raises(LoraError, match="nested too deeply|cannot be read"):
        import_source(script)
    config.write_bytes(b"a = 1\n" + b"#" * (11 * 1024 * 1024))
    with pytest.raises(LoraError, match="cfg.toml is 11.0 MB"):
        import_source(script)


def test_accelerates_mixed_precision_is_not_the_training_precision():
    result = import_source("pasted", "accelerate launch --mixed_precision=fp16 "
                           "train_network.py --network_dim=8\n")
    assert fields(result)[("training", "mixed_precision")] == "no"  # sd-scripts' own default
    line = lines(result)["accelerate --mixed_precision"]
    assert line.status == NO_EFFECT and "default \"no\"" in line.why and line.value == "fp16"
    own = import_source("pasted", "accelerate launch --mixed_precision=fp16 "
                        "train_network.py --mixed_precision=bf16\n")
    assert fields(own)[("training", "mixed_precision")] == "bf16"


def test_the_report_prints_non_ascii_values_as_they_are():
    result = import_source("pasted", 'accelerate launch train_network.py '
                           '--output_name="キャラ v1" --training_comment="café"\n')
    report = result.render()
    assert '"キャラ v1"' in report and '"café"' in report and "\\u" not in report


def test_two_text_encoder_rates_alone_do_not_say_sdxl(tmp_path):
    (tmp_path / "train" / "10_hero").mkdir(parents=True)
    data = {"profile_version": 1,
            "model": {"pretrained_model_name_or_path": "/elsewhere/model.safetensors"},
            "dataset": {"train_data_dir": str(tmp_path / "train")},
            "optimizer": {"text_encoder_lr": [1e-5, 2e-5]},
            "saving": {"output_dir": str(tmp_path / "out")}}
    profile, _ = read_profile(data, tmp_path)
    export_sd_scripts(profile, tmp_path / "export")
    _, script, _ = exported_command(tmp_path / "export" / "command.sh")
    assert script == "train_network.py"
    note = (tmp_path / "export" / "NOT-EXPORTED.txt").read_text()
    assert "could not tell its family" in note and "two text-encoder rates" in note


def test_abbreviations_are_read_with_sd_scripts_own_option_list():
    got = fields(import_source("pasted", "accelerate launch train_network.py "
                               "--max_train_epo 4 --min_snr=5 --learning_r=1e-4\n"))
    assert got[("training", "max_train_epochs")] == 4
    assert got[("training", "min_snr_gamma")] == 5
    assert got[("optimizer", "learning_rate")] == 1e-4
    # sd-scripts also defines its old typo --caption_extention: the prefix is ambiguous there
    with pytest.raises(LoraError, match="ambiguous") as caught:
        import_source("pasted", "accelerate launch train_network.py --caption_ext=.txt\n")
    assert "--caption_extension, --caption_extention" in str(caught.value)


def test_the_packaged_option_lists_are_sd_scripts_own():
    from lora_core.importing.sd_scripts_args import options_of

    for script in ("train_network.py", "sdxl_train_network.py", "flux_train_network.py"):
        assert options_of(script) == sd_scripts_args(script), script


def test_secrets_are_never_echoed_and_huggingface_options_are_sd_scripts_ones(tmp_path):
    result = import_source("pasted", "accelerate launch train_network.py "
                           "--huggingface_token=hf_SECRET123 --huggingface_repo_id=me/lora "
                           "--wandb_api_key=WANDBSECRET --network_dim=8\n")
    report = result.render()
    assert "hf_SECRET123" not in report and "WANDBSECRET" not in report
    assert "huggingface_token = (hidden)" in report and "wandb_api_key = (hidden)" in report
    seen = lines(result)
    assert seen["huggingface_token"].status == seen["huggingface_repo_id"].status \
        == "not supported"
    empty = import_source("pasted", "accelerate launch train_network.py --wandb_api_key=\"\"\n")
    assert lines(empty)["wandb_api_key"].status == OFF


def test_lets_own_keys_are_no_effect_and_the_written_dataset_config_is_named(tmp_path):
    (tmp_path / "10_alice").mkdir()
    lets = tmp_path / "lets.toml"
    folder = (tmp_path / "10_alice").as_posix()
    lets.write_text(f'[[subsets]]\nimage_dir = "{folder}"\nnum_repeats = 10\n\n'
                    '[general_args.args]\npretrained_model_name_or_path = "/m.safetensors"\n\n'
                    '[saving_args.args]\noutput_name = "alice"\nsave_toml = true\n'
                    'save_toml_location = "/x"\n')
    result = import_source(lets)
    seen = lines(result)
    assert seen["save_toml"].status == NO_EFFECT and "did you mean" not in result.render()
    assert seen["save_toml_location"].status == NO_EFFECT
    result.write_beside(tmp_path / "alice.toml")
    report = result.render()
    assert "alice.dataset.toml" in report and "dataset_config.toml" not in report


def test_kohya_ss_zero_text_encoder_rate_shows_the_source_value_and_why(tmp_path):
    path = tmp_path / "preset.json"
    path.write_text(json.dumps({"LoRA_type": "Standard", "unet_lr": 1e-4,
                                "text_encoder_lr": 0, "network_dim": 8}))
    line = lines(import_source(path))["text_encoder_lr"]
    assert line.value == 0 and "network_train_unet_only = true" in line.text()


def test_command_bat_doubles_percent_signs(tmp_path):
    (tmp_path / "train" / "10_hero").mkdir(parents=True)
    data = {"profile_version": 1, "model": {"pretrained_model_name_or_path": "builtin:tiny-sd1"},
            "dataset": {"train_data_dir": str(tmp_path / "train")},
            "saving": {"output_dir": str(tmp_path / "out"), "output_name": "hero_100%",
                       "training_comment": "50% %USERNAME% style"}}
    profile, problems = read_profile(data, tmp_path)
    export_sd_scripts(profile, tmp_path / "export")
    bat = (tmp_path / "export" / "command.bat").read_text()
    assert "--output_name=hero_100%%" in bat and '"50%% %%USERNAME%% style"' in bat
    back = fields(import_source(tmp_path / "export" / "command.bat"))
    assert back[("saving", "output_name")] == "hero_100%"
    assert back[("saving", "training_comment")] == "50% %USERNAME% style"


# --- Flux.1 from kohya_ss and LETS (issue 27) -------------------------------------------------

def kohya_flux_preset(**changes) -> dict:
    """A kohya_ss LoRA configuration saved with the Flux.1 box on, in the shape of its
    presets/lora/"flux1D - adamw8bit fp8.json" (kohya_gui/class_flux1.py's fields)."""
    return kohya_preset(**{
        "LoRA_type": "Flux1", "sdxl": False, "flux1_checkbox": True, "model_type": "flux",
        "ae": "/m/ae.safetensors", "clip_l": "/m/clip_l.safetensors",
        "t5xxl": "/m/t5xxl_fp16.safetensors", "discrete_flow_shift": 3.1582,
        "model_prediction_type": "raw", "timestep_sampling": "shift", "guidance_scale": 1,
        "t5xxl_max_token_length": 512, "apply_t5_attn_mask": True, "split_mode": False,
        "train_blocks": "all", "split_qkv": True, "train_t5xxl": False,
        "cpu_offload_checkpointing": False, "blocks_to_swap": 12, "fp8_base": True,
        "fp8_base_unet": False, "flux1_cache_text_encoder_outputs": True,
        "flux1_cache_text_encoder_outputs_to_disk": True, "mem_eff_save": False,
        "single_blocks_to_swap": 0, "double_blocks_to_swap": 0, "enable_all_linear": False,
        "img_attn_dim": "", "single_dim": "8", "in_dims": "", "train_double_block_indices":
        "", "train_single_block_indices": "0-3", "t5xxl_lr": 0,
        "sdxl_cache_text_encoder_outputs": True, "sdxl_no_half_vae": True,
        "text_encoder_lr": 0, **changes})


def test_a_kohya_flux1_configuration_lands_in_flux_and_training():
    preset = kohya_flux_preset()
    result = import_source("flux.json", json.dumps(preset))
    assert set(preset) <= set(lines(result))  # the report names every key
    profile, problems = read_profile(result.data)
    assert [p.text() for p in problems if p.severity == "error"] == []
    fx = profile.flux
    assert (fx.ae, fx.clip_l, fx.t5xxl) == ("/m/ae.safetensors", "/m/clip_l.safetensors",
                                           "/m/t5xxl_fp16.safetensors")
    assert (fx.discrete_flow_shift, fx.model_prediction_type, fx.timestep_sampling,
            fx.guidance_scale, fx.t5xxl_max_token_length, fx.apply_t5_attn_mask) == (
        3.1582, "raw", "shift", 1.0, 512, True)
    assert (fx.split_qkv, fx.single_dim, fx.train_single_block_indices, fx.train_blocks,
            fx.img_attn_dim, fx.model_type) == (True, 8, "0-3", "all", None, "")
    assert (profile.training.blocks_to_swap, profile.training.fp8_base,
            profile.training.cpu_offload_checkpointing) == (12, True, False)
    assert profile.dataset.cache_text_encoder_outputs is True
    assert profile.dataset.cache_text_encoder_outputs_to_disk is True
    assert profile.network.network_module == "LoRA"
    got = lines(result)
    assert got["ae"].status == MAPPED and got["blocks_to_swap"].status == MAPPED
    for key in ("split_mode", "mem_eff_save", "img_attn_dim", "single_blocks_to_swap",
                "t5xxl_lr", "fp8_base_unet"):
        assert got[key].status == OFF, key
    for key in ("flux1_checkbox", "model_type", "sdxl_no_half_vae",
                "sdxl_cache_text_encoder_outputs"):  # the sdxl_* ones: sdxl is off
        assert got[key].status == NO_EFFECT, key
    assert "no_half_vae" not in result.data.get("model", {})
    # split_mode: kohya_ss adds train_blocks=single; sd-scripts swaps 18 blocks for it
    split = read_profile(import_source("flux.json", json.dumps(kohya_flux_preset(
        split_mode=True, blocks_to_swap=0))).data)[0]
    assert (split.flux.train_blocks, split.training.blocks_to_swap) == ("single", 18)
    # Chroma: model_type passed, clip_l not (Chroma has no CLIP-L), guidance 0 kept
    chroma = import_source("flux.json", json.dumps(kohya_flux_preset(
        model_type="chroma", guidance_scale=0)))
    assert chroma.data["flux"]["model_type"] == "chroma"
    assert chroma.data["flux"]["guidance_scale"] == 0 and "clip_l" not in chroma.data["flux"]
    with pytest.raises(LoraError, match="Flux1 OFT"):
        import_source("flux.json", json.dumps(kohya_flux_preset(LoRA_type="Flux1 OFT")))


def test_kohya_flux_fields_of_an_sdxl_configuration_stay_out_of_the_profile():
    # the GUI saves its Flux fields (at their defaults) in every configuration
    preset = kohya_flux_preset(LoRA_type="Standard", sdxl=True, flux1_checkbox=False,
                               ae="", clip_l="", t5xxl="", guidance_scale=3.5,
                               timestep_sampling="sigma", discrete_flow_shift=3.0,
                               blocks_to_swap=0, split_qkv=False, single_dim="",
                               train_single_block_indices="")
    result = import_source("sdxl.json", json.dumps(preset))
    assert "flux" not in result.data
    assert "blocks_to_swap" not in result.data.get("training", {})
    assert set(preset) <= set(lines(result))
    got = lines(result)
    assert got["guidance_scale"].status == NO_EFFECT and got["ae"].status == OFF
    assert got["flux1_checkbox"].status == OFF
    assert result.data["dataset"]["cache_text_encoder_outputs"] is True  # sdxl's, sdxl on


LETS_FLUX = """
[[subsets]]
num_repeats = 10
image_dir = "/data/10_hero"
name = "hero"

[train_mode]
train_mode = "lora"

[general_args.args]
pretrained_model_name_or_path = "/models/flux1-dev.safetensors"
mixed_precision = "bf16"
max_train_epochs = 4
fp8_base = true
gradient_checkpointing = true

[general_args.dataset_args]
resolution = 1024
batch_size = 1

[network_args.args]
network_dim = 16
network_alpha = 16.0
network_train_unet_only = true
cache_text_encoder_outputs = true

[network_args.args.network_args]
train_blocks = "single"
split_qkv = true

[flux_args.args]
ae = "/models/ae.safetensors"
clip_l = "/models/clip_l.safetensors"
t5xxl = "/models/t5xxl_fp16.safetensors"
apply_t5_attn_mask = true
t5xxl_max_token_length = 512
discrete_flow_shift = false
split_mode = true
timestep_sampling = "sigmoid"
sigmoid_scale = 1.0
weighting_scheme = "none"
guidance_scale = 1.0
model_prediction_type = "raw"

[saving_args.args]
output_dir = "/out"
"""


def test_a_lets_flux_toml_lands_in_flux_and_training(tmp_path):
    source = tmp_path / "lets-flux.toml"
    source.write_text(LETS_FLUX)
    result = import_source(source)
    flux_keys = set(tomllib.loads(LETS_FLUX)["flux_args"]["args"])
    assert flux_keys <= set(lines(result))  # the report names every key
    assert "discrete_flow_shift" not in result.data["flux"]  # LETS' false: not passed
    assert lines(result)["discrete_flow_shift"].status == OFF
    profile, problems = read_profile(result.data)
    assert [p.text() for p in problems if p.severity == "error"] == []
    fx = profile.flux
    assert (fx.ae, fx.t5xxl, fx.apply_t5_attn_mask, fx.t5xxl_max_token_length,
            fx.timestep_sampling, fx.sigmoid_scale, fx.weighting_scheme, fx.guidance_scale,
            fx.model_prediction_type, fx.discrete_flow_shift) == (
        "/models/ae.safetensors", "/models/t5xxl_fp16.safetensors", True, 512, "sigmoid",
        1.0, "none", 1.0, "raw", 3.0)
    assert (fx.train_blocks, fx.split_qkv) == ("single", True)
    # split_mode: sd-scripts' deprecated switch, read as 18 swapped blocks
    assert (profile.training.blocks_to_swap, profile.training.fp8_base) == (18, True)
    assert lines(result)["split_mode"].status == MAPPED
    swapped = import_source("lets.toml", LETS_FLUX.replace(
        "split_mode = true", "split_mode = true\nblocks_to_swap = 8"))
    assert swapped.data["training"]["blocks_to_swap"] == 8
    assert lines(swapped)["split_mode"].status == NO_EFFECT
