"""What a LoRA file is, read from its safetensors header alone: no torch, no tensor data
beyond the one-number ``alpha`` tensors.

Any kohya-format file (sd-scripts', LyCORIS', this project's, another trainer's): the base
model family it was trained for (metadata when it says, else the key layout and widths), the
network type (LoRA/LoCon, LoHa, LoKr; DoRA and others named), the ranks and alphas of its
linear and 3x3-convolution modules, how many modules it holds for the U-Net and each text
encoder, and its metadata. ``lora-train inspect``, ``lora-train check`` (start weights that do
not fit the base model) and the wizard's Files screen read files through :func:`read_lora_header`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_core.errors import ModelError
from lora_core.models.checkpoint import read_header

FAMILY_WORDS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
LORA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
# The tensors that tell a module's type apart (LyCORIS' names, kohya-compat.md §6.7).
_KIND_OF_FIELD = {"lora_down.weight": "LoRA", "hada_w1_a": "LoHa", "lokr_w1": "LoKr",
                  "lokr_w1_a": "LoKr", "dora_scale": "DoRA", "oft_blocks": "OFT",
                  "oft_diag": "OFT", "diff": "full", "on_input": "IA3", "a1.weight": "GLoRA"}
NOT_A_LORA_HINT = "give a LoRA file trained with sd-scripts, LyCORIS or lora-train"


@dataclass
class LoraHeader:
    """The facts a LoRA file's header holds."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str]
    family: str | None  # "sd1" / "sd2" / "sdxl", None when nothing tells
    network_type: str  # "LoRA", "LoCon", "LoHa", "LoKr", "DoRA", ... ("+" joined if mixed)
    modules: list[str]  # kohya module names, sorted
    ranks: Counter = field(default_factory=Counter)  # rank -> modules (linear and 1x1)
    conv_ranks: Counter = field(default_factory=Counter)  # rank -> 3x3-conv modules
    alphas: dict[str, float] = field(default_factory=dict)  # module -> alpha

    @property
    def family_words(self) -> str:
        return FAMILY_WORDS.get(self.family or "", "an unknown model family")

    @property
    def counts(self) -> dict[str, int]:
        """Modules per part: "unet", "te" (SD 1/2), "te1" and "te2" (SDXL)."""
        parts: Counter = Counter()
        for name in self.modules:
            parts[name.split("_")[1]] += 1  # lora_unet_..., lora_te_..., lora_te1_...
        return dict(parts)

    @property
    def dim(self) -> int | None:
        """The most common linear rank (sd-scripts' ss_network_dim)."""
        return self.ranks.most_common(1)[0][0] if self.ranks else None

    @property
    def conv_dim(self) -> int | None:
        return self.conv_ranks.most_common(1)[0][0] if self.conv_ranks else None

    def alpha_of(self, conv: bool) -> float | None:
        """The most common alpha of the linear (or 3x3-conv) modules."""
        wanted = [a for name, a in self.alphas.items() if self.is_conv3x3(name) == conv]
        return Counter(wanted).most_common(1)[0][0] if wanted else None

    def is_conv3x3(self, name: str) -> bool:
        """Whether module ``name`` adapts a 3x3 (or larger) convolution, as its tensors
        show: a LoRA's 4-d down weight, a Tucker core, a LoKr's full 4-d second factor."""
        for suffix in ("lora_down.weight", "lokr_w2", "hada_t1", "lokr_t2", "lora_mid.weight"):
            shape = self.shapes.get(f"{name}.{suffix}")
            if shape is not None and len(shape) == 4 and shape[2:] != (1, 1):
                return True
        return False

    def json_metadata(self, key: str) -> Any:
        """A JSON-valued metadata key (ss_tag_frequency, ss_dataset_dirs...), None when
        absent or not JSON."""
        try:
            return json.loads(self.metadata[key])
        except (KeyError, ValueError):
            return None


