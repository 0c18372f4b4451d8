"""The LoRA file tools on Flux.1 LoRAs: inspect, edit, resize, merge.

The files are built here with safetensors, named and shaped as sd-scripts'
``networks/lora_flux.py`` names a 2-double / 2-single block model of width 64 (plus CLIP-L
``lora_te1_`` and T5 ``lora_te3_`` modules), with the metadata ``flux_train_network.py`` writes;
the names are written out from lora_flux's rules here, not taken from our naming code. A
diffusers-style (ai-toolkit / PEFT ``lora_A``/``lora_B``) Flux file is recognised, not converted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lora_core.errors import LoraError
from lora_core.families.flux import metadata as flux_metadata
from lora_core.families.flux.lora_files import lora_variant as flux_variant
from lora_core.lora_tools.edit import edit_lora
from lora_core.lora_tools.factor import merge_loras, resize_lora
from lora_core.lora_tools.inspect import inspect_lora, render_inspect
from lora_core.saving.lora_header import family_mismatch, read_lora_header

H, MLP, CLIP, T5, T5_FF = 64, 256, 32, 48, 96  # widths of the tiny model


def flux_modules(doubles: int = 2, singles: int = 2, clip: bool = True, t5: bool = True
                 ) -> dict[str, tuple[int, int]]:
    """name -> (in, out) of every module networks.lora_flux makes for the tiny model."""
    out = {}
    for n in range(doubles):
        for s in ("img", "txt"):
            p = f"lora_unet_double_blocks_{n}_{s}"
            out.update({f"{p}_mod_lin": (H, 6 * H), f"{p}_attn_qkv": (H, 3 * H),
                        f"{p}_attn_proj": (H, H), f"{p}_mlp_0": (H, MLP),
                        f"{p}_mlp_2": (MLP, H)})
    for n in range(singles):
        p = f"lora_unet_single_blocks_{n}"
        out.update({f"{p}_linear1": (H, 3 * H + MLP), f"{p}_linear2": (H + MLP, H),
                    f"{p}_modulation_lin": (H, 3 * H)})
    if clip:
        p = "lora_te1_text_model_encoder_layers_0"
        out.update({f"{p}_self_attn_{x}_proj": (CLIP, CLIP) for x in ("q", "k", "v", "out")})
        out.update({f"{p}_mlp_fc1": (CLIP, 4 * CLIP), f"{p}_mlp_fc2": (4 * CLIP, CLIP)})
    if t5:
        p = "lora_te3_encoder_block_0_layer"
        out.update({f"{p}_0_SelfAttention_{x}": (T5, T5) for x in ("q", "k", "v", "o")})
        out.update({f"{p}_1_DenseReluDense_wi_0": (T5, T5_FF),
                    f"{p}_1_DenseReluDense_wi_1": (T5, T5_FF),
                    f"{p}_1_DenseReluDense_wo": (T5_FF, T5)})
    return out


FLUX_METADATA = {
    "ss_network_module": "networks.lora_flux", "ss_network_dim": "4", "ss_network_alpha": "2",
    "ss_base_model_version": "flux1", "ss_v2": "False", "ss_model_type": "flux",
    "ss_sd_model_name": "flux1-dev.safetensors", "ss_unet_lr": "0.0001",
    "ss_guidance_scale": "1.0", "ss_timestep_sampling": "shift",
    "ss_discrete_flow_shift": "3.1582", "ss_model_prediction_type": "raw",
    "ss_apply_t5_attn_mask": "True", "ss_weighting_scheme": "none",
    "ss_clip_skip": "2", "ss_max_token_length": "225",  # SD settings: nonsense for Flux
    "ss_training_comment": "None", "modelspec.sai_model_spec": "1.0.1",
    "modelspec.architecture": "flux-1-dev/lora",
    "modelspec.implementation": "https://github.com/black-forest-labs/flux",
}


def flux_tensors(modules: dict[str, tuple[int, int]], rank: int = 4, alpha: float = 2.0,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (inp, out) in modules.items():
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, inp, generator=generator)
        tensors[f"{name}.lora_up.weight"] = torch.randn(out, rank, generator=generator) * 0.1
        tensors[f"{name}.alpha"] = torch.tensor(alpha)
    return tensors


def write_flux(path: Path, metadata: dict | None = FLUX_METADATA, modules=None,
               **kwargs) -> Path:
    tensors = flux_tensors(modules or flux_modules(), **kwargs)
    save_file(tensors, str(path), None if metadata is None else dict(metadata))
    return path


def write_sd1(path: Path) -> Path:
    """A small SD 1.x LoRA as sd-scripts' networks.lora names it."""
    modules = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (768, 32),
               "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768)}
    save_file(flux_tensors(modules), str(path), {"ss_base_model_version": "sd_v1",
                                                  "ss_network_module": "networks.lora"})
    return path


