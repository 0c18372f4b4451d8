"""`check` finds everything `run` would stop on before its first step (issue 13).

Each case is a profile that `run` refuses before training starts. For every one, `check`
exits non-zero and reports a typed problem at the field (or file) the case names, and `run`
exits non-zero before writing anything, with that same message. A sound profile passes both.

Both commands are called in-process (``lora_core.cli.main``), so torch is imported once for
the whole table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from lora_core.checks import check_profile
from lora_core.checks.problem import Problem
from lora_core.profile_load import read_profile_file
from tests.helpers.bad_inputs import Setup, make_setup, safetensors_bytes

Field = tuple[str, str]


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Setup], None]
    field: Field | None = None  # the [section] key the problem is about
    file: str | None = None  # or the file name it names


def _lora_file(s: Setup, name: str, keys: dict[str, tuple[int, ...]],
               metadata: dict[str, str] | None = None) -> None:
    (s.inputs / name).write_bytes(safetensors_bytes(keys, metadata))
    s.set("network", "network_weights", name)


SDXL_LORA = {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 32),
             "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": (32, 4),
             "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight": (4, 32),
             "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight": (32, 4)}
SD1_LORA = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down."
            "weight": (4, 32),
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up."
            "weight": (32, 4)}
LOHA = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.hada_w1_a":
        (32, 4),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.hada_w1_b": (4, 32)}


def _tokenizer_missing(s: Setup) -> None:
    from tests.helpers.ldm_export import write_single_file

    write_single_file("builtin:tiny-sd1", s.models / "model.safetensors", "sd1")
    s.set("model", "pretrained_model_name_or_path", "models/model.safetensors")


def _evil_ckpt(s: Setup) -> None:
    from tests.helpers.bad_inputs import ckpt_runs_code

    ckpt_runs_code(s)


def _subset_captions_vary(s: Setup) -> None:
    config = {"datasets": [{"subsets": [{"image_dir": "data/2_tok thing", "num_repeats": 2,
                                         "shuffle_caption": True}]}]}
    (s.inputs / "datasets.json").write_text(json.dumps(config), encoding="utf-8")
    del s.profile["dataset"]["train_data_dir"]
    s.set("dataset", "dataset_config", "datasets.json")
    s.set("dataset", "cache_text_encoder_outputs", True)
    s.set("network", "network_train_unet_only", True)


def _output_is_a_file(s: Setup) -> None:
    (s.root / "out").write_text("not a folder")


def _output_below_a_file(s: Setup) -> None:
    (s.root / "blocker").write_text("a file")
    s.set("saving", "output_dir", "../blocker/out")


def _write(name: str, data: bytes | str) -> Callable[[Setup], None]:
    """A file among the inputs."""
    def build(s: Setup) -> None:
        target = s.inputs / name
        target.write_bytes(data) if isinstance(data, bytes) else target.write_text(data)
    return build


def _set(section: str, key: str, value) -> Callable[[Setup], None]:
    return lambda s: s.set(section, key, value)


def _sdxl_model(s: Setup) -> None:
    s.set("model", "pretrained_model_name_or_path", "builtin:tiny-sdxl")


def _both(*builds: Callable[[Setup], None]) -> Callable[[Setup], None]:
    def build(s: Setup) -> None:
        for b in builds:
            b(s)
    return build


def _flux(**files: str | None) -> Callable[[Setup], None]:
    """A Flux profile of the tiny built-in's four files, as a user has them (paths and
    sd-scripts' tokenizer folders); ``files`` replace any of them (None: left empty)."""
    def build(s: Setup) -> None:
        import shutil

        from lora_core.families.flux import builtin as tiny

        folder = tiny.ensure_tiny_flux()
        tokens = s.models / "tok"
        if not tokens.exists():
            shutil.copytree(folder / tiny.CLIP_TOKENIZER_DIR,
                            tokens / "openai_clip-vit-large-patch14")
            shutil.copytree(folder / tiny.T5_TOKENIZER_DIR, tokens / "google_t5-v1_1-xxl")
        s.set("model", "pretrained_model_name_or_path", str(folder / tiny.DIT_FILE))
        s.set("model", "tokenizer_cache_dir", str(tokens))
        given = {"ae": str(folder / tiny.AE_FILE), "clip_l": str(folder / tiny.CLIP_L_FILE),
                 "t5xxl": str(folder / tiny.T5_FILE), **files}
        for key, value in given.items():
            if value is not None:
                s.set("flux", key, value)
    return build


