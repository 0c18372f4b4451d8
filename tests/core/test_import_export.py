"""`lora-train import` and `export` (issue 14).

The fixtures are written here, after the public documentation and examples of each tool: a
guide-style Windows command line (``^`` continuations, ``D:\\`` paths, about forty options),
a POSIX one, sd-scripts' ``--config_file`` TOML, a LETS TOML and a LETS popup-era JSON, a
kohya_ss GUI JSON. Each imports to the expected fields with every option accounted for. The
round trip (profile -> export -> import) is generated from the profile's field list, so a new
field cannot be forgotten.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tomllib
from pathlib import Path

import pytest
import tomli_w

from lora_core.checks import check_profile
from lora_core.cli import main
from lora_core.errors import LoraError
from lora_core.importing import import_source
from lora_core.importing.export import NO_EQUIVALENT, export_sd_scripts
from lora_core.importing.mapping import MAPPED, NO_EFFECT, UNKNOWN
from lora_core.importing.sd_scripts_args import FLUX_ONLY, SDXL_ONLY, TRAIN_NETWORK
from lora_core.profile import SECTIONS, Profile
from lora_core.profile_load import profile_from_dict, read_profile
from lora_core.training.optimizer_args import optimizer_args_list

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

GUIDE_COMMAND = r"""accelerate launch --num_cpu_threads_per_process 1 train_network.py ^
  --pretrained_model_name_or_path="D:\sd\models\anything-v4.5-pruned.safetensors" ^
  --train_data_dir="D:\lora\train" ^
  --reg_data_dir="D:\lora\reg" ^
  --output_dir="D:\lora\output" ^
  --output_name="mychar" ^
  --resolution=512,512 ^
  --enable_bucket ^
  --min_bucket_reso=320 ^
  --max_bucket_reso=960 ^
  --train_batch_size=2 ^
  --max_train_epochs=10 ^
  --save_every_n_epochs=1 ^
  --save_model_as=safetensors ^
  --save_precision="fp16" ^
  --mixed_precision="fp16" ^
  --learning_rate=1e-4 ^
  --unet_lr=1e-4 ^
  --text_encoder_lr=5e-5 ^
  --lr_scheduler="cosine_with_restarts" ^
  --lr_scheduler_num_cycles=3 ^
  --lr_warmup_steps=100 ^
  --network_module=networks.lora ^
  --network_dim=32 ^
  --network_alpha=16 ^
  --network_args "conv_dim=8" "conv_alpha=4" ^
  --optimizer_type="AdamW8bit" ^
  --optimizer_args "weight_decay=0.1" "betas=0.9,0.99" ^
  --clip_skip=2 ^
  --seed=42 ^
  --caption_extension=".txt" ^
  --shuffle_caption ^
  --keep_tokens=1 ^
  --max_token_length=225 ^
  --cache_latents ^
  --gradient_checkpointing ^
  --xformers ^
  --persistent_data_loader_workers ^
  --max_data_loader_n_workers=2 ^
  --noise_offset=0.05 ^
  --min_snr_gamma=5 ^
  --log_with=tensorboard ^
  --logging_dir="D:\lora\logs"
