"""`check` on Flux.1 / Chroma profiles (issue 27): the model recognised as Flux, every wrong
or missing file and tokenizer at the field it names (the resolution ``run`` loads from), SD
options refused for Flux and ``[flux]`` values refused for SD, with nothing written.

The files are the built-in tiny Flux's (``ensure_tiny_flux``, built once per test session
into the session cache) copied under the names users have.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lora_core.checks import check_profile
from lora_core.errors import ModelError
from lora_core.families.flux import builtin as tiny
from lora_core.families.sd.loading import load_model
from lora_core.models.loading import inspect_model, inspect_vae
from tests.core.dataset_helpers import make_folder, profile_for, snapshot

CLIP_TOKENIZER = "openai_clip-vit-large-patch14"  # sd-scripts' folder names
T5_TOKENIZER = "google_t5-v1_1-xxl"


@pytest.fixture(scope="module")
def built() -> Path:
    return tiny.ensure_tiny_flux()


@pytest.fixture(scope="module")
def user_files(built, tmp_path_factory) -> Path:
    """The four files as a user has them, the two tokenizers in sd-scripts' layout, a
    schnell file (dev without guidance_in), an SD 1.x checkpoint and a Flux LoRA."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("flux-user")
    for source, name in ((tiny.DIT_FILE, "flux1-dev.safetensors"),
                         (tiny.CHROMA_FILE, "chroma.safetensors"),
                         (tiny.AE_FILE, "ae.safetensors"), (tiny.CLIP_L_FILE, "clip_l.safetensors"),
                         (tiny.T5_FILE, "t5xxl_fp16.safetensors")):
        shutil.copy(built / source, folder / name)
    shutil.copytree(built / tiny.CLIP_TOKENIZER_DIR, folder / "tok" / CLIP_TOKENIZER)
    shutil.copytree(built / tiny.T5_TOKENIZER_DIR, folder / "tok" / T5_TOKENIZER)
    dev = load_file(str(built / tiny.DIT_FILE))
    save_file({k: v for k, v in dev.items() if not k.startswith("guidance_in.")},
              str(folder / "flux1-schnell.safetensors"))
    save_file({f"model.diffusion_model.{k}": v for k, v in dev.items()},
              str(folder / "flux1-dev-comfy.safetensors"))
    from lora_core.families.flux.diffusers_layout import convert_bfl_to_diffusers

    save_file(convert_bfl_to_diffusers(dev, tiny.TINY_CONFIG.hidden_size),
              str(folder / "flux1-dev-diffusers.safetensors"))
    lora = {}
    for name in ("lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_0_linear1"):
        lora[f"{name}.lora_down.weight"] = dev["img_in.weight"][:4, :].clone()
        lora[f"{name}.lora_up.weight"] = dev["img_in.weight"][:, :4].clone()
        lora[f"{name}.alpha"] = dev["img_in.weight"].new_tensor(4.0)
    save_file(lora, str(folder / "flux-lora.safetensors"))
    from lora_core.models.builtin import ensure_builtin
    from tests.helpers.ldm_export import write_single_file

    write_single_file(ensure_builtin("tiny-sd1"), folder / "sd15.safetensors", "sd1")
    return folder


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_folder(tmp_path / "train", "2_tok", 2).parent


def flux_profile(dataset: Path, model: str, **flux: object):
    profile = profile_for(dataset, resolution=64, min_bucket_reso=64, max_bucket_reso=64,
                          mixed_precision="no", max_train_steps=2)
    profile.model.pretrained_model_name_or_path = model
    for key, value in flux.items():
        setattr(profile.flux, key, str(value) if isinstance(value, Path) else value)
    return profile


def user_profile(dataset: Path, files: Path, dit: str = "flux1-dev.safetensors", **flux):
    """A profile of the user's files; ``flux`` replaces any of them (None: left empty)."""
    given = {"ae": files / "ae.safetensors", "clip_l": files / "clip_l.safetensors",
             "t5xxl": files / "t5xxl_fp16.safetensors", **flux}
    profile = flux_profile(dataset, str(files / dit),
                           **{k: v for k, v in given.items() if v is not None})
    profile.model.tokenizer_cache_dir = str(files / "tok")
    return profile


def errors_at(profile) -> dict[tuple[str, str] | None, list[str]]:
    found: dict = {}
    for problem in check_profile(profile).errors:
        found.setdefault(problem.field, []).append(problem.text())
    return found


