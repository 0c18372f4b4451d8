"""Single-file checkpoints (A1111 / ComfyUI layout): family and architecture detection from
the safetensors header, bit-exact loading of SD1 / SD2 / SDXL through ``load_model``, the
errors for damaged or wrong files, the refused malicious pickle, the VAE override, the
offline tokenizer search order and the v-prediction hint.

The files are written from tiny diffusers models by the project's own exporter
(tests/helpers/ldm_export.py); detection tests use headers of the full-size architectures
built on the meta device. Nothing touches the network or the home directory.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_core.errors import ModelError
from lora_core.families.sd import checkpoint as ckpt
from lora_core.families.sd.loading import load_model
from lora_core.models.builtin import ensure_builtin
from lora_core.models.headers import read_header
from lora_core.models.loading import describe_model, inspect_model
from lora_core.models.prediction import prediction_warning
from lora_core.models.tokenizer_gen import write_tokenizer
from lora_core.models.tokenizers import CLIP_G, CLIP_L, SD2, find_tokenizer
from tests.helpers.ldm_export import checkpoint_state_dict, write_single_file
from tests.helpers.tiny_models import full_size_meta, tiny_sd2_folder

PARTS = {"sd1": ("unet", "vae", "text_encoder"), "sd2": ("unet", "vae", "text_encoder"),
         "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2")}


@pytest.fixture(autouse=True)
def _private(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("LORA_TUI_CACHE_DIR", str(root / "cache"))
    monkeypatch.setenv("HF_HOME", str(root / "empty-hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"sd1": ensure_builtin("tiny-sd1", root / "cache"),
            "sd2": tiny_sd2_folder(root), "sdxl": ensure_builtin("tiny-sdxl", root / "cache")}


def _source_state(folder: Path, part: str) -> dict[str, torch.Tensor]:
    name = "model.safetensors" if part.startswith("text_encoder") else \
        "diffusion_pytorch_model.safetensors"
    state = load_file(str(folder / part / name))
    return {k.removeprefix("text_model."): v for k, v in state.items()}


def _loaded_state(bundle, part: str) -> dict[str, torch.Tensor]:
    model = {"unet": bundle.unet, "vae": bundle.vae, "text_encoder": bundle.text_encoders[0],
             "text_encoder_2": bundle.text_encoders[-1]}[part]
    return {k.removeprefix("text_model."): v for k, v in model.state_dict().items()
            if not k.endswith("position_ids")}


def _assert_identical(folder: Path, bundle, family: str, dtype: torch.dtype,
                      vae_dtype: torch.dtype) -> None:
    for part in PARTS[family]:
        source, loaded = _source_state(folder, part), _loaded_state(bundle, part)
        assert source.keys() == loaded.keys(), part
        want = vae_dtype if part == "vae" else dtype
        for key, value in source.items():
            got = loaded[key]
            assert got.dtype == want, (part, key)
            if family == "sd2" and part == "unet" and key.endswith(("proj_in.weight",
                                                                     "proj_out.weight")):
                assert got.ndim == 4 and value.ndim == 2  # sd-scripts' 1x1 conv (§6.1)
                value = value[:, :, None, None]
            assert torch.equal(got, value.to(want)), (part, key)


# --- loading --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_loads_bit_identical(folders: dict[str, Path], tmp_path: Path,
                                         family: str, suffix: str) -> None:
    folder = folders[family]
    path = write_single_file(folder, tmp_path / f"model{suffix}", family)
    bundle = load_model(path.name, tmp_path, torch.float32, tokenizer_dir=str(folder /
                                                                                "tokenizer"))
    assert bundle.family == family and bundle.model_file == path
    assert bundle.model_name == path.name
    assert len(bundle.text_encoders) == len(bundle.tokenizers) == (2 if family == "sdxl"
                                                                  else 1)
    assert bundle.vae_scaling_factor == (0.13025 if family == "sdxl" else 0.18215)
    _assert_identical(folder, bundle, family, torch.float32, torch.float32)
    assert not any(p.is_meta for p in bundle.unet.parameters())
    assert not any(b.is_meta for m in bundle.text_encoders for b in m.buffers())


def test_bf16_load_keeps_no_float32_copy_and_honours_vae_dtype(folders: dict[str, Path],
                                                               tmp_path: Path) -> None:
    folder = folders["sd1"]
    path = write_single_file(folder, tmp_path / "m.safetensors", "sd1")
    bundle = load_model(str(path), tmp_path, torch.bfloat16, vae_dtype=torch.float32,
                        tokenizer_dir=folder / "tokenizer", v_parameterization=True)
    _assert_identical(folder, bundle, "sd1", torch.bfloat16, torch.float32)
    dtypes = {p.dtype for m in (bundle.unet, *bundle.text_encoders) for p in m.parameters()}
    assert dtypes == {torch.bfloat16}
    assert bundle.prediction_type == "v_prediction"
    assert bundle.noise_scheduler.config.prediction_type == "v_prediction"
    assert bundle.noise_scheduler.config.beta_schedule == "scaled_linear"


def test_sd2_text_encoder_drops_the_last_openclip_block(folders: dict[str, Path],
                                                         tmp_path: Path) -> None:
    folder = folders["sd2"]
    path = write_single_file(folder, tmp_path / "sd2.safetensors", "sd2")
    shapes, _ = read_header(path)
    blocks = ckpt._count(list(shapes), f"{ckpt.SD2_TE_PREFIX}transformer.resblocks.")
    bundle = load_model(str(path), tmp_path, tokenizer_dir=folder / "tokenizer")
    config = json.loads((folder / "text_encoder" / "config.json").read_text())
    assert bundle.text_encoders[0].config.num_hidden_layers == config["num_hidden_layers"]
    assert blocks == config["num_hidden_layers"] + 1
    assert bundle.text_encoders[0].config.hidden_act == "gelu"


# --- detection from headers -----------------------------------------------------------------


def _fake_header_file(path: Path, shapes: dict[str, tuple[int, ...]],
                      metadata: dict[str, str] | None = None) -> Path:
    """A .safetensors file with the given shapes and no data (enough for the header)."""
    header: dict = {k: {"dtype": "F16", "shape": list(s), "data_offsets": [0, 0]}
                    for k, s in shapes.items()}
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


@pytest.fixture(scope="module")
def full_headers() -> dict[str, dict[str, tuple[int, ...]]]:
    headers = {}
    for family in ("sd1", "sd2", "sdxl"):
        state = checkpoint_state_dict(full_size_meta(family), family)
        headers[family] = {k: tuple(v.shape) for k, v in state.items()}
    return headers


@pytest.mark.parametrize("family,expected", [
    ("sd1", dict(mult=(1, 2, 4, 4), depth=(1, 1, 1, 0), mid=1, context=768, linear=False,
                 adm=None, te=[("clip", 768, 12)])),
    ("sd2", dict(mult=(1, 2, 4, 4), depth=(1, 1, 1, 0), mid=1, context=1024, linear=True,
                 adm=None, te=[("open_clip", 1024, 23)])),
    ("sdxl", dict(mult=(1, 2, 4), depth=(0, 2, 10), mid=10, context=2048, linear=True,
                  adm=2816, te=[("clip", 768, 12), ("open_clip", 1280, 32)])),
])
def test_full_size_architecture_from_header(full_headers, tmp_path: Path, family: str,
                                            expected: dict) -> None:
    path = _fake_header_file(tmp_path / f"{family}.safetensors", full_headers[family])
    arch = ckpt.read_architecture(read_header(path)[0], path)
    u = arch.unet
    assert arch.family == family and u.model_channels == 320 and u.layers_per_block == 2
    assert (u.channel_mult, u.transformer_depth, u.mid_depth, u.context_dim, u.linear_proj,
            u.adm_in_channels) == (expected["mult"], expected["depth"], expected["mid"],
                                   expected["context"], expected["linear"], expected["adm"])
    assert [(t.kind, t.width, t.layers) for t in arch.text_encoders] == expected["te"]
    assert arch.vae.block_out_channels == (128, 256, 512, 512) and arch.vae.latent_channels == 4
    # The derived diffusers configs are the published ones for these files.
    from lora_core.families.sd.configs import init_kwargs, load_config

    published = {"use_linear_projection": False, **init_kwargs(load_config(family, "unet"))}
    derived = ckpt.unet_config(arch)
    for key in ("block_out_channels", "down_block_types", "up_block_types",
                "cross_attention_dim", "attention_head_dim", "layers_per_block",
                "use_linear_projection", "transformer_layers_per_block",
                "addition_time_embed_dim", "projection_class_embeddings_input_dim"):
        assert derived.get(key) == published.get(key), key
    for i, te in enumerate(arch.text_encoders):
        part = "text_encoder_2" if i else "text_encoder"
        assert ckpt.text_encoder_config(family, i, te) == init_kwargs(load_config(family, part))
    source = inspect_model(str(path), tmp_path)
    assert source.kind == "single_file" and source.family == family
    assert "U-Net 320 ch" in source.summary
    assert f"{len(expected['te'])} text encoder" in source.summary


def test_inspect_is_torch_free(full_headers, tmp_path: Path) -> None:
    path = _fake_header_file(tmp_path / "x.safetensors", full_headers["sdxl"])
    code = ("import sys; from pathlib import Path; from lora_core.models.loading import "
            "inspect_model, describe_model; s = inspect_model(sys.argv[1], Path('.')); "
            "describe_model(sys.argv[1]); assert s.family == 'sdxl'; "
            "bad = [m for m in ('torch', 'safetensors', 'diffusers', 'transformers') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True,
                   cwd=Path(__file__).resolve().parents[2])


def test_ckpt_family_is_reported_at_load(folders: dict[str, Path], tmp_path: Path) -> None:
    path = write_single_file(folders["sd1"], tmp_path / "a.ckpt", "sd1")
    source = inspect_model(str(path), tmp_path)
    assert (source.kind, source.family) == ("single_file", None)
    assert "detected when the model loads" in describe_model(str(path), tmp_path)


# --- errors ---------------------------------------------------------------------------------


def _error(path: Path, **kwargs) -> ModelError:
    with pytest.raises(ModelError) as info:
        load_model(str(path), path.parent, **kwargs)
    assert str(path) in info.value.message
    assert info.value.hint
    return info.value


def test_broken_and_truncated_files_are_named(folders: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 50) + b"{not json" + b" " * 60)
    assert "broken" in _error(bad).message
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    assert "broken" in _error(huge).message
    good = write_single_file(folders["sd1"], tmp_path / "good.safetensors", "sd1")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-1000])
    assert "truncated" in _error(cut).message


def test_missing_unet_key_and_wrong_files(folders: dict[str, Path], tmp_path: Path) -> None:
    state = checkpoint_state_dict(folders["sd1"], "sd1")
    gone = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    del state[gone]
    save_file(state, str(tmp_path / "pruned.safetensors"))
    error = _error(tmp_path / "pruned.safetensors",
                   tokenizer_dir=folders["sd1"] / "tokenizer")
    assert "missing" in error.message and gone in error.message

    unet_only = {k: v for k, v in checkpoint_state_dict(folders["sd1"], "sd1").items()
                 if k.startswith("model.diffusion_model.")}
    save_file(unet_only, str(tmp_path / "unet.safetensors"))
    assert "no text encoder" in _error(tmp_path / "unet.safetensors").message

    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 4)}
    save_file(lora, str(tmp_path / "lora.safetensors"))
    error = _error(tmp_path / "lora.safetensors")
    assert "is a LoRA file" in error.message and "network_weights" in error.hint

    extra = checkpoint_state_dict(folders["sd1"], "sd1")
    extra["model.diffusion_model.input_blocks.1.0.extra.weight"] = torch.zeros(3)
    save_file(extra, str(tmp_path / "extra.safetensors"))
    error = _error(tmp_path / "extra.safetensors", tokenizer_dir=folders["sd1"] / "tokenizer")
    assert "input_blocks.1.0.extra.weight" in error.message


class _Payload:
    """Unpickling this would create a marker file (what a malicious .ckpt would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_ckpt_is_refused_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)},
                "payload": _Payload(str(marker))}, path)
    assert not marker.exists()
    error = _error(path)
    assert "pickled code" in error.message and "not loaded" in error.message
    assert not marker.exists()


