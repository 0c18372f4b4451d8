"""LoRA file tools on files built here with sd-scripts' layout and metadata (kohya-compat.md
§6.2, §6.7, §7): inspect, edit, resize, merge, and the bad inputs each refuses.

Every expected number is computed from the file's own tensors by another route than the
tool's (a full SVD of the dense delta, not the tool's thin QR one), so a wrong factorisation,
a lost alpha or a dropped module fails here.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from lora_core.cli import main
from lora_core.errors import LoraError
from lora_core.lora_tools.edit import edit_lora
from lora_core.lora_tools.factor import merge_loras, resize_lora
from lora_core.lora_tools.inspect import inspect_lora, render_inspect, tensor_data_hash
from lora_core.saving.lora_file import save_lora

# (module name, out, in, kernel) of a small SD1-shaped file: attention, MLP, a 1x1 and a 3x3
# convolution, two text-encoder modules (768 wide: the SD 1.x text encoder).
MODULES = [
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 32, 32, ()),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 32, 768, ()),
    ("lora_unet_down_blocks_0_attentions_0_proj_in", 32, 32, (1, 1)),
    ("lora_unet_down_blocks_0_resnets_0_conv1", 32, 16, (3, 3)),
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768, 768, ()),
    ("lora_te_text_model_encoder_layers_0_mlp_fc1", 96, 768, ()),
]
SD_SCRIPTS_METADATA = {
    "ss_session_id": "123456", "ss_output_name": "mychar", "ss_network_module": "networks.lora",
    "ss_network_dim": "8", "ss_network_alpha": "4.0",
    "ss_network_args": json.dumps({"conv_dim": "4", "conv_alpha": "2"}),
    "ss_base_model_version": "sd_v1", "ss_v2": "False", "ss_sd_model_name": "model.safetensors",
    "ss_sd_model_hash": "abcd1234", "ss_learning_rate": "0.0001", "ss_unet_lr": "0.0001",
    "ss_text_encoder_lr": "5e-05", "ss_lr_scheduler": "cosine", "ss_steps": "1200",
    "ss_epoch": "10", "ss_num_epochs": "10", "ss_batch_size_per_device": "2",
    "ss_resolution": "(512, 512)", "ss_optimizer": "bitsandbytes.optim.adamw.AdamW8bit",
    "ss_mixed_precision": "fp16", "ss_training_comment": "None",
    "ss_dataset_dirs": json.dumps({"10_mychar": {"n_repeats": 10, "img_count": 24},
                                   "5_mychar outfit": {"n_repeats": 5, "img_count": 12}}),
    "ss_reg_dataset_dirs": json.dumps({"1_woman": {"n_repeats": 1, "img_count": 100}}),
    "ss_tag_frequency": json.dumps({"10_mychar": {"mychar": 24, "smile": 7, "1girl": 24,
                                                  "red hair": 20},
                                    "5_mychar outfit": {"mychar": 12, "armor": 12}}),
    "modelspec.sai_model_spec": "1.0.1", "modelspec.architecture": "stable-diffusion-v1/lora",
}


def lora_tensors(rank: int = 8, conv_rank: int = 4, alpha: float = 4.0,
                 conv_alpha: float = 2.0, seed: int = 0, tucker: bool = False,
                 modules=MODULES) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, out, inp, kernel in modules:
        conv3 = kernel not in ((), (1, 1))
        r, a = (conv_rank, conv_alpha) if conv3 else (rank, alpha)
        if conv3 and tucker:
            tensors[f"{name}.lora_down.weight"] = torch.randn(r, inp, 1, 1, generator=generator)
            tensors[f"{name}.lora_mid.weight"] = torch.randn(r, r, *kernel, generator=generator)
        else:
            tensors[f"{name}.lora_down.weight"] = torch.randn(r, inp, *kernel,
                                                              generator=generator)
        tensors[f"{name}.lora_up.weight"] = torch.randn(out, r, *((1, 1) if kernel else ()),
                                                        generator=generator) * 0.1
        tensors[f"{name}.alpha"] = torch.tensor(a)
    return tensors


def write_lora(path: Path, metadata: dict | None = None, **kwargs) -> Path:
    save_lora(path, lora_tensors(**kwargs), dict(SD_SCRIPTS_METADATA if metadata is None
                                                 else metadata), "float")
    return path


def dense_deltas(path: Path) -> dict[str, torch.Tensor]:
    """Each module's effective delta, alpha/dim * up @ down, as a dense float64 matrix
    (out, in*kh*kw), computed directly from the file's tensors."""
    with safe_open(str(path), "pt") as fh:
        tensors = {k: fh.get_tensor(k).double() for k in fh.keys()}
    deltas = {}
    for name in {k.split(".")[0] for k in tensors}:
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        mid = tensors.get(f"{name}.lora_mid.weight")
        if mid is not None:
            down = torch.einsum("abhw,bi->aihw", mid, down.flatten(1))
        scale = float(tensors[f"{name}.alpha"]) / down.shape[0]
        deltas[name] = scale * up.flatten(1) @ down.flatten(1)
    return deltas


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- inspect ---------------------------------------------------------------------------------