# --- the model is recognised as Flux --------------------------------------------------------

def test_flux_files_and_builtins_are_flux_models(user_files, built):
    for name, variant in (("flux1-dev.safetensors", "dev"), ("flux1-schnell.safetensors",
                                                            "schnell"),
                          ("chroma.safetensors", "chroma"), ("flux1-dev-comfy.safetensors",
                                                             "dev"),
                          ("flux1-dev-diffusers.safetensors", "dev")):
        source = inspect_model(str(user_files / name), user_files)
        assert (source.family, source.kind) == ("flux", "single_file"), name
        assert f"Flux.1 {variant}" in source.summary, (name, source.summary)
    for name in ("tiny-flux", "tiny-chroma"):
        source = inspect_model(f"builtin:{name}", Path.cwd())
        assert (source.family, source.path) == ("flux", built)
    from lora_core.models.builtin import BUILTIN_FAMILIES, builtin_folder, ensure_builtin

    assert {n for n, f in BUILTIN_FAMILIES.items() if f == "flux"} == set(tiny.BUILTIN_FLUX)
    assert ensure_builtin("tiny-chroma") == builtin_folder("tiny-flux") == built
    with pytest.raises(ModelError, match="Flux.1 model"):  # the family's loader loads it
        load_model("builtin:tiny-flux", Path.cwd())


def test_flux_parts_are_named_where_an_sd_model_or_vae_is_wanted(user_files):
    for name, words in (("t5xxl_fp16.safetensors", "T5 text encoder"),
                        ("clip_l.safetensors", "CLIP text encoder"),
                        ("ae.safetensors", "16 latent channels")):
        with pytest.raises(ModelError, match=words) as caught:
            inspect_model(str(user_files / name), user_files)
        assert "[flux]" in caught.value.message
    for name in ("ae.safetensors", "flux1-dev.safetensors"):
        with pytest.raises(ModelError, match="not an SD VAE"):
            inspect_vae(str(user_files / name), user_files)