def _sd_checkpoint_as(key: str) -> Callable[[Setup], None]:
    def build(s: Setup) -> None:
        from tests.helpers.ldm_export import write_single_file

        write_single_file("builtin:tiny-sd1", s.models / "sd15.safetensors", "sd1")
        s.set("flux", key, "models/sd15.safetensors")
    return build


def _no_t5_tokenizer(s: Setup) -> None:
    import shutil

    shutil.rmtree(s.models / "tok" / "google_t5-v1_1-xxl")


CASES = (
    # the five the issue found passing `check`
    Case("output-dir-is-a-file", _output_is_a_file, ("saving", "output_dir")),
    Case("output-dir-below-a-file", _output_below_a_file, ("saving", "output_dir")),
    Case("fp16-without-cuda", _set("training", "mixed_precision", "fp16"),
         ("training", "mixed_precision")),
    Case("sdxl-lora-on-sd1", lambda s: _lora_file(s, "xl.safetensors", SDXL_LORA),
         ("network", "network_weights")),
    Case("sd1-lora-on-sdxl", _both(_sdxl_model, lambda s: _lora_file(
        s, "v1.safetensors", SD1_LORA, {"ss_base_model_version": "sd_v1"})),
        ("network", "network_weights")),
    Case("optimizer-args-one-beta", _set("optimizer", "optimizer_args", ["betas=0.9"]),
         ("optimizer", "optimizer_args")),
    Case("single-file-without-tokenizer", _tokenizer_missing, ("model", "tokenizer_cache_dir")),
    # optimizer and learning rates
    Case("optimizer-arg-unknown", _set("optimizer", "optimizer_args", ["weight_decai=0.1"]),
         ("optimizer", "optimizer_args")),
    Case("optimizer-arg-flag-not-bool", _both(
        _set("optimizer", "optimizer_type", "Prodigy"), _set("optimizer", "learning_rate", 1.0),
        _set("optimizer", "optimizer_args", "decouple=0.5")), ("optimizer", "optimizer_args")),
    Case("optimizer-args-sd-scripts-form-bad", _set("optimizer", "optimizer_args",
                                                    "weight_decay=0.1 betas=0.9"),
         ("optimizer", "optimizer_args")),
    Case("optimizer-lr-in-args", _set("optimizer", "optimizer_args", ["lr=0.1"]),
         ("optimizer", "optimizer_args")),
    Case("dadapt-two-rates", _both(_set("optimizer", "optimizer_type", "DAdaptAdam"),
                                   _set("optimizer", "learning_rate", 1.0),
                                   _set("optimizer", "text_encoder_lr", 0.5)),
         ("optimizer", "learning_rate")),
    Case("every-rate-zero", _set("optimizer", "learning_rate", 0.0),
         ("optimizer", "learning_rate")),
    # start weights
    Case("lora-rank-differs", _both(lambda s: _lora_file(s, "r.safetensors", SD1_LORA),
                                    _set("network", "network_dim", 8)),
         ("network", "network_dim")),
    Case("lora-type-differs", lambda s: _lora_file(s, "h.safetensors", LOHA),
         ("network", "network_module")),
    Case("lora-not-kohya", lambda s: _lora_file(s, "x.safetensors", {"weight": (2, 2)}),
         ("network", "network_weights")),
    Case("lora-truncated", _both(_write("cut.safetensors", safetensors_bytes(SD1_LORA)[:-40]),
                                 _set("network", "network_weights", "cut.safetensors")),
         ("network", "network_weights")),
    # the model and what loading it needs
    Case("vae-missing", _set("model", "vae", "no_vae.safetensors"), ("model", "vae")),
    Case("vae-is-not-a-vae", _both(_write("lora.safetensors", safetensors_bytes(SD1_LORA)),
                                   _set("model", "vae", "lora.safetensors")), ("model", "vae")),
    Case("ckpt-runs-code", _evil_ckpt, ("model", "pretrained_model_name_or_path"),
         file="evil.ckpt"),
    Case("v2-on-sd1", _set("model", "v2", True), ("model", "v2")),
    Case("bucket-steps-32-on-sd1", _set("dataset", "bucket_reso_steps", 32),
         ("dataset", "bucket_reso_steps")),
    Case("block-dims-for-sd1-on-sdxl", _both(_sdxl_model, _set(
        "network", "block_dims", ",".join(["4"] * 25))), ("network", "block_dims")),
    # dataset and samples
    Case("text-cache-with-varying-subset", _subset_captions_vary,
         ("dataset", "cache_text_encoder_outputs")),
    Case("undecodable-image", lambda s: (s.concept / "img0.png").write_bytes(b"junk" * 50),
         file="img0.png"),
    Case("caption-not-utf8", lambda s: (s.concept / "img0.txt").write_bytes(b"caf\xe9, \xff"),
         file="img0.txt"),
    Case("train-dir-missing", _set("dataset", "train_data_dir", "nothing_here"),
         ("dataset", "train_data_dir")),
    Case("output-inside-dataset", _set("saving", "output_dir", "data/out"),
         ("saving", "output_dir")),
    Case("prompt-file-bad-option", _both(_write("p.txt", "a cube --w wide\n"),
                                         _set("sample", "sample_prompts", "p.txt")),
         ("sample", "sample_prompts")),
    Case("prompt-file-missing", _both(_set("sample", "sample_prompts", "gone.txt"),
                                      _set("sample", "sample_every_n_steps", 1)),
         ("sample", "sample_prompts")),
    # read with the profile
    Case("unknown-key", _set("network", "network_dimm", 8), ("network", "network_dimm")),
    Case("cache-latents-with-color-aug", _both(_set("dataset", "cache_latents", True),
                                               _set("dataset", "color_aug", True)),
         ("dataset", "color_aug")),
    # Flux: each of the four files, the tokenizers, and what Flux cannot take
    Case("flux-ae-missing", _flux(ae="models/no_ae.safetensors"), ("flux", "ae")),
    Case("flux-clip-l-empty", _flux(clip_l=None), ("flux", "clip_l")),
    Case("flux-sd-checkpoint-as-t5xxl", _both(_flux(), _sd_checkpoint_as("t5xxl")),
         ("flux", "t5xxl")),
    Case("flux-lora-as-clip-l", _both(_flux(), _write("l.safetensors",
                                                      safetensors_bytes(SD1_LORA)),
                                      _set("flux", "clip_l", "l.safetensors")),
         ("flux", "clip_l")),
    Case("flux-t5-tokenizer-missing", _both(_flux(), _no_t5_tokenizer),
         ("model", "tokenizer_cache_dir")),
    Case("flux-fp16-without-cuda", _both(_flux(), _set("training", "mixed_precision", "fp16")),
         ("training", "mixed_precision")),
    Case("flux-min-snr-gamma", _both(_flux(), _set("training", "min_snr_gamma", 5.0)),
         ("training", "min_snr_gamma")),
    Case("flux-blocks-to-swap-without-checkpointing",
         _both(_flux(), _set("training", "blocks_to_swap", 1)),
         ("training", "blocks_to_swap")),
    Case("flux-key-on-sd1", _set("flux", "guidance_scale", 1.0), ("flux", "guidance_scale")),
)