"""


def fields(result) -> dict:
    return {(section, key): value for section, values in result.data.items()
            if isinstance(values, dict) for key, value in values.items()}


def statuses(result) -> dict[str, str]:
    return {line.option: line.status for line in result.mapped.lines}


def test_the_guides_windows_command_line_accounts_for_every_option(tmp_path):
    result = import_source("guide", GUIDE_COMMAND)
    assert result.form == "command"
    got = fields(result)
    assert got[("model", "pretrained_model_name_or_path")] == \
        r"D:\sd\models\anything-v4.5-pruned.safetensors"  # kept as written
    assert got[("dataset", "resolution")] == "512,512"
    assert got[("network", "network_args")] == ["conv_dim=8", "conv_alpha=4"]
    assert got[("optimizer", "optimizer_args")] == ["weight_decay=0.1", "betas=0.9,0.99"]
    assert got[("optimizer", "learning_rate")] == 1e-4 and got[("model", "clip_skip")] == 2
    assert got[("dataset", "shuffle_caption")] is True
    seen = statuses(result)
    written = [word[2:].partition("=")[0] for line in GUIDE_COMMAND.splitlines()
               for word in line.split() if word.startswith("--")]
    # every option of the command has its line: mapped, no effect or not supported
    for option in written:
        assert option in seen or f"accelerate --{option}" in seen, option
    assert seen["xformers"] == NO_EFFECT and seen["persistent_data_loader_workers"] == NO_EFFECT
    assert seen["log_with"] == MAPPED and got[("logging", "logging_dir")] == r"D:\lora\logs"
    assert UNKNOWN not in seen.values()
    assert len([o for o in written if seen.get(o) == MAPPED]) == 40
    # what the command leaves out runs with sd-scripts' default, not this project's
    assert got[("saving", "save_state")] is False and got[("network", "network_module")] == \
        "networks.lora"
    # Once its paths are local (and its precision fits this CPU), it passes check.
    data = result.data
    data["model"]["pretrained_model_name_or_path"] = "builtin:tiny-sd1"
    data["dataset"].update(train_data_dir=str(EXAMPLES / "dataset" / "train"),
                           reg_data_dir=str(EXAMPLES / "dataset" / "reg"), resolution=64,
                           min_bucket_reso=64, max_bucket_reso=64)
    data["saving"]["output_dir"] = str(tmp_path / "out")
    data["logging"]["logging_dir"] = str(tmp_path / "logs")
    data["training"]["mixed_precision"] = "no"
    report = check_profile(profile_from_dict(data, tmp_path))
    assert report.errors == [], [p.text() for p in report.errors]
    assert report.plan.num_epochs == 10


def test_a_posix_command_with_spaces_and_separate_values():
    text = """python train_network.py \\
      --pretrained_model_name_or_path '/models/my model.safetensors' \\
      --output_name "my lora" --network_dim 16 --network_alpha 8 \\
      --network_module lycoris.kohya --network_args "algo=loha" "conv_dim=4" \\
      --max_train_epoch 4   # a prefix sd-scripts' parser accepts
    """
    result = import_source("posix", text)
    got = fields(result)
    assert got[("model", "pretrained_model_name_or_path")] == "/models/my model.safetensors"
    assert got[("saving", "output_name")] == "my lora"
    assert got[("training", "max_train_epochs")] == 4
    profile, problems = read_profile(result.data, Path.cwd())
    assert profile.network.network_module == "LoHa" and profile.network.conv_dim == 4


def test_an_sd_scripts_config_file():
    text = tomli_w.dumps({
        "model_arguments": {"pretrained_model_name_or_path": "/m/sd15.safetensors", "v2": False},
        "additional_network_arguments": {"network_module": "networks.lora", "network_dim": 16,
                                         "network_alpha": 8, "unet_lr": 1e-4},
        "optimizer_arguments": {"optimizer_type": "Lion", "learning_rate": 3e-5,
                                "lr_scheduler": "constant"},
        "training_arguments": {"max_train_steps": 1600, "xformers": True,
                               "mixed_precision": "bf16", "train_batch_size": 4},
        "dataset_arguments": {"train_data_dir": "/data/train", "resolution": "768,512"},
    })
    result = import_source("config.toml", text)
    assert result.form == "sd-scripts-toml"
    got = fields(result)
    assert got[("optimizer", "optimizer_type")] == "Lion"
    assert got[("training", "max_train_steps")] == 1600
    assert got[("dataset", "resolution")] == "768,512"
    assert statuses(result)["xformers"] == NO_EFFECT


LETS_TOML = """
[[subsets]]
num_repeats = 10
keep_tokens = 1
caption_extension = ".txt"
shuffle_caption = true
is_reg = false
image_dir = "F:/datasets/mychar/10_mychar"

[[subsets]]
num_repeats = 1
is_reg = true
image_dir = "F:/datasets/reg/1_woman"

[train_mode]
train_mode = "lora"

[general_args.args]
pretrained_model_name_or_path = "F:/models/base.safetensors"
mixed_precision = "bf16"
seed = 23
clip_skip = 2
xformers = true
max_train_epochs = 2

[general_args.dataset_args]
resolution = 768
batch_size = 2

[network_args.args]
network_dim = 8
network_alpha = 1.0

[network_args.args.network_args]
conv_dim = 4
conv_alpha = 1.0
algo = "locon"

[optimizer_args.args]
optimizer_type = "AdamW8bit"
lr_scheduler = "cosine"
learning_rate = 0.0001
warmup_ratio = 0.05

[optimizer_args.args.optimizer_args]
weight_decay = 0.1
betas = "0.9,0.99"

[saving_args.args]
output_dir = "F:/out"
output_name = "mychar"
save_every_n_epochs = 1