# --- VAE override ---------------------------------------------------------------------------


def test_vae_override_folder_file_and_vae_only(folders: dict[str, Path],
                                               tmp_path: Path) -> None:
    folder = folders["sd1"]
    model = write_single_file(folder, tmp_path / "m.safetensors", "sd1")
    # A different VAE of the same shape: the SD2 tiny folder's (other seed).
    other = folders["sd2"]
    want = _source_state(other, "vae")
    assert not torch.equal(next(iter(want.values())),
                           next(iter(_source_state(folder, "vae").values())))
    ldm_full = write_single_file(other, tmp_path / "other.safetensors", "sd2")
    vae_only = {k.removeprefix("first_stage_model."): v for k, v in load_file(ldm_full).items()
                if k.startswith("first_stage_model.")}
    save_file(vae_only, str(tmp_path / "vae-only.safetensors"))
    diffusers_file = other / "vae" / "diffusion_pytorch_model.safetensors"
    for spec in (str(other), str(other / "vae"), str(ldm_full),
                 str(tmp_path / "vae-only.safetensors"), str(diffusers_file)):
        bundle = load_model(str(model), tmp_path, torch.bfloat16, vae_dtype=torch.float32,
                            vae_spec=spec, tokenizer_dir=folder / "tokenizer")
        got = bundle.vae.state_dict()
        assert got.keys() == want.keys(), spec
        assert all(torch.equal(got[k], want[k]) and got[k].dtype == torch.float32
                   for k in want), spec
    with pytest.raises(ModelError, match="VAE"):
        load_model(str(model), tmp_path, vae_spec=str(tmp_path / "nope.safetensors"),
                   tokenizer_dir=folder / "tokenizer")