def test_a_diffusers_flux_folder_asks_for_the_single_files(tmp_path):
    (tmp_path / "FLUX.1-dev").mkdir()
    (tmp_path / "FLUX.1-dev" / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    with pytest.raises(ModelError, match="FluxPipeline") as caught:
        inspect_model(str(tmp_path / "FLUX.1-dev"), tmp_path)
    assert "[flux]" in caught.value.hint


# --- check: the four files and the tokenizers, at their fields ------------------------------

def test_the_builtins_and_the_users_files_pass(dataset, user_files):
    assert errors_at(flux_profile(dataset, "builtin:tiny-flux")) == {}
    assert errors_at(flux_profile(dataset, "builtin:tiny-chroma",
                                  apply_t5_attn_mask=True)) == {}
    assert errors_at(user_profile(dataset, user_files)) == {}
    assert errors_at(user_profile(dataset, user_files, "chroma.safetensors", clip_l=None,
                                  apply_t5_attn_mask=True)) == {}


@pytest.mark.parametrize(("flux", "field", "words"), [
    ({"ae": None}, ("flux", "ae"), "needs the autoencoder"),
    ({"ae": "missing/ae.safetensors"}, ("flux", "ae"), "does not exist"),
    ({"t5xxl": "sd15.safetensors"}, ("flux", "t5xxl"), "Stable Diffusion checkpoint"),
    ({"clip_l": "flux-lora.safetensors"}, ("flux", "clip_l"), "LoRA file"),
    ({"ae": "t5xxl_fp16.safetensors"}, ("flux", "ae"), "T5 text encoder"),
    ({"model_type": "chroma"}, ("flux", "model_type"), "Flux.1 dev"),
], ids=["no-ae", "missing-ae", "sd-checkpoint-as-t5xxl", "lora-as-clip_l", "t5-as-ae",
        "model_type"])
def test_a_wrong_or_missing_file_is_named_at_its_field(dataset, user_files, flux, field, words):
    flux = {k: (user_files / v if isinstance(v, str) and k != "model_type" else v)
            for k, v in flux.items()}
    found = errors_at(user_profile(dataset, user_files, **flux))
    assert list(found) == [field], found
    assert words in found[field][0]


def test_chroma_rules(dataset, user_files):
    chroma = "chroma.safetensors"
    found = errors_at(user_profile(dataset, user_files, chroma, apply_t5_attn_mask=True))
    assert list(found) == [("flux", "clip_l")] and "Chroma has no CLIP-L" in found[
        ("flux", "clip_l")][0]
    found = errors_at(user_profile(dataset, user_files, chroma, clip_l=None))
    assert list(found) == [("flux", "apply_t5_attn_mask")]
    found = errors_at(flux_profile(dataset, "builtin:tiny-chroma"))
    assert list(found) == [("flux", "apply_t5_attn_mask")]


def test_schnell_and_chroma_guidance_and_t5_length_as_sd_scripts_takes_them(dataset,
                                                                            user_files):
    """schnell ignores a guidance value and takes longer T5 windows (256 is its default
    only); Chroma is trained with guidance 0.0 (sd-scripts requires it): unset gives it, any
    other value is refused at its field."""
    schnell = "flux1-schnell.safetensors"
    assert errors_at(user_profile(dataset, user_files, schnell, guidance_scale=1.0,
                                  t5xxl_max_token_length=512)) == {}
    chroma = {"clip_l": None, "apply_t5_attn_mask": True}
    assert errors_at(user_profile(dataset, user_files, "chroma.safetensors", **chroma)) == {}
    found = errors_at(user_profile(dataset, user_files, "chroma.safetensors",
                                   guidance_scale=3.5, **chroma))
    assert list(found) == [("flux", "guidance_scale")]
    assert "trained with guidance 0.0" in found[("flux", "guidance_scale")][0]


def test_a_missing_tokenizer_names_tokenizer_cache_dir_and_the_download(dataset, user_files,
                                                                       tmp_path):
    only_clip = tmp_path / "tok"
    shutil.copytree(user_files / "tok" / CLIP_TOKENIZER, only_clip / CLIP_TOKENIZER)
    profile = user_profile(dataset, user_files)
    profile.model.tokenizer_cache_dir = str(only_clip)
    found = errors_at(profile)
    assert list(found) == [("model", "tokenizer_cache_dir")]
    assert "hf download google/t5-v1_1-xxl" in found[("model", "tokenizer_cache_dir")][0]
    profile.model.tokenizer_cache_dir = str(tmp_path / "empty")
    found = errors_at(profile)
    assert list(found) == [("model", "tokenizer_cache_dir")]
    assert "openai/clip-vit-large-patch14" in found[("model", "tokenizer_cache_dir")][0]


# --- options of the other family ------------------------------------------------------------

# A value someone would set for each option the Flux check refuses (the two lists in
# families/flux/checks.py); an option added to either list needs its value here.
SET_VALUES = {
    ("model", "v2"): True, ("model", "v_parameterization"): True,
    ("model", "vae"): "vae.safetensors", ("model", "clip_skip"): 2,
    ("model", "no_half_vae"): True, ("dataset", "max_token_length"): 225,
    ("dataset", "weighted_captions"): True, ("dataset", "alpha_mask"): True,
    ("dataset", "cache_text_encoder_outputs_to_disk"): True,
    ("training", "min_snr_gamma"): 5.0, ("training", "scale_v_pred_loss_like_noise_pred"): True,
    ("training", "v_pred_like_loss"): 0.1, ("training", "debiased_estimation_loss"): True,
    ("training", "zero_terminal_snr"): True, ("training", "noise_offset"): 0.05,
    ("training", "noise_offset_random_strength"): True,
    ("training", "adaptive_noise_scale"): 0.01, ("training", "multires_noise_iterations"): 6,
    ("training", "multires_noise_discount"): 0.5, ("training", "ip_noise_gamma"): 0.1,
    ("training", "ip_noise_gamma_random_strength"): True, ("training", "min_timestep"): 10,
    ("training", "max_timestep"): 900, ("training", "loss_type"): "huber",
    ("training", "masked_loss"): True, ("training", "validation_split"): 0.2,
    ("network", "network_module"): "LoHa", ("network", "dora_wd"): True,
    ("network", "conv_dim"): 4, ("network", "conv_alpha"): 2.0,
    ("network", "block_dims"): ",".join(["4"] * 25),
    ("network", "block_alphas"): ",".join(["2"] * 25),
    ("network", "conv_block_dims"): ",".join(["4"] * 25),
    ("network", "conv_block_alphas"): ",".join(["2"] * 25),
    ("network", "base_weights"): ["base.safetensors"],
    ("network", "base_weights_multiplier"): [0.5],
    ("optimizer", "down_lr_weight"): ",".join(["1"] * 12), ("optimizer", "mid_lr_weight"): "0.5",
    ("optimizer", "up_lr_weight"): ",".join(["1"] * 12),
    ("optimizer", "block_lr_zero_threshold"): 0.1, ("sample", "sample_prompts"): "prompts.txt",
}


def test_sd_options_are_refused_for_flux_by_field(dataset):
    from lora_core.families.flux.checks import MEANINGLESS_FOR_FLUX, NOT_WIRED_FOR_FLUX

    refused = {**MEANINGLESS_FOR_FLUX, **NOT_WIRED_FOR_FLUX}
    assert set(refused) <= set(SET_VALUES), set(refused) - set(SET_VALUES)
    for (section, key), value in SET_VALUES.items():
        if (section, key) not in refused:
            continue  # wired for Flux since
        profile = flux_profile(dataset, "builtin:tiny-flux")
        setattr(getattr(profile, section), key, value)
        found = errors_at(profile)
        assert (section, key) in found, (section, key, found)
        text = next(t for t in found[(section, key)] if "Flux" in t)
        assert refused[(section, key)] in text
    for (section, key), words in ((("training", "min_snr_gamma"), "min-SNR"),
                                  (("training", "noise_offset"), "not for flow matching"),
                                  (("network", "network_module"), "LyCORIS")):
        assert words in refused[(section, key)]
    assert errors_at(flux_profile(dataset, "builtin:tiny-flux")) == {}  # none set: no error
    from lora_core.families.flux.checks import FLUX_ACCEPTS

    for (section, key), values in FLUX_ACCEPTS.items():  # values Flux takes (l1 loss)
        for value in values:
            profile = flux_profile(dataset, "builtin:tiny-flux")
            setattr(getattr(profile, section), key, value)
            assert (section, key) not in errors_at(profile), (section, key, value)


def test_a_fixed_flux_resolution_is_a_multiple_of_16(dataset):
    profile = flux_profile(dataset, "builtin:tiny-flux")
    profile.dataset.enable_bucket = False
    from lora_core.values import Resolution

    profile.dataset.resolution = Resolution.parse("72")
    assert ("dataset", "resolution") in errors_at(profile)


def test_flux_values_are_refused_for_an_sd_model(dataset, user_files):
    profile = flux_profile(dataset, "builtin:tiny-sd1", guidance_scale=1.0,
                           ae=user_files / "ae.safetensors")
    found = errors_at(profile)
    assert set(found) == {("flux", "guidance_scale"), ("flux", "ae")}
    assert "only for Flux.1 models" in found[("flux", "ae")][0]
    assert errors_at(flux_profile(dataset, "builtin:tiny-sd1")) == {}


def test_lora_flux_network_args_are_refused_for_an_sd_model(dataset):
    from lora_core.profile_flux import LORA_FLUX_ARGS
    from lora_core.profile_load import read_profile

    args = ["train_blocks=single", "train_t5xxl=True", "split_qkv=True", "img_attn_dim=2",
            "txt_attn_dim=0", "img_mlp_dim=2", "txt_mlp_dim=2", "img_mod_dim=2",
            "txt_mod_dim=2", "single_dim=8", "single_mod_dim=0", "in_dims=[4,0,0,0,4]",
            "train_double_block_indices=0", "train_single_block_indices=none",
            "network_reg_dims=txt_mlp=8"]
    assert [a.partition("=")[0] for a in args] == list(LORA_FLUX_ARGS)  # every one
    profile, problems = read_profile({
        "model": {"pretrained_model_name_or_path": "builtin:tiny-sd1"},
        "dataset": {"train_data_dir": str(dataset)}, "saving": {"output_dir": "out"},
        "training": {"mixed_precision": "no"}, "network": {"network_args": args}})
    assert [p.text() for p in problems if p.severity == "error"] == []
    found = errors_at(profile)
    assert set(found) == {("flux", key) for key in LORA_FLUX_ARGS}
    assert "only for Flux.1 models, and the base model is" in found[("flux", "train_blocks")][0]


def test_lora_flux_block_indices_and_t5_training_are_checked(dataset, user_files):
    profile = user_profile(dataset, user_files, train_double_block_indices="0-2",
                           train_single_block_indices="1,x", train_t5xxl=True,
                           network_reg_dims="txt_mlp=8,img_(mod=0")
    profile.network.network_train_unet_only = True
    found = errors_at(profile)
    assert set(found) == {("flux", "train_double_block_indices"),
                          ("flux", "train_single_block_indices"), ("flux", "train_t5xxl"),
                          ("flux", "network_reg_dims")}
    assert "'img_(mod' is not a regular expression" in found[("flux", "network_reg_dims")][0]
    assert "outside 0-1 (the model has 2 such blocks)" in \
        found[("flux", "train_double_block_indices")][0]
    assert "'x' is not an index" in found[("flux", "train_single_block_indices")][0]
    assert "network_train_unet_only" in found[("flux", "train_t5xxl")][0]
    fine = user_profile(dataset, user_files, train_double_block_indices="0-1",
                        train_single_block_indices="none", train_t5xxl=True,
                        train_blocks="single", split_qkv=True, in_dims=(2, 0, 0, 0, 2),
                        network_reg_dims="txt_mlp=8, single_blocks_1_=0")
    assert errors_at(fine) == {}


def test_a_flux_lora_is_refused_as_an_sd_models_start_weights(dataset, user_files):
    profile = flux_profile(dataset, "builtin:tiny-sd1")
    profile.network.network_weights = str(user_files / "flux-lora.safetensors")
    found = errors_at(profile)
    assert list(found) == [("network", "network_weights")]
    assert "Flux.1" in found[("network", "network_weights")][0]


def test_lora_train_check_names_the_field_and_writes_nothing(tmp_path, user_files, cli):
    project = tmp_path / "project"  # (the cli fixture's state folder is tmp_path / "state")
    make_folder(project / "train", "2_tok", 2)
    profile = project / "flux.toml"
    profile.write_text(
        "profile_version = 1\n"
        f"[model]\npretrained_model_name_or_path = '{user_files / 'flux1-dev.safetensors'}'\n"
        f"tokenizer_cache_dir = '{user_files / 'tok'}'\n"
        f"[flux]\nclip_l = '{user_files / 'clip_l.safetensors'}'\n"
        f"t5xxl = '{user_files / 'sd15.safetensors'}'\n"
        "[dataset]\ntrain_data_dir = 'train'\nresolution = 64\nmin_bucket_reso = 64\n"
        "max_bucket_reso = 64\n[training]\nmixed_precision = 'no'\nmin_snr_gamma = 5\n"
        "[saving]\noutput_dir = 'out'\n", encoding="utf-8")
    before = snapshot(project)
    code, out, err = cli("check", str(profile))
    assert code != 0
    text = out + err
    assert "[flux] ae is empty" in text and "`[training] min_snr_gamma`" in text
    assert "Traceback" not in text
    assert snapshot(project) == before


# --- the memory levers: where each works, what each needs -----------------------------------

def test_memory_levers_are_refused_where_they_cannot_work(user_files, dataset, monkeypatch):
    sd = flux_profile(dataset, str(user_files / "sd15.safetensors"))
    sd.training.fp8_base = True
    sd.training.blocks_to_swap = 2
    sd.training.gradient_checkpointing = True
    found = errors_at(sd)
    assert ("training", "fp8_base") not in found  # SD U-Nets have it too (issue 28)
    assert "is for Flux.1 models; the base model is SD 1.x" in \
        " ".join(found[("training", "blocks_to_swap")])
    sd.network.network_module, sd.network.dora_wd = "LoCon", True
    assert "LyCORIS' LoCon (dora_wd) modules is not wired" in \
        " ".join(errors_at(sd)[("training", "fp8_base")])

    flux = user_profile(dataset, user_files)
    flux.training.fp8_base = True
    flux.training.blocks_to_swap = 1
    flux.training.cpu_offload_checkpointing = True
    found = errors_at(flux)
    assert ("training", "fp8_base") not in found  # the transformer has it
    assert "needs `gradient_checkpointing = true`" in \
        " ".join(found[("training", "blocks_to_swap")])
    assert "cannot be used with blocks_to_swap" in \
        " ".join(found[("training", "cpu_offload_checkpointing")])

    flux.training.gradient_checkpointing = True
    flux.training.cpu_offload_checkpointing = False
    (message,) = errors_at(flux)[("training", "blocks_to_swap")]
    assert "2 double and 2 single blocks" in message and "too small" in message

    flux.training.blocks_to_swap = None
    flux.training.cpu_offload_checkpointing = True
    assert errors_at(flux) == {}

    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "2.0.1+cu118" if name == "torch" else real(name))
    flux.training.fp8_base = True
    assert "needs torch 2.1 or later" in " ".join(errors_at(flux)[("training", "fp8_base")])