[bucket_args.dataset_args]
enable_bucket = true
min_bucket_reso = 256
max_bucket_reso = 1024
"""


def test_a_lets_toml_with_subsets():
    result = import_source("lets.toml", LETS_TOML)
    assert result.form == "lets-toml"
    got = fields(result)
    # the subsets stay subsets (issue 25 item 5): a dataset_config, not their parents
    assert ("dataset", "train_data_dir") not in got
    assert [(s["image_dir"], s["num_repeats"], s.get("is_reg", False)) for s in
            result.dataset_config["datasets"][0]["subsets"]] == [
        ("F:/datasets/mychar/10_mychar", 10, False), ("F:/datasets/reg/1_woman", 1, True)]
    assert got[("training", "train_batch_size")] == 2
    assert got[("optimizer", "lr_warmup_steps")] == 0.05  # a ratio, as the field reads it
    assert got[("optimizer", "optimizer_args")] == ["weight_decay=0.1", "betas=0.9,0.99"]
    profile, problems = read_profile(result.data, Path.cwd())
    # the other machine's paths (F:/...) are the only problems: check names them
    assert [p.text() for p in problems if p.severity == "error" and p.key not in (
        "pretrained_model_name_or_path", "output_dir")] == []
    assert (profile.network.network_module, profile.network.conv_dim) == ("LoCon", 4)


def test_a_lets_popup_json_and_a_kohya_ss_json():
    lets = {"base_model": "/m/base.safetensors", "img_folder": "/d/img", "output_folder": "/o",
            "change_output_name": "hero", "net_dim": 32, "alpha": 16, "scheduler": "cosine",
            "train_resolution": 640, "height_resolution": 512, "batch_size": 3,
            "num_epochs": 6, "save_json_only": False, "lyco": False}
    result = import_source("lets.json", json.dumps(lets))
    assert result.form == "lets-json"
    got = fields(result)
    assert got[("dataset", "resolution")] == "640,512"
    assert got[("network", "network_dim")] == 32 and got[("training", "max_train_epochs")] == 6
    assert statuses(result)["save_json_only"] == NO_EFFECT

    kohya = {"LoRA_type": "LyCORIS/LoHa", "pretrained_model_name_or_path": "/m/base.safetensors",
             "train_data_dir": "/d/img", "reg_data_dir": "", "output_dir": "/o",
             "max_resolution": "512,512", "epoch": 8, "max_train_epochs": "",
             "learning_rate": "0.0001", "lr_warmup": "10", "optimizer": "AdamW8bit",
             "optimizer_args": "weight_decay=0.05 betas=0.9,0.99", "network_dim": 16,
             "network_alpha": 8, "conv_dim": 8, "conv_alpha": 4, "seed": "1234",
             "bucket_reso_steps": 64.0, "xformers": "xformers", "sdxl": False,
             "stop_text_encoder_training": 0, "additional_parameters":
             "--max_grad_norm=0.5 --min_snr_gamma 5"}
    result = import_source("kohya.json", json.dumps(kohya))
    assert result.form == "kohya_ss"
    got = fields(result)
    assert got[("network", "network_module")] == "LoHa"
    assert got[("training", "max_train_epochs")] == 8
    assert got[("optimizer", "lr_warmup_steps")] == pytest.approx(0.1)  # 10 %
    assert got[("optimizer", "learning_rate")] == 1e-4 and got[("training", "seed")] == 1234
    assert got[("optimizer", "max_grad_norm")] == 0.5  # from additional_parameters
    assert got[("dataset", "bucket_reso_steps")] == 64
    seen = statuses(result)
    assert set(kohya) - {"additional_parameters"} <= set(seen)  # nothing dropped silently


@pytest.mark.parametrize("text, words", [
    ("accelerate launch train_db.py --train_data_dir=x", "train_db.py"),
    ("python sdxl_train.py --x=1", "a full model"),
    ('{"hello": 1}', "none of the known settings forms"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'x'\n", None),
], ids=["dreambooth", "fine-tune", "unknown-json", "dataset-config"])
def test_other_scripts_and_forms(text, words, tmp_path):
    if words is None:  # a dataset_config alone is read as one, pointing the profile at it
        path = tmp_path / "dataset.toml"
        path.write_text(text)
        assert fields(import_source(path))[("dataset", "dataset_config")] == str(path)
        return
    with pytest.raises(LoraError, match=words):
        import_source("source", text)


def test_bad_input_through_the_command_line(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(bare))
    junk = tmp_path / "junk.json"
    junk.write_text('{"whatever": true}')
    db = tmp_path / "db.sh"
    db.write_text("accelerate launch train_db.py --output_dir=x\n")
    for path, words in ((bare, "no training metadata"), (junk, "none of the known"),
                        (db, "train_db.py"), (tmp_path / "nope.toml", "not found")):
        assert main(["import", str(path)]) == 2
        err = capsys.readouterr().err
        assert words in err and "hint:" in err and "Traceback" not in err
    out = tmp_path / "p.toml"
    out.write_text("x")
    assert main(["import", str(junk), "-o", str(out)]) == 2
    assert out.read_text() == "x"


# --- export and the round trip ---------------------------------------------------------------


def _changed_value(section: str, f: dataclasses.Field, tmp: Path):
    """A value for field ``f`` other than its default, valid for the profile."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    meta = f.metadata
    if meta.get("choices"):
        choices = [c for c in meta["choices"] if c != default and not c.startswith(
            ("networks.", "lycoris.")) and c not in ("LoHa", "LoKr")]
        return choices[0] if choices else default  # one choice: nothing else to pick
    if meta.get("path"):
        return str(tmp / f"{f.name}.txt") if f.name != "pretrained_model_name_or_path" \
            else "builtin:tiny-sd1"
    return None