def test_inspect_reads_the_facts_of_an_sd_scripts_file(tmp_path):
    path = write_lora(tmp_path / "mychar.safetensors")
    report = inspect_lora(path)
    assert (report["family"], report["family_source"]) == ("sd1", "metadata")
    assert report["network_type"] == "LoCon"
    assert (report["dim"], report["alpha"], report["conv_dim"], report["conv_alpha"]) == \
        (8, 4.0, 4, 2.0)
    assert report["modules"] == {"unet": 4, "te": 2}
    assert report["base_model"] == {"name": "model.safetensors", "hash": "abcd1234",
                                    "sha256": None}
    assert report["settings"]["steps"] == "1200" and report["settings"]["optimizer"] == \
        "bitsandbytes.optim.adamw.AdamW8bit"
    assert {"folder": "10_mychar", "repeats": 10, "images": 24, "reg": False} in \
        report["datasets"]
    assert {"folder": "1_woman", "repeats": 1, "images": 100, "reg": True} in report["datasets"]
    assert report["tag_frequency"]["10_mychar"] == [["1girl", 24], ["mychar", 24],
                                                    ["red hair", 20], ["smile", 7]]
    assert report["model_hash"] == "matches"
    text = render_inspect(report)
    assert "SD 1.x (from the metadata)" in text and "10_mychar: 24 images x 10" in text
    assert text.index("red hair") < text.index("smile")  # most used first


def test_inspect_without_metadata_tells_what_the_tensors_do(tmp_path):
    path = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in lora_tensors().items()}, str(path))
    report = inspect_lora(path)
    assert (report["family"], report["family_source"]) == ("sd1", "tensors")  # 768 wide
    assert report["dim"] == 8 and report["has_metadata"] is False
    assert report["model_hash"] == "absent"
    assert "no training metadata" in render_inspect(report)


def test_inspect_names_sdxl_sd2_loha_and_lokr_from_the_tensors(tmp_path):
    sdxl = tmp_path / "xl.safetensors"
    save_file({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight":
               torch.zeros(4, 768), "lora_te2_text_model_encoder_layers_0_mlp_fc1.hada_w1_a":
               torch.zeros(1280, 4), "lora_te2_text_model_encoder_layers_0_mlp_fc1.hada_w1_b":
               torch.zeros(4, 1280)}, str(sdxl))
    report = inspect_lora(sdxl)
    assert report["family"] == "sdxl" and report["network_type"] == "LoHa+LoRA"
    assert report["modules"] == {"te1": 1, "te2": 1}
    sd2 = tmp_path / "v2.safetensors"
    save_file({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lokr_w1":
               torch.zeros(8, 8), "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lokr_w2":
               torch.zeros(128, 128),
               "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k."
               "lora_down.weight": torch.zeros(4, 1024)}, str(sd2))
    report = inspect_lora(sd2)
    assert report["family"] == "sd2" and "LoKr" in report["network_type"]