def read_lora_header(path: Path) -> LoraHeader:
    """The header facts of the LoRA file ``path``; ModelError naming the file when it is not
    a readable safetensors file or holds no kohya-format module."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"LoRA file not found: {path}", "check the path")
    # Judged by content, not by name: "x.safetensors.backup" (what `edit` keeps) is a LoRA.
    try:
        shapes, metadata = read_header(path)
    except ModelError as exc:
        if path.suffix.lower() == ".safetensors":
            raise
        raise ModelError(f"{path} is not a .safetensors file ({exc.message})",
                         NOT_A_LORA_HINT) from None
    names = sorted({key.partition(".")[0] for key in shapes if key.startswith(LORA_PREFIXES)})
    if not names:
        what = ("a full model checkpoint, not a LoRA" if any(
            k.startswith(("model.diffusion_model.", "first_stage_model.", "conditioner."))
            for k in shapes) else "not a kohya-format LoRA (no lora_unet_/lora_te_ keys)")
        raise ModelError(f"{path} is {what}", NOT_A_LORA_HINT)
    header = LoraHeader(path, shapes, metadata, lora_family(shapes, metadata),
                        network_type(shapes), names)
    for key, shape in shapes.items():
        if key.endswith(".lora_down.weight") and len(shape) >= 2:
            conv = len(shape) == 4 and shape[2:] != (1, 1)
            (header.conv_ranks if conv else header.ranks)[shape[0]] += 1
        elif key.endswith((".hada_w1_a", ".lokr_w1_a", ".lokr_w2_a")) and len(shape) == 2:
            header.ranks[shape[1]] += 1
    header.alphas = _alphas(path, [k for k in shapes if k.endswith(".alpha")])
    return header


def _alphas(path: Path, keys: list[str]) -> dict[str, float]:
    """Each module's alpha (one number each; read with numpy, not torch)."""
    if not keys:
        return {}
    from safetensors import safe_open

    alphas = {}
    try:
        with safe_open(str(path), framework="numpy") as fh:
            for key in keys:
                value = fh.get_tensor(key)
                alphas[key.rpartition(".")[0]] = float(value.reshape(-1)[0]) \
                    if value.size else math.nan
    except Exception as exc:  # a tensor whose bytes are missing or of an odd dtype
        raise ModelError(f"cannot read the alpha values of {path}: {exc}",
                         "the file is damaged or incomplete; copy it again") from None
    return alphas


def network_type(shapes: dict[str, tuple[int, ...]]) -> str:
    """LoRA, LoCon (LoRA with 3x3 convolutions), LoHa, LoKr, DoRA, ... ("+" joined when a
    file mixes them)."""
    kinds = {kind for key in shapes for suffix, kind in _KIND_OF_FIELD.items()
             if key.endswith("." + suffix)}
    if "LoRA" in kinds and any(key.endswith(".lora_down.weight") and len(shape) == 4
                               and shape[2:] != (1, 1) for key, shape in shapes.items()):
        kinds = (kinds - {"LoRA"}) | {"LoCon"}
    return "+".join(sorted(kinds)) or "unknown"


def lora_family(shapes: dict[str, tuple[int, ...]], metadata: dict[str, str]) -> str | None:
    """The base-model family a kohya-format LoRA was trained for: its metadata when it says
    (``ss_base_model_version``, ``modelspec.architecture``, ``ss_v2``), else its key layout
    (SDXL's two text encoders and SAI-layout U-Net blocks) and widths (SD 2.x's 1024-wide
    text encoder and cross attention against SD 1.x's 768). None when nothing tells."""
    version = metadata.get("ss_base_model_version", "")
    architecture = metadata.get("modelspec.architecture", "")
    if version.startswith("sdxl") or architecture.startswith("stable-diffusion-xl"):
        return "sdxl"
    if version.startswith("sd_v2") or architecture.startswith("stable-diffusion-v2"):
        return "sd2"
    if version.startswith("sd_v1") or architecture.startswith("stable-diffusion-v1"):
        return "sd1"
    if any(k.startswith(("lora_te1_", "lora_te2_", "lora_unet_input_blocks_",
                         "lora_unet_output_blocks_", "lora_unet_middle_block_"))
           for k in shapes):
        return "sdxl"
    if metadata.get("ss_v2") in ("True", "False"):
        return "sd2" if metadata["ss_v2"] == "True" else "sd1"
    widths = {shape[1] for key, shape in shapes.items() if len(shape) >= 2 and (
        (key.startswith("lora_te_") and "self_attn_q_proj.lora_down" in key)
        or "attn2_to_k.lora_down" in key)}
    if 1024 in widths:
        return "sd2"
    if 768 in widths:
        return "sd1"
    return None


def family_mismatch(header: LoraHeader, model_family: str | None) -> str | None:
    """Why a LoRA does not fit a base model of ``model_family``, or None (also when either
    family is unknown)."""
    if model_family is None or header.family is None or header.family == model_family:
        return None
    return (f"{header.path} is a LoRA for {header.family_words} models, but the base model "
            f"is {FAMILY_WORDS.get(model_family, model_family)}")