SPECIAL = {  # values that fit together (the profile's rules) where a generic change would not
    ("notify", "command"): "true", ("notify", "on"): ["failed"],
    ("notify", "webhook"): "https://hooks.example.com/T0/s3cret",
    ("training", "num_processes"): 2, ("training", "gpu_ids"): "1,3",
    ("network", "network_module"): "LoCon", ("network", "conv_dim"): 4,
    ("network", "conv_alpha"): 2.0, ("network", "network_dropout"): 0.1,
    ("network", "rank_dropout"): 0.1, ("network", "module_dropout"): 0.1,
    ("network", "block_dims"): ",".join(["4"] * 25), ("network", "block_alphas"):
    ",".join(["2"] * 25), ("network", "conv_block_dims"): ",".join(["4"] * 25),
    ("network", "conv_block_alphas"): ",".join(["2"] * 25),
    ("optimizer", "down_lr_weight"): "1,1,1,1,1,1,1,1,1,1,1,0.5",
    ("optimizer", "mid_lr_weight"): "0.5", ("optimizer", "up_lr_weight"):
    "1,1,1,1,1,1,1,1,1,1,1,0.5", ("optimizer", "block_lr_zero_threshold"): 0.1,
    ("dataset", "resolution"): "640,512", ("dataset", "dataset_config"): "",
    ("network", "network_args"): [], ("network", "network_train_text_encoder_only"): False,
    ("network", "factor"): -1, ("training", "max_train_steps"): None,
    # LyCORIS-type options: exported and imported in test_lycoris_types_export_and_import.
    ("network", "dora_wd"): False, ("network", "dylora_unit"): 4,
    ("network", "constraint"): 0.0, ("network", "rescaled"): False,
    ("network", "train_on_input"): False,
    ("model", "v2"): False, ("model", "v_parameterization"): False,
    ("training", "scale_v_pred_loss_like_noise_pred"): False,
    ("optimizer", "optimizer_args"): ["weight_decay=0.05"],
    ("dataset", "token_warmup_min"): 2, ("training", "min_timestep"): 10,
    ("training", "max_timestep"): 900, ("dataset", "max_token_length"): 150,
    ("optimizer", "loraplus_unet_lr_ratio"): 4.0,
    ("optimizer", "loraplus_text_encoder_lr_ratio"): 2.0,
    ("training", "huber_schedule"): "exponential", ("training", "loss_type"): "huber",
    ("dataset", "keep_tokens_separator"): "|||", ("dataset", "secondary_separator"): ";;;",
    ("dataset", "caption_extension"): ".caption", ("dataset", "cache_latents"): False,
    ("dataset", "cache_latents_to_disk"): False, ("dataset", "cache_text_encoder_outputs"):
    False, ("dataset", "cache_text_encoder_outputs_to_disk"): False,
    ("optimizer", "lr_scheduler"): "cosine", ("dataset", "bucket_reso_steps"): 128,
    ("dataset", "min_bucket_reso"): 256 + 128, ("dataset", "max_bucket_reso"): 1024 + 128,
    ("network", "base_weights_multiplier"): [0.5], ("optimizer", "lr_scheduler_args"):
    ["gamma=0.5"], ("optimizer", "lr_scheduler_type"): "", ("training", "zero_terminal_snr"):
    None,
}


FAMILY_SECTIONS = ("flux",)
# Fields outside [flux] that only flux_train_network.py defines (train_network.py stops at
# them): an SD profile leaves them at their defaults.
FLUX_ONLY_OPTIONS = FLUX_ONLY - TRAIN_NETWORK - SDXL_ONLY