# --- edit ------------------------------------------------------------------------------------


def test_edit_writes_the_user_fields_keeps_tensors_and_a_backup(tmp_path):
    path = write_lora(tmp_path / "mychar.safetensors")
    original, data_hash = path.read_bytes(), tensor_data_hash(path)
    cover = tmp_path / "cover.jpg"
    Image.new("RGB", (1024, 768), (200, 30, 30)).save(cover)
    done = edit_lora(path, {"title": "My Char", "keywords": "mychar, red hair",
                            "description": "a character"}, cover=cover)
    assert any("original is kept" in line for line in done)
    assert (tmp_path / "mychar.safetensors.backup").read_bytes() == original
    assert tensor_data_hash(path) == data_hash  # every tensor byte the same
    with safe_open(str(path), "pt") as fh, safe_open(str(tmp_path / "mychar.safetensors.backup"),
                                                       "pt") as old:
        assert sorted(fh.keys()) == sorted(old.keys())
        assert all(torch.equal(fh.get_tensor(k), old.get_tensor(k)) for k in fh.keys())
        meta = fh.metadata()
    assert meta["ssmd_display_name"] == meta["modelspec.title"] == "My Char"
    assert meta["ssmd_keywords"] == meta["modelspec.trigger_phrase"] == "mychar, red hair"
    assert meta["ss_tag_frequency"] == SD_SCRIPTS_METADATA["ss_tag_frequency"]  # kept
    covers = json.loads(meta["ssmd_cover_images"])
    import base64
    import io

    with Image.open(io.BytesIO(base64.b64decode(covers[0]))) as image:
        assert image.format == "PNG" and max(image.size) == 512
    report = inspect_lora(path)
    assert report["user"]["title"] == "My Char" and report["cover_images"] == 1
    assert report["model_hash"] == "matches"  # the hash covers the tensors only

    edit_lora(path, {}, clear=["title", "cover"])
    meta = inspect_lora(path)
    assert "title" not in meta["user"] and meta["cover_images"] == 0
    second = edit_lora(path, {"author": "me"})
    assert any("exists already and was kept" in line for line in second)
    assert (tmp_path / "mychar.safetensors.backup").read_bytes() == original


# --- resize ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tucker", [False, True], ids=["locon", "tucker"])
def test_resize_to_full_rank_reproduces_every_delta(tmp_path, tucker):
    path = write_lora(tmp_path / "in.safetensors", tucker=tucker)
    out = tmp_path / "out.safetensors"
    report = resize_lora(path, out, rank=8)
    before, after = dense_deltas(path), dense_deltas(out)
    assert before.keys() == after.keys() and len(after) == len(MODULES)
    for name in before:
        scale = max(1.0, float(before[name].abs().max()))
        assert float((before[name] - after[name]).abs().max()) <= 1e-5 * scale, name
    assert all(m.retained == pytest.approx(1.0) for m in report.modules)
    with safe_open(str(out), "pt") as fh:
        conv = "lora_unet_down_blocks_0_resnets_0_conv1"
        assert fh.get_tensor(f"{conv}.lora_down.weight").shape == (4, 16, 3, 3)
        assert fh.get_tensor(f"{conv}.lora_up.weight").shape == (32, 4, 1, 1)
        assert f"{conv}.lora_mid.weight" not in fh.keys()
        # alpha/dim kept: 4/8 for the linear modules, 2/4 for the 3x3 convolution
        assert float(fh.get_tensor(f"{conv}.alpha")) == pytest.approx(2.0)
        meta = fh.metadata()
    assert meta["ss_tag_frequency"] == SD_SCRIPTS_METADATA["ss_tag_frequency"]