def dense_deltas(path: Path) -> dict[str, torch.Tensor]:
    """alpha/dim * up @ down of every module, straight from the file's tensors."""
    with safe_open(str(path), "pt") as fh:
        tensors = {k: fh.get_tensor(k).double() for k in fh.keys()}
    return {name: float(tensors[f"{name}.alpha"]) / tensors[f"{name}.lora_down.weight"].shape[0]
            * tensors[f"{name}.lora_up.weight"] @ tensors[f"{name}.lora_down.weight"]
            for name in {k.partition(".")[0] for k in tensors}}


def file_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as fh:
        return fh.metadata()


# --- inspect ---------------------------------------------------------------------------------


def test_inspect_tells_a_flux_lora_its_parts_and_flow_settings(tmp_path):
    path = write_flux(tmp_path / "flux.safetensors")
    report = inspect_lora(path)
    assert (report["family"], report["family_source"], report["variant"]) == \
        ("flux", "metadata", "dev")
    assert (report["network_type"], report["dim"], report["alpha"], report["conv_dim"]) == \
        ("LoRA", 4, 2.0, None)
    # 2 double blocks x 10 Linears, 2 single blocks x 3, CLIP-L 6, T5 7
    assert report["modules"] == {"double_blocks": 20, "single_blocks": 6, "clip_l": 6, "t5": 7}
    settings = report["settings"]
    assert (settings["guidance scale"], settings["timestep sampling"],
            settings["model prediction type"], settings["discrete flow shift"],
            settings["apply T5 attention mask"], settings["network module"]) == \
        ("1.0", "shift", "raw", "3.1582", "True", "networks.lora_flux")
    assert settings["DiT lr"] == "0.0001"
    assert not {"clip skip", "max token length", "U-Net lr"} & settings.keys()
    text = render_inspect(report)
    assert "Base model family: Flux.1 (from the metadata); variant: Flux.1 dev" in text
    assert "Modules: double blocks 20, single blocks 6, CLIP-L 6, T5 7" in text
    assert "unet" not in text and "clip skip" not in text


def test_inspect_tells_flux_from_the_tensors_and_chroma_from_its_metadata(tmp_path):
    # No metadata: the CLIP-L modules are lora_te1_ as SDXL's are; the blocks tell Flux.
    bare = write_flux(tmp_path / "bare.safetensors", metadata=None)
    report = inspect_lora(bare)
    assert (report["family"], report["family_source"], report["variant"]) == \
        ("flux", "tensors", None)
    assert report["modules"]["double_blocks"] == 20
    assert "is a LoRA for Flux.1 models, but the base model is SDXL" in \
        family_mismatch(read_lora_header(bare), "sdxl")
    assert "is a LoRA for SD 1.x models, but the base model is Flux.1" in \
        family_mismatch(read_lora_header(write_sd1(tmp_path / "sd.safetensors")), "flux")
    only_t5 = write_flux(tmp_path / "t5.safetensors", metadata=None,
                         modules=flux_modules(0, 0, clip=False))
    assert inspect_lora(only_t5)["family"] == "flux"
    chroma = write_flux(tmp_path / "chroma.safetensors", {
        **FLUX_METADATA, "ss_base_model_version": "chroma", "ss_model_type": "chroma",
        "modelspec.architecture": "chroma/lora"}, modules=flux_modules(clip=False))
    report = inspect_lora(chroma)
    assert (report["family"], report["variant"]) == ("flux", "chroma")
    assert "variant: Chroma" in render_inspect(report)
    schnell = write_flux(tmp_path / "schnell.safetensors", {
        **FLUX_METADATA, "modelspec.architecture": "flux-1-schnell/lora"})
    assert read_lora_header(schnell).base_words == "Flux.1 schnell"
    # The header reader knows each variant's architecture as the family package writes it.
    for variant in flux_metadata.ARCHITECTURES:
        assert flux_variant(flux_metadata.modelspec_keys(variant)) == variant