def full_profile(tmp: Path) -> dict:
    """A profile with every field changed from its default (the generated part of the round
    trip: a field added to the profile is changed here too)."""
    data: dict = {"profile_version": 1}
    for section, cls in SECTIONS.items():
        if section in FAMILY_SECTIONS:
            # [flux] is only for Flux.1 models: an SD profile keeps it at its defaults (the
            # check refuses a value there) and its export writes none of its options, so an
            # SD round trip leaves it out; test_flux_profile_round_trip changes every one.
            continue
        table = data.setdefault(section, {})
        for f in dataclasses.fields(cls):
            if f.name in FLUX_ONLY_OPTIONS:
                continue  # a Flux-only option (block swap): test_flux_profile_round_trip
            if (section, f.name) in SPECIAL:
                value = SPECIAL[(section, f.name)]
            else:
                value = _changed_value(section, f, tmp)
                if value is None:
                    default = getattr(Profile(), section).__dict__[f.name]
                    value = (not default if isinstance(default, bool) else
                             default + 3 if isinstance(default, int) and default >= 0 else
                             round(default * 0.5 + 0.05, 4) if isinstance(default, float)
                             else 7 if default is None and "int" in str(f.type) else
                             0.25 if default is None else "x")
            if value is not None:
                table[f.name] = value
    data["dataset"]["train_data_dir"] = str(tmp / "train")
    data["dataset"]["reg_data_dir"] = str(tmp / "reg")
    data["saving"]["output_dir"] = str(tmp / "out")
    data["model"]["clip_skip"] = 2
    data["sample"]["sample_every_n_steps"] = 50
    data["sample"]["sample_every_n_epochs"] = 2
    return data


def test_profile_export_import_round_trip_keeps_every_expressible_field(tmp_path):
    for name in ("train/10_hero", "reg/1_person"):
        (tmp_path / name).mkdir(parents=True)
    data = full_profile(tmp_path)
    original, problems = read_profile(data, tmp_path)
    assert [p.text() for p in problems if p.severity == "error"] == []
    written = export_sd_scripts(original, tmp_path / "export")
    assert {p.name for p in written} == {"config.toml", "dataset_config.toml", "command.sh",
                                         "command.bat", "NOT-EXPORTED.txt"}
    for source in ("command.sh", "command.bat"):
        result = import_source(tmp_path / "export" / source)
        assert UNKNOWN not in statuses(result).values()
        back, problems = read_profile(result.data, tmp_path)
        assert [p.text() for p in problems if p.severity == "error"] == [], source
        assert back.notify == Profile().notify  # lora-train's own: nothing comes back
        for section, cls in SECTIONS.items():
            for f in dataclasses.fields(cls):
                if section == "notify" or f.name in NO_EQUIVALENT \
                        or f.name in ("network_multiplier", "cpu_offload_checkpointing"):
                    # network_multiplier: sd-scripts reads it from dataset_config;
                    # cpu_offload_checkpointing: its SD U-Nets lack it (NOT-EXPORTED)
                    continue
                want, got = getattr(getattr(original, section), f.name), \
                    getattr(getattr(back, section), f.name)
                if f.name == "optimizer_args":
                    want, got = optimizer_args_list(original.optimizer), got
                if want is False and got is None:  # a tri-state unset: sd-scripts' "off"
                    continue
                assert got == want, (source, section, f.name, got, want)
    not_exported = (tmp_path / "export" / "NOT-EXPORTED.txt").read_text()
    assert "tag_summary" in not_exported and "save_state_every_n_minutes" in not_exported
    assert "[notify] command `true` (on failed)" in not_exported
    assert "[notify] webhook https://hooks.example.com/… (on failed)" in not_exported
    assert "early_stopping_patience" in not_exported
    assert "[training] cpu_offload_checkpointing = True: sd-scripts' SD" in not_exported
    assert not any("s3cret" in p.read_text() for p in written)
    config = tomllib.loads((tmp_path / "export" / "config.toml").read_text())
    assert config["lora_train_export"]["dataset_config"].endswith("dataset_config.toml")
    flux_keys = {f.name for f in dataclasses.fields(SECTIONS["flux"])}
    assert not flux_keys & set(config["lora_train_export"])  # an SD export has no [flux] key
    assert "flux_train_network.py" not in (tmp_path / "export" / "command.sh").read_text()
    dataset = tomllib.loads((tmp_path / "export" / "dataset_config.toml").read_text())
    assert dataset["datasets"][0]["network_multiplier"] == original.network.network_multiplier
    subsets = dataset["datasets"][0]["subsets"]
    assert [(s["num_repeats"], s["is_reg"]) for s in subsets] == [(10, False), (1, True)]
    with pytest.raises(LoraError, match="exists already"):  # never replaces an export
        export_sd_scripts(original, tmp_path / "export")