def test_resize_to_rank_r_loses_exactly_the_discarded_singular_values(tmp_path):
    path = write_lora(tmp_path / "in.safetensors")
    out = tmp_path / "small.safetensors"
    report = resize_lora(path, out, rank=3, conv_rank=2)
    before, after = dense_deltas(path), dense_deltas(out)
    results = {m.name: m for m in report.modules}
    for name, delta in before.items():
        s = torch.linalg.svd(delta, full_matrices=False).S  # the dense route
        rank = 2 if name.endswith("conv1") else 3
        assert results[name].new_rank == rank
        lost = float(torch.linalg.matrix_norm(delta - after[name]))
        expected = float(s[rank:].square().sum().sqrt())
        assert lost == pytest.approx(expected, rel=1e-4), name
        assert results[name].error == pytest.approx(expected, rel=1e-6)
        assert results[name].retained == pytest.approx(
            math.sqrt(1 - expected ** 2 / float(s.square().sum())), rel=1e-6)
    meta = inspect_lora(out)
    assert (meta["dim"], meta["alpha"], meta["conv_dim"], meta["conv_alpha"]) == \
        (3, 1.5, 2, 1.0)
    assert meta["model_hash"] == "matches"
    assert "resized from in.safetensors (rank 3)" in \
        json.dumps(meta["settings"].get("comment"))


def test_dynamic_resize_keeps_the_asked_share(tmp_path):
    path = write_lora(tmp_path / "in.safetensors")
    before = dense_deltas(path)
    out = tmp_path / "fro.safetensors"
    report = resize_lora(path, out, dynamic="sv_fro", param=0.9)
    for m in report.modules:
        s = torch.linalg.svd(before[m.name], full_matrices=False).S
        share = torch.cumsum(s * s, 0) / float((s * s).sum())
        wanted = int((share < 0.81 - 1e-12).sum()) + 1  # the smallest rank keeping 90 %
        assert m.new_rank == wanted and m.retained >= 0.9 - 1e-9
    ratio = resize_lora(path, tmp_path / "ratio.safetensors", rank=2, dynamic="sv_ratio",
                        param=1000)
    assert all(m.new_rank == 2 for m in ratio.modules)  # at most --rank


# --- merge -----------------------------------------------------------------------------------


def test_merge_sums_the_weighted_deltas(tmp_path):
    a = write_lora(tmp_path / "a.safetensors", seed=1)
    b = write_lora(tmp_path / "b.safetensors", seed=2, rank=4, alpha=4.0)
    out = tmp_path / "ab.safetensors"
    report = merge_loras([(a, 0.7), (b, -0.5)], out, rank=12, conv_rank=8)
    da, db, merged = dense_deltas(a), dense_deltas(b), dense_deltas(out)
    for name in da:
        expected = 0.7 * da[name] - 0.5 * db[name]
        assert float((merged[name] - expected).abs().max()) <= 1e-5 * max(
            1.0, float(expected.abs().max())), name
    assert all(m.retained == pytest.approx(1.0) for m in report.modules)
    meta = inspect_lora(out)
    assert meta["family"] == "sd1" and meta["dim"] == 12 and meta["alpha"] == 12.0
    small = merge_loras([(a, 1.0), (b, 1.0)], tmp_path / "small.safetensors", rank=2)
    assert all(m.new_rank == 2 and m.retained < 1 for m in small.modules)


def test_merge_refuses_other_families_and_shapes(tmp_path):
    a = write_lora(tmp_path / "a.safetensors")
    xl = write_lora(tmp_path / "xl.safetensors", {**SD_SCRIPTS_METADATA,
                                                   "ss_base_model_version": "sdxl_base_v1-0"})
    with pytest.raises(LoraError, match="different model families"):
        merge_loras([(a, 1), (xl, 1)], tmp_path / "m.safetensors", rank=4)
    wide = [(n, o * 2, i, k) for n, o, i, k in MODULES]
    other = write_lora(tmp_path / "wide.safetensors", modules=wide)
    with pytest.raises(LoraError, match="different shape"):
        merge_loras([(a, 1), (other, 1)], tmp_path / "m.safetensors", rank=4)
    assert not (tmp_path / "m.safetensors").exists()