# --- diffusers-style Flux files: recognised, not converted -----------------------------------


def _diffusers_flux(path: Path, width: int = H, single: bool = True) -> Path:
    tensors = {}
    blocks = [("transformer.transformer_blocks.0.attn.to_q", width, width),
              ("transformer.transformer_blocks.0.ff.net.0.proj", width, 4 * width)]
    if single:
        blocks.append(("transformer.single_transformer_blocks.0.attn.to_q", width, width))
    for name, inp, out in blocks:
        tensors[f"{name}.lora_A.weight"] = torch.zeros(4, inp)
        tensors[f"{name}.lora_B.weight"] = torch.zeros(out, 4)
    save_file(tensors, str(path), {"software": "ai-toolkit"})
    return path


def test_a_diffusers_style_flux_lora_is_recognised_and_refused_by_name_for_resize(tmp_path):
    path = _diffusers_flux(tmp_path / "aitk.safetensors")
    report = inspect_lora(path)
    assert (report["family"], report["key_style"], report["network_type"], report["dim"]) == \
        ("flux", "diffusers", "LoRA", 4)
    assert report["modules"] == {"double_blocks": 2, "single_blocks": 1}
    assert "Keys: diffusers/PEFT style" in render_inspect(report)
    with pytest.raises(LoraError) as caught:
        resize_lora(path, tmp_path / "small.safetensors", rank=2)
    assert str(path) in caught.value.message and "diffusers" in caught.value.message
    assert "convert_flux_lora" in caught.value.hint
    assert not (tmp_path / "small.safetensors").exists()
    edit_lora(path, {"title": "AI toolkit LoRA"})  # metadata only: any key names
    assert file_metadata(path)["modelspec.title"] == "AI toolkit LoRA"
    # Only Flux's layout: an SD3-wide file with double blocks alone stays refused as before.
    sd3 = _diffusers_flux(tmp_path / "sd3.safetensors", width=1536, single=False)
    with pytest.raises(LoraError, match="not a kohya-format LoRA"):
        inspect_lora(sd3)
    wide = _diffusers_flux(tmp_path / "wide.safetensors", width=3072, single=False)
    assert inspect_lora(wide)["family"] == "flux"  # Flux's hidden width tells it


# --- edit, resize ----------------------------------------------------------------------------


def test_edit_keeps_a_flux_lora_and_its_family(tmp_path):
    path = write_flux(tmp_path / "flux.safetensors")
    edit_lora(path, {"title": "My Flux"})
    meta = file_metadata(path)
    assert meta["modelspec.title"] == "My Flux"
    assert meta["modelspec.architecture"] == "flux-1-dev/lora" and \
        meta["ss_network_module"] == "networks.lora_flux"
    assert inspect_lora(path)["family"] == "flux"


def test_resize_keeps_flux_names_and_metadata_and_makes_the_asked_shapes(tmp_path):
    path = write_flux(tmp_path / "flux.safetensors")
    out = tmp_path / "small.safetensors"
    report = resize_lora(path, out, rank=2)
    modules = flux_modules()
    assert sorted(m.name for m in report.modules) == sorted(modules)
    with safe_open(str(out), "pt") as fh:
        assert sorted(fh.keys()) == sorted(f"{n}.{p}" for n in modules
                                           for p in ("lora_down.weight", "lora_up.weight",
                                                     "alpha"))
        for name, (inp, outp) in modules.items():
            assert fh.get_tensor(f"{name}.lora_down.weight").shape == (2, inp)
            assert fh.get_tensor(f"{name}.lora_up.weight").shape == (outp, 2)
            assert float(fh.get_tensor(f"{name}.alpha")) == pytest.approx(1.0)  # 2 * 2/4
        meta = fh.metadata()
    for key in ("ss_base_model_version", "ss_network_module", "modelspec.architecture",
                "ss_guidance_scale", "ss_timestep_sampling"):
        assert meta[key] == FLUX_METADATA[key], key
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("2", "1")
    before, after = dense_deltas(path), dense_deltas(out)
    name = "lora_unet_single_blocks_1_linear1"
    s = torch.linalg.svd(before[name], full_matrices=False).S  # the dense route
    assert float(torch.linalg.matrix_norm(before[name] - after[name])) == \
        pytest.approx(float(s[2:].square().sum().sqrt()), rel=1e-4)
    assert inspect_lora(out)["modules"] == inspect_lora(path)["modules"]