@pytest.mark.parametrize(("network", "module", "args"), [
    ({"network_module": "LoCon", "dora_wd": True, "conv_dim": 8}, "lycoris.kohya",
     {"algo=locon", "dora_wd=True"}),
    ({"network_module": "DyLoRA", "network_dim": 8, "dylora_unit": 2}, "networks.dylora",
     {"unit=2"}),
    ({"network_module": "BOFT", "constraint": 0.5, "rescaled": True}, "lycoris.kohya",
     {"algo=boft", "constraint=0.5", "rescaled=True"}),
    ({"network_module": "IA3", "train_on_input": True}, "lycoris.kohya",
     {"algo=ia3", "train_on_input=True"}),
])
def test_lycoris_types_export_and_import(tmp_path, network, module, args):
    (tmp_path / "train" / "10_hero").mkdir(parents=True)
    data = {"profile_version": 1, "model": {"pretrained_model_name_or_path": "/m/sd15"},
            "dataset": {"train_data_dir": str(tmp_path / "train")}, "network": network,
            "saving": {"output_dir": str(tmp_path / "out")}}
    original, problems = read_profile(data, tmp_path)
    assert [p.text() for p in problems if p.severity == "error"] == []
    export_sd_scripts(original, tmp_path / "export")
    config = tomllib.loads((tmp_path / "export" / "config.toml").read_text())
    config = config["lora_train_export"]
    assert config["network_module"] == module
    assert args <= set(config["network_args"])
    back, problems = read_profile(import_source(tmp_path / "export" / "command.sh").data,
                                  tmp_path)
    assert [p.text() for p in problems if p.severity == "error"] == []
    assert back.network == original.network


def test_export_of_the_quickstart_from_the_command_line(tmp_path, capsys):
    profile = tmp_path / "quickstart.toml"
    shutil.copy(EXAMPLES / "quickstart.toml", profile)
    shutil.copytree(EXAMPLES / "dataset", tmp_path / "dataset")
    assert main(["export", str(profile), "--sd-scripts", str(tmp_path / "sd")]) == 0
    assert "command.sh" in capsys.readouterr().out
    command = (tmp_path / "sd" / "command.sh").read_text()
    assert "train_network.py" in command and "--network_dim=8" in command
    assert "builtin:tiny-sd1" in (tmp_path / "sd" / "NOT-EXPORTED.txt").read_text()


def test_import_maps_nothing_into_notify_or_early_stopping(tmp_path):
    # sd-scripts has no such options: keys of these names are unknown, never a guess.
    config = tmp_path / "config.toml"
    config.write_text('pretrained_model_name_or_path = "/m/sd15.safetensors"\n'
                      'webhook = "https://hooks.example.com/s3cret"\ncommand = "say done"\n'
                      'on = ["failed"]\nearly_stopping_patience = 3\n', encoding="utf-8")
    result = import_source(config)
    found = statuses(result)
    assert [found[k] for k in ("webhook", "command", "on", "early_stopping_patience")] == \
        [UNKNOWN] * 4
    assert "notify" not in result.data
    assert "early_stopping_patience" not in result.data.get("training", {})


# --- Flux.1 (issue 27) ------------------------------------------------------------------------

FLUX_COMMAND = """accelerate launch --mixed_precision bf16 flux_train_network.py \\
  --pretrained_model_name_or_path /models/flux1-dev.safetensors \\
  --clip_l /models/clip_l.safetensors \\
  --t5xxl /models/t5xxl_fp16.safetensors --ae /models/ae.safetensors \\
  --network_module networks.lora_flux --network_dim 4 --network_train_unet_only \\
  --guidance_scale 1.0 --timestep_sampling shift --discrete_flow_shift 3.1582 \\
  --model_prediction_type raw --apply_t5_attn_mask --t5xxl_max_token_length 256 \\
  --sigmoid_scale 1.5 --weighting_scheme logit_normal --logit_mean 0.5 --logit_std 1.5 \\
  --mode_scale 1.2 --model_type flux --blocks_to_swap 18 --fp8_base \\
  --output_dir /out --output_name flux-lora --train_data_dir /data
"""


def test_a_flux_train_network_command_lands_in_the_flux_section():
    result = import_source("flux", FLUX_COMMAND)
    got = fields(result)
    assert {key: value for (section, key), value in got.items() if section == "flux"} == {
        "clip_l": "/models/clip_l.safetensors", "t5xxl": "/models/t5xxl_fp16.safetensors",
        "ae": "/models/ae.safetensors", "guidance_scale": 1.0, "timestep_sampling": "shift",
        "discrete_flow_shift": 3.1582, "model_prediction_type": "raw",
        "apply_t5_attn_mask": True, "t5xxl_max_token_length": 256, "sigmoid_scale": 1.5,
        "weighting_scheme": "logit_normal", "logit_mean": 0.5, "logit_std": 1.5,
        "mode_scale": 1.2, "model_type": "flux"}
    assert got[("network", "network_module")] == "LoRA"  # networks.lora_flux
    seen = statuses(result)
    assert seen["blocks_to_swap"] != UNKNOWN and seen["fp8_base"] != UNKNOWN
    assert UNKNOWN not in seen.values()
    profile, problems = read_profile(result.data, Path.cwd())
    assert [p.text() for p in problems if p.severity == "error"] == []
    assert profile.flux.ae == "/models/ae.safetensors"