# --- tokenizers -----------------------------------------------------------------------------


def _hf_cache_tokenizer(hf_home: Path, repo_id: str, subfolder: str = "") -> Path:
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    write_tokenizer(snapshot / subfolder if subfolder else snapshot)
    return snapshot / subfolder if subfolder else snapshot


def test_tokenizer_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hf_home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    cache_dir = tmp_path / "tokenizers"
    model = tmp_path / "model"
    write_tokenizer(model / "tokenizer")

    with pytest.raises(ModelError) as info:
        find_tokenizer(CLIP_L, None, tokenizer_dir=cache_dir)
    assert "openai/clip-vit-large-patch14" in info.value.message
    assert (f"hf download openai/clip-vit-large-patch14 vocab.json merges.txt "
            f"tokenizer_config.json special_tokens_map.json --local-dir "
            f"{cache_dir / 'openai_clip-vit-large-patch14'}") in info.value.hint
    with pytest.raises(ModelError) as info:
        find_tokenizer(SD2, None)
    assert "hf download stabilityai/stable-diffusion-2 tokenizer/vocab.json" in info.value.hint
    assert "tokenizer_cache_dir" in info.value.hint

    in_hf = _hf_cache_tokenizer(hf_home, CLIP_L.repo_id)
    assert find_tokenizer(CLIP_L, None, tokenizer_dir=cache_dir) == in_hf
    sd2_hf = _hf_cache_tokenizer(hf_home, SD2.repo_id, "tokenizer")
    assert find_tokenizer(SD2, None) == sd2_hf
    write_tokenizer(cache_dir / "openai_clip-vit-large-patch14")
    assert find_tokenizer(CLIP_L, None, tokenizer_dir=cache_dir) == \
        cache_dir / "openai_clip-vit-large-patch14"
    write_tokenizer(cache_dir / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k" / "tokenizer")
    assert find_tokenizer(CLIP_G, None, tokenizer_dir=cache_dir) == \
        cache_dir / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k" / "tokenizer"
    assert find_tokenizer(CLIP_L, model, tokenizer_dir=cache_dir) == model / "tokenizer"


def test_sdxl_tokenizers_from_cache_pad_as_sd_scripts(folders: dict[str, Path],
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    hf_home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    _hf_cache_tokenizer(hf_home, CLIP_L.repo_id)
    _hf_cache_tokenizer(hf_home, CLIP_G.repo_id)
    path = write_single_file(folders["sdxl"], tmp_path / "xl.safetensors", "sdxl")
    bundle = load_model(str(path), tmp_path)
    first, second = bundle.tokenizers
    assert first.pad_token_id == first.eos_token_id != 0
    assert second.pad_token_id == 0 and second.pad_token == "!"
    assert first.model_max_length == second.model_max_length == 77


# --- v-prediction hint ----------------------------------------------------------------------


def test_prediction_warning(tmp_path: Path) -> None:
    assert prediction_warning(Path("v2-1_768-ema-pruned.safetensors"), {}, False) is None
    assert "v_parameterization` is false" in prediction_warning(
        Path("model-768-v.safetensors"), {}, False)
    assert "v_parameterization` is false" in prediction_warning(
        Path("noobai-vpred-1.0.safetensors"), {}, False)
    assert prediction_warning(Path("noobai-vpred-1.0.safetensors"), {}, True) is None
    meta = {"modelspec.prediction_type": "v"}
    assert "metadata" in prediction_warning(Path("plain.safetensors"), meta, False)
    assert "is true" in prediction_warning(
        Path("plain.safetensors"), {"modelspec.prediction_type": "epsilon"}, True)
    assert prediction_warning(Path("plain.safetensors"), {}, True) is None


def test_tensors_are_read_without_mapping_the_file(folders: dict[str, Path],
                                                   tmp_path: Path) -> None:
    from lora_core.families.sd.single_file import _Reader

    path = write_single_file(folders["sdxl"], tmp_path / "xl.safetensors", "sdxl",
                             dtype=torch.float16)
    reader = _Reader(path)
    ours = {key: reader.get(key, torch.float16) for key in reader.shapes}
    # read, not mapped: a mapping would count the whole file in the process's memory
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(path) not in maps.read_text()
    expected = load_file(str(path))  # safetensors' own reading (which maps the file)
    assert ours.keys() == expected.keys()
    for key, tensor in expected.items():
        assert ours[key].dtype == tensor.dtype and ours[key].shape == tensor.shape
        assert torch.equal(ours[key], tensor), key
    key = "model.diffusion_model.out.2.bias"
    assert torch.equal(reader.get(key, torch.bfloat16), expected[key].to(torch.bfloat16))
    # a file cut short after its header was read names the tensor that lies past the end
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes())
    damaged = _Reader(cut)
    with open(cut, "r+b") as fh:
        fh.truncate(cut.stat().st_size - 1000)
    last = max(damaged._entries, key=lambda k: damaged._entries[k][3])
    with pytest.raises(ModelError, match=f"cannot read tensor {last!r}"):
        damaged.get(last, torch.bfloat16)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_fp8_unet_reads_the_linear_and_conv_weights_as_float8(folders: dict[str, Path],
                                                              tmp_path: Path,
                                                              family: str) -> None:
    """fp8_base on a single file (issue 28): the U-Net's 2-D / 4-D weights are cast to float8
    as each tensor is read, so the wide U-Net never exists (the peak the full-size bench
    measures); norms and biases keep the training dtype; placed, its output is the one of the
    wide model with its weights rounded to fp8."""
    from lora_core.profile import TrainingSection

    folder = folders[family]
    path = write_single_file(folder, tmp_path / "model.safetensors", family)
    tokenizers = str(folder / "tokenizer")
    wide = load_model(path.name, tmp_path, torch.float32, tokenizer_dir=tokenizers)
    narrow = load_model(path.name, tmp_path, torch.float32, tokenizer_dir=tokenizers,
                        fp8_unet=True)
    weights = {name: p for name, p in narrow.unet.named_parameters()}
    assert all(p.dtype == torch.float8_e4m3fn for n, p in weights.items()
               if n.endswith(".weight") and p.ndim in (2, 4))
    assert all(p.dtype == torch.float32 for n, p in weights.items() if p.ndim == 1)
    for name, p in wide.unet.named_parameters():  # the same numbers, rounded to fp8
        if p.ndim in (2, 4) and name.endswith(".weight"):
            torch.testing.assert_close(weights[name].float(), p.to(torch.float8_e4m3fn).float())
    narrow.impl.place_transformer(narrow, TrainingSection(fp8_base_unet=True), "cpu",
                                  torch.float32)
    sample = torch.randn(1, narrow.unet.config.in_channels, 8, 8)
    context = torch.randn(1, 77, narrow.unet.config.cross_attention_dim)
    extra = {}
    if family == "sdxl":
        extra = {"added_cond_kwargs": {
            "text_embeds": torch.randn(1, narrow.unet.config.projection_class_embeddings_input_dim
                                       - 6 * narrow.unet.config.addition_time_embed_dim),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}}
    with torch.no_grad():
        for name, p in wide.unet.named_parameters():  # the wide model with fp8's numbers
            if p.ndim in (2, 4) and name.endswith(".weight"):
                p.copy_(p.to(torch.float8_e4m3fn).float())
        out = narrow.unet(sample, 10, context, **extra).sample
        ref = wide.unet(sample, 10, context, **extra).sample
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