# --- merge -----------------------------------------------------------------------------------


def test_merge_of_two_flux_loras_sums_their_deltas_and_keeps_the_family(tmp_path):
    a = write_flux(tmp_path / "a.safetensors", seed=1)
    b = write_flux(tmp_path / "b.safetensors", seed=2, rank=2, alpha=2.0,
                   modules=flux_modules(clip=False, t5=False))
    out = tmp_path / "ab.safetensors"
    report = merge_loras([(a, 0.7), (b, -0.5)], out, rank=6)
    da, db, merged = dense_deltas(a), dense_deltas(b), dense_deltas(out)
    assert merged.keys() == da.keys()
    for name in da:
        expected = 0.7 * da[name] - (0.5 * db[name] if name in db else 0)
        assert float((merged[name] - expected).abs().max()) <= 1e-5 * max(
            1.0, float(expected.abs().max())), name
    assert any("only some of the inputs" in note for note in report.notes)  # CLIP-L, T5
    meta = file_metadata(out)
    assert (meta["ss_base_model_version"], meta["ss_network_module"],
            meta["modelspec.architecture"], meta["ss_network_dim"]) == \
        ("flux1", "networks.lora_flux", "flux-1-dev/lora", "6")
    assert inspect_lora(out)["family"] == "flux"
    # Files without metadata: the merged file still says what sd-scripts would.
    bare = write_flux(tmp_path / "bare.safetensors", metadata=None)
    merge_loras([(bare, 1.0), (b, 1.0)], tmp_path / "bare2.safetensors", rank=4)
    meta = file_metadata(tmp_path / "bare2.safetensors")
    assert (meta["ss_base_model_version"], meta["ss_network_module"]) == \
        ("flux1", "networks.lora_flux")


def test_merge_refuses_flux_with_sd_and_chroma_with_dev_naming_the_files(tmp_path):
    flux = write_flux(tmp_path / "flux.safetensors")
    sd = write_sd1(tmp_path / "sd.safetensors")
    with pytest.raises(LoraError) as caught:
        merge_loras([(flux, 1), (sd, 1)], tmp_path / "m.safetensors", rank=4)
    message = caught.value.message
    assert "different model families" in message
    assert "flux.safetensors: Flux.1 dev" in message and "sd.safetensors: SD 1.x" in message
    chroma = write_flux(tmp_path / "chroma.safetensors", {
        **FLUX_METADATA, "ss_base_model_version": "chroma",
        "modelspec.architecture": "chroma/lora"})
    with pytest.raises(LoraError, match="chroma.safetensors: Chroma"):
        merge_loras([(flux, 1), (chroma, 1)], tmp_path / "m.safetensors", rank=4)
    assert not (tmp_path / "m.safetensors").exists()
    schnell = write_flux(tmp_path / "schnell.safetensors", {
        **FLUX_METADATA, "modelspec.architecture": "flux-1-schnell/lora"}, seed=3)
    report = merge_loras([(flux, 1), (schnell, 1)], tmp_path / "ds.safetensors", rank=4)
    assert any("Flux.1 dev and Flux.1 schnell" in note for note in report.notes)


def test_the_command_line_inspects_flux_and_refuses_mixing_it_with_sd(tmp_path, cli):
    flux = write_flux(tmp_path / "flux.safetensors")
    code, out, _ = cli("inspect", str(flux), "--json")
    assert code == 0
    report = json.loads(out)
    assert (report["family"], report["modules"]["single_blocks"]) == ("flux", 6)
    sd = write_sd1(tmp_path / "sd.safetensors")
    code, _, err = cli("merge", str(flux), f"{sd}:0.5", "--rank", "4", "-o",
                       str(tmp_path / "m.safetensors"))
    assert code == 2 and "Traceback" not in err
    assert "flux.safetensors: Flux.1 dev" in err and "sd.safetensors: SD 1.x" in err