def test_resize_and_merge_refuse_loha(tmp_path):
    path = tmp_path / "loha.safetensors"
    name = MODULES[0][0]
    save_file({f"{name}.hada_w1_a": torch.zeros(32, 4), f"{name}.hada_w1_b": torch.zeros(4, 32),
               f"{name}.hada_w2_a": torch.zeros(32, 4), f"{name}.hada_w2_b": torch.zeros(4, 32),
               f"{name}.alpha": torch.tensor(4.0)}, str(path))
    with pytest.raises(LoraError, match="holds LoHa modules"):
        resize_lora(path, tmp_path / "out.safetensors", rank=2)


# --- bad input through the command line: exit 2, a message naming the file, input untouched --


def _checkpoint(path: Path) -> Path:
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, str(path))
    return path


def _truncated(path: Path) -> Path:
    write_lora(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _garbage(path: Path) -> Path:
    path.write_bytes(b"this is not a safetensors file at all")
    return path


def _huge_header(path: Path) -> Path:
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    return path


@pytest.mark.parametrize("make, args, words", [
    (_garbage, ["inspect"], "safetensors"),
    (_huge_header, ["inspect"], "safetensors"),
    (_checkpoint, ["inspect"], "full model checkpoint"),
    (_truncated, ["resize", "--rank", "2", "-o", "{out}"], "truncated"),
    (_checkpoint, ["edit", "--title", "x"], "full model checkpoint"),
    (write_lora, ["resize", "--rank", "0", "-o", "{out}"], "--rank must be"),
    (write_lora, ["resize", "--rank", "-3", "-o", "{out}"], "--rank must be"),
    (write_lora, ["resize", "--dynamic", "sv_fro", "--param", "1.5", "-o", "{out}"], "at most 1"),
    (write_lora, ["resize", "--rank", "2", "-o", "{lora}"], "is an input file"),
    (write_lora, ["merge", "--rank", "2", "-o", "{out}", "{lora}:x"], "not a number"),
    (write_lora, ["edit", "--cover", "{text}"], "not an image"),
    (write_lora, ["edit", "--cover", "{missing}"], "cover image not found"),
    (write_lora, ["edit"], "nothing to change"),
], ids=["not-safetensors", "huge-header", "checkpoint", "truncated", "edit-checkpoint",
        "rank-0", "rank-negative", "param", "output-is-input", "weight", "cover-text",
        "cover-missing", "edit-nothing"])
def test_bad_input_is_refused_and_the_file_untouched(tmp_path, capsys, make, args, words):
    lora = make(tmp_path / "in.safetensors")
    (tmp_path / "notes.txt").write_text("not a picture")
    before = file_sha(lora)
    command, *rest = args
    values = {"out": str(tmp_path / "out.safetensors"), "lora": str(lora),
              "text": str(tmp_path / "notes.txt"), "missing": str(tmp_path / "nope.png")}
    rest = [a.format(**values) for a in rest]
    argv = [command, *rest] if command == "merge" else [command, str(lora), *rest]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and "hint:" in err
    assert file_sha(lora) == before
    assert not (tmp_path / "out.safetensors").exists()
    assert not (tmp_path / "in.safetensors.backup").exists()


def test_the_command_line_prints_inspect_json_and_a_resize_report(tmp_path, capsys):
    path = write_lora(tmp_path / "in.safetensors")
    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dim"] == 8
    out = tmp_path / "r.safetensors"
    assert main(["resize", str(path), "--rank", "2", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"Wrote {out}" in text and "8->2" in text and "4->2" in text
    assert main(["merge", f"{path}:0.5", f"{out}:0.5", "--rank", "4", "-o",
                 str(tmp_path / "m.safetensors"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["modules"]) == len(MODULES)