FLUX_CHANGED = {  # every [flux] field changed from its default (a new field must be added)
    "ae": "models/my ae.safetensors", "clip_l": "models/clip_l.safetensors",
    "t5xxl": "models/t5xxl_fp16.safetensors", "model_type": "flux",
    "apply_t5_attn_mask": True, "t5xxl_max_token_length": 256, "guidance_scale": 1.0,
    "timestep_sampling": "flux_shift", "sigmoid_scale": 1.5, "discrete_flow_shift": 3.1582,
    "model_prediction_type": "raw", "weighting_scheme": "mode", "logit_mean": 0.25,
    "logit_std": 1.25, "mode_scale": 1.5,
    # networks.lora_flux's network_args
    "train_blocks": "double", "train_t5xxl": True, "split_qkv": True, "img_attn_dim": 8,
    "txt_attn_dim": 0, "img_mlp_dim": 2, "txt_mlp_dim": 3, "img_mod_dim": 5, "txt_mod_dim": 6,
    "single_dim": 7, "single_mod_dim": 0, "in_dims": [4, 0, 0, 0, 2],
    "train_double_block_indices": "0,2-4", "train_single_block_indices": "none",
    "network_reg_dims": "txt_mlp=8,single_blocks_(1|2)_=0"}
# How sd-scripts is given them: as network_args.
LORA_FLUX_NETWORK_ARGS = [
    "train_blocks=double", "train_t5xxl=True", "split_qkv=True", "img_attn_dim=8",
    "txt_attn_dim=0", "img_mlp_dim=2", "txt_mlp_dim=3", "img_mod_dim=5", "txt_mod_dim=6",
    "single_dim=7", "single_mod_dim=0", "in_dims=[4,0,0,0,2]",
    "train_double_block_indices=0,2-4", "train_single_block_indices=none",
    "network_reg_dims=txt_mlp=8,single_blocks_(1|2)_=0"]


def test_flux_profile_round_trip_keeps_every_flux_field(tmp_path):
    from lora_core.families.flux.builtin import CHROMA_FILE, DIT_FILE, ensure_tiny_flux
    from lora_core.importing.sd_scripts_args import options_of

    defaults = {f.name: f.default for f in dataclasses.fields(SECTIONS["flux"])}
    assert set(FLUX_CHANGED) == set(defaults)
    assert all(FLUX_CHANGED[k] != defaults[k] for k in defaults)
    folder = ensure_tiny_flux()
    (tmp_path / "train" / "10_hero").mkdir(parents=True)
    data = {"profile_version": 1, "model": {"pretrained_model_name_or_path":
                                            str(folder / DIT_FILE)},
            "flux": FLUX_CHANGED, "dataset": {"train_data_dir": str(tmp_path / "train")},
            "network": {"network_train_unet_only": True},
            # the Flux-only options outside [flux] (FLUX_ONLY_OPTIONS)
            "training": {"blocks_to_swap": 4, "gradient_checkpointing": True},
            "saving": {"output_dir": str(tmp_path / "out")}}
    original, problems = read_profile(data, tmp_path)
    assert [p.text() for p in problems if p.severity == "error"] == []
    export_sd_scripts(original, tmp_path / "export")
    command = (tmp_path / "export" / "command.sh").read_text()
    assert " flux_train_network.py " in command
    assert "--network_module=networks.lora_flux" in command
    config = tomllib.loads((tmp_path / "export" / "config.toml").read_text())
    assert set(config["lora_train_export"]) <= options_of("flux_train_network.py")
    assert config["lora_train_export"]["network_args"] == LORA_FLUX_NETWORK_ARGS
    assert "in_dims=[4,0,0,0,2]" in command
    for source in ("command.sh", "command.bat", "config.toml"):
        result = import_source(tmp_path / "export" / source)
        assert UNKNOWN not in statuses(result).values()
        back, problems = read_profile(result.data, tmp_path)
        assert [p.text() for p in problems if p.severity == "error"] == [], source
        assert back.flux == original.flux, source
        assert all(getattr(back.training, k) == getattr(original.training, k)
                   for k in FLUX_ONLY_OPTIONS if hasattr(original.training, k)), source
        assert back.training.blocks_to_swap == 4, source
        assert back.network.network_module == "LoRA"
    # A Chroma file with model_type unset: sd-scripts must be told (it assumes "flux").
    data["model"]["pretrained_model_name_or_path"] = str(folder / CHROMA_FILE)
    data["flux"] = {"apply_t5_attn_mask": True}
    chroma, _ = read_profile(data, tmp_path)
    export_sd_scripts(chroma, tmp_path / "chroma")
    assert "--model_type=chroma" in (tmp_path / "chroma" / "command.sh").read_text()