def _errors(profile_path: Path) -> list[Problem]:
    """What `check` finds, as values."""
    profile, problems = read_profile_file(profile_path)
    if not any(p.is_error for p in problems):
        problems = problems + check_profile(profile).problems
    return [p for p in problems if p.is_error]


def _about(problem: Problem, case: Case) -> bool:
    if case.field is not None and problem.field != case.field:
        return False
    return case.file is None or case.file in problem.message or case.file in (problem.path or "")


def test_the_table_is_large_and_distinct():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_check_reports_what_run_stops_on(case: Case, tmp_path: Path, cli) -> None:
    setup = make_setup(tmp_path)
    case.build(setup)
    setup.write()
    found = [p for p in _errors(setup.profile_path) if _about(p, case)]
    assert found, f"no problem at {case.field} / {case.file}: {_errors(setup.profile_path)}"

    code, out, err = cli("check", str(setup.profile_path))
    assert code == 2, out + err
    assert found[0].message.splitlines()[0] in " ".join((out + err).split()) \
        or found[0].message.splitlines()[0] in out + err

    code, out, err = cli("run", str(setup.profile_path), "--no-progress")
    assert code != 0 and code != 130, out + err
    assert "Traceback" not in err and "internal error" not in err, err
    assert found[0].message.splitlines()[0] in err, f"run said something else:\n{err}"
    # stopped before anything heavy: no run folder, no LoRA file
    out_dir = tmp_path / "out"
    assert not list(out_dir.rglob("*.safetensors")) if out_dir.is_dir() else True
    assert not (out_dir / "runs").exists() if out_dir.is_dir() else True


def test_a_sound_profile_passes_check_and_trains(tmp_path: Path, cli) -> None:
    setup = make_setup(tmp_path)
    setup.set("training", "max_train_steps", 1)
    setup.write()
    assert _errors(setup.profile_path) == []
    code, out, err = cli("check", str(setup.profile_path))
    assert code == 0 and "Problems (0)" in out, out + err
    code, out, err = cli("run", str(setup.profile_path), "--no-progress")
    assert code == 0, out + err
    assert (tmp_path / "out" / "corpus.safetensors").is_file()