def test_a_flux_loras_metadata_lands_in_the_flux_section(tmp_path):
    import torch
    from safetensors.torch import save_file

    from lora_core.families.flux import metadata as flux_metadata
    from lora_core.families.flux.objective import FlowSettings

    settings = FlowSettings(timestep_sampling="shift", guidance_scale=1.0,
                            model_prediction_type="raw", discrete_flow_shift=3.1582)
    meta = {**flux_metadata.training_keys("dev", settings, True),
            "ss_network_module": "networks.lora_flux", "ss_network_dim": "4",
            "ss_network_alpha": "4", "ss_t5xxl_max_token_length": "256"}
    path = tmp_path / "flux-lora.safetensors"
    name = "lora_unet_double_blocks_0_img_attn_qkv"
    save_file({f"{name}.lora_down.weight": torch.zeros(4, 8),
               f"{name}.lora_up.weight": torch.zeros(24, 4)}, str(path), metadata=meta)
    got = fields(import_source(path))
    assert got[("network", "network_module")] == "LoRA"
    assert {k: got[("flux", k)] for k in ("timestep_sampling", "guidance_scale",
                                          "model_prediction_type", "discrete_flow_shift",
                                          "apply_t5_attn_mask", "t5xxl_max_token_length")} == {
        "timestep_sampling": "shift", "guidance_scale": 1.0, "model_prediction_type": "raw",
        "discrete_flow_shift": 3.1582, "apply_t5_attn_mask": True,
        "t5xxl_max_token_length": 256}


# --- issue 28: the half-precision LoRA levers -------------------------------------------------

def test_full_bf16_and_full_fp16_import_into_their_fields_and_export_as_flags(tmp_path):
    for precision in ("bf16", "fp16"):
        key = f"full_{precision}"
        result = import_source("posix", f"python train_network.py --mixed_precision {precision} "
                               f"--{key} --output_dir /out --train_data_dir /data")
        assert fields(result)[("training", key)] is True
        assert statuses(result)[key] == MAPPED
        (tmp_path / precision / "train" / "10_hero").mkdir(parents=True)
        data = {"profile_version": 1, "model": {"pretrained_model_name_or_path": "/m/sd15"},
                "dataset": {"train_data_dir": str(tmp_path / precision / "train")},
                "training": {"mixed_precision": precision, key: True},
                "saving": {"output_dir": str(tmp_path / precision / "out")}}
        original, problems = read_profile(data, tmp_path)
        assert [p.text() for p in problems if p.severity == "error"] == []
        export_sd_scripts(original, tmp_path / precision / "export")
        command = (tmp_path / precision / "export" / "command.sh").read_text()
        assert f"--{key} " in command or command.rstrip().endswith(f"--{key}")
        other = "full_fp16" if precision == "bf16" else "full_bf16"
        assert f"--{other}" not in command
        back = import_source(tmp_path / precision / "export" / "command.sh").data
        assert back["training"][key] is True and other not in back["training"]


def test_cpu_offload_checkpointing_is_exported_only_where_sd_scripts_takes_it():
    """sd-scripts' train_network.py calls unet.enable_gradient_checkpointing(cpu_offload=True),
    which its SD U-Nets do not take (TypeError after loading): for SD it is left out, by
    name; flux_train_network.py takes it."""
    from lora_core.importing.export import sd_scripts_options
    from lora_core.profile import Profile

    profile = Profile()
    profile.training.gradient_checkpointing = True
    profile.training.cpu_offload_checkpointing = True
    for name in ("sd1", "sd2", "sdxl"):
        options, left_out = sd_scripts_options(profile, name)
        assert "cpu_offload_checkpointing" not in dict(options)
        assert any(line.startswith("[training] cpu_offload_checkpointing = True: sd-scripts' "
                                   "SD 1.x / 2.x / SDXL U-Nets take no CPU offload")
                   for line in left_out)
    options, left_out = sd_scripts_options(profile, "flux")
    assert dict(options)["cpu_offload_checkpointing"] is True
    assert not any("cpu_offload_checkpointing" in line for line in left_out)
