"""What a LoRA file is, read from its safetensors header alone: no torch, no tensor data
beyond the one-number ``alpha`` tensors.

Any kohya-format file (sd-scripts', LyCORIS', this project's, another trainer's): the base
model family it was trained for (metadata when it says, else the key layout and widths), the
network type (LoRA/LoCon, LoHa, LoKr; DoRA and others named), the ranks and alphas of its
linear and 3x3-convolution modules, how many modules it holds per part of the model (U-Net and
each text encoder; for Flux.1 its double and single blocks, CLIP-L and T5), and its metadata.
``lora-train inspect``, ``lora-train check`` (start weights that do not fit the base model)
and the wizard's Files screen read files through :func:`read_lora_header`.

Flux.1 LoRAs (``ss_base_model_version`` "flux1" / "chroma", sd-scripts' ``networks.lora_flux``
names) are family "flux" for every variant, as ``models.loading.ModelSource.family`` is; the
variant (dev, schnell, Chroma) is told from the metadata when it says. A Flux LoRA with another
trainer's key names (diffusers / PEFT ``lora_A``/``lora_B``: ai-toolkit, SimpleTuner) is read
only when the caller asks for it (``foreign_keys``: inspect, edit); it is never converted.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_core.errors import ModelError
from lora_core.family_registry import family, family_words
from lora_core.models.headers import read_header

# lora_te3_: sd-scripts' T5 modules (Flux.1; lora_te1_ is its CLIP-L).
LORA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_")
# The tensors that tell a module's type apart (LyCORIS' names, kohya-compat.md §6.7; the
# last two are diffusers' / PEFT's names for a LoRA's down weight, read in foreign files).
_KIND_OF_FIELD = {"lora_down.weight": "LoRA", "hada_w1_a": "LoHa", "lokr_w1": "LoKr",
                  "lokr_w1_a": "LoKr", "dora_scale": "DoRA", "oft_blocks": "OFT",
                  "oft_diag": "OFT", "diff": "full", "on_input": "IA3", "a1.weight": "GLoRA",
                  "lora_A.weight": "LoRA", "lora.down.weight": "LoRA"}
# A LoRA module's tensors as other trainers name them (diffusers / PEFT, ai-toolkit,
# SimpleTuner), and the kohya ones such files sometimes mix in.
_FOREIGN_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora.down.weight",
                     ".lora.up.weight", ".lora_down.weight", ".lora_up.weight", ".alpha")
_DOWN_SUFFIXES = (".lora_down.weight", ".lora_A.weight", ".lora.down.weight")
# sd-scripts' networks.lora_flux names (its blocks, and in_dims' input layers).
_FLUX_KOHYA_PREFIXES = ("lora_unet_double_blocks_", "lora_unet_single_blocks_",
                        "lora_unet_img_in", "lora_unet_txt_in", "lora_unet_time_in_",
                        "lora_unet_vector_in_", "lora_unet_guidance_in_")
# Flux's blocks in any trainer's names: BFL's double_blocks / single_blocks, diffusers'
# single_transformer_blocks (SD3 has transformer_blocks too, but no single ones).
_FLUX_BLOCKS = re.compile(r"(?:^|[._])(?:double_blocks|single_blocks|single_transformer_blocks)"
                          r"[._]\d")
# Flux's hidden width: its diffusers-named double blocks (transformer_blocks.N.attn.to_q) read
# 3072 wide, SD3's 1536 (medium) or 2432 (3.5 large).
FLUX_HIDDEN = 3072
NOT_A_LORA_HINT = "give a LoRA file trained with sd-scripts, LyCORIS or lora-train"
FOREIGN_KEYS_HINT = ("convert it to kohya names first (sd-scripts' networks/convert_flux_lora.py "
                     "--src ai-toolkit --dst sd-scripts); `lora-train inspect` and `edit` read "
                     "it as it is")


@dataclass
class LoraHeader:
    """The facts a LoRA file's header holds."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str]
    family: str | None  # "sd1" / "sd2" / "sdxl" / "flux", None when nothing tells
    network_type: str  # "LoRA", "LoCon", "LoHa", "LoKr", "DoRA", ... ("+" joined if mixed)
    modules: list[str]  # module names (kohya's; the file's own with foreign keys), sorted
    ranks: Counter = field(default_factory=Counter)  # rank -> modules (linear and 1x1)
    conv_ranks: Counter = field(default_factory=Counter)  # rank -> 3x3-conv modules
    alphas: dict[str, float] = field(default_factory=dict)  # module -> alpha
    key_style: str = "kohya"  # "kohya", or "diffusers" (lora_A/lora_B: another trainer's)

    @property
    def family_words(self) -> str:
        return family_words(self.family)

    @property
    def variant(self) -> str | None:
        """The variant of the family the file was trained on, where its metadata says
        (Flux.1: "dev" / "schnell" / "chroma"); None for families without variants."""
        return None if self.family is None else family(self.family).lora_variant(self.metadata)

    @property
    def base_words(self) -> str:
        """The base model in words: the variant where known ("Flux.1 dev", "Chroma"),
        else the family ("SD 1.x", "Flux.1")."""
        if self.family is None or self.variant is None:
            return self.family_words
        return family(self.family).variant_words(self.variant)

    @property
    def lineage(self) -> str | None:
        """Which LoRAs this one can be merged with (those of the same lineage): its
        family's answer (SD: the family; Flux.1: Chroma apart from dev / schnell). None
        when nothing tells."""
        return None if self.family is None else family(self.family).lora_lineage(self.variant)

    @property
    def counts(self) -> dict[str, int]:
        """Modules per part: "unet", "te" (SD 1/2), "te1" and "te2" (SDXL); for Flux.1
        its double / single blocks, other DiT layers, CLIP-L, T5 (the family's parts)."""
        if self.family is not None:
            return family(self.family).lora_parts(self.modules)
        parts: Counter = Counter(name.split("_")[1] for name in self.modules)
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


def read_lora_header(path: Path, *, foreign_keys: bool = False) -> LoraHeader:
    """The header facts of the LoRA file ``path``; ModelError naming the file when it is not
    a readable safetensors file or holds no kohya-format module. With ``foreign_keys`` a
    Flux LoRA with another trainer's key names (diffusers / PEFT) is read too
    (``key_style`` "diffusers"); without, it is refused with the way to convert it."""
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
    key_style = "kohya"
    if not names:
        names = _foreign_flux_modules(shapes)
        if names and not foreign_keys:
            raise ModelError(f"{path} is a Flux.1 LoRA with another trainer's key names "
                             f"(diffusers / PEFT style, e.g. {_first_key(shapes, names[0])}), "
                             "not kohya-format ones", FOREIGN_KEYS_HINT)
        key_style = "diffusers"
    if not names:
        what = ("a full model checkpoint, not a LoRA" if any(
            k.startswith(("model.diffusion_model.", "first_stage_model.", "conditioner."))
            for k in shapes) else "not a kohya-format LoRA (no lora_unet_/lora_te_ keys)")
        raise ModelError(f"{path} is {what}", NOT_A_LORA_HINT)
    family = "flux" if key_style == "diffusers" else lora_family(shapes, metadata)
    header = LoraHeader(path, shapes, metadata, family, network_type(shapes), names,
                        key_style=key_style)
    for key, shape in shapes.items():
        if key.endswith(_DOWN_SUFFIXES) and len(shape) >= 2:
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
    (Flux.1's double/single blocks and T5, SDXL's two text encoders and SAI-layout U-Net
    blocks) and widths (SD 2.x's 1024-wide text encoder and cross attention against SD 1.x's
    768). None when nothing tells."""
    version = metadata.get("ss_base_model_version", "")
    architecture = metadata.get("modelspec.architecture", "")
    if version.startswith(("flux", "chroma")) or architecture.startswith(("flux-1", "chroma")):
        return "flux"
    if version.startswith("sdxl") or architecture.startswith("stable-diffusion-xl"):
        return "sdxl"
    if version.startswith("sd_v2") or architecture.startswith("stable-diffusion-v2"):
        return "sd2"
    if version.startswith("sd_v1") or architecture.startswith("stable-diffusion-v1"):
        return "sd1"
    # Flux's CLIP-L modules are lora_te1_ as SDXL's first encoder's are: its blocks (or T5,
    # lora_te3_, without SDXL's/SD3's lora_te2_) tell it first.
    if any(k.startswith(_FLUX_KOHYA_PREFIXES) for k in shapes) or (
            any(k.startswith("lora_te3_") for k in shapes)
            and not any(k.startswith("lora_te2_") for k in shapes)):
        return "flux"
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


def _foreign_flux_modules(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """The module names of a Flux LoRA saved with another trainer's key names (diffusers /
    PEFT ``lora_A``/``lora_B``, also with BFL block names), [] for any other file."""
    modules = {key[: -len(suffix)] for key in shapes for suffix in _FOREIGN_SUFFIXES
               if key.endswith(suffix) and suffix != ".alpha"}
    if not modules:
        return []
    flux = any(_FLUX_BLOCKS.search(name) for name in modules) or any(
        re.search(r"(?:^|\.)transformer_blocks\.\d+\.attn\.to_q$", key[: -len(suffix)])
        and len(shape) == 2 and shape[1] == FLUX_HIDDEN
        for key, shape in shapes.items() for suffix in _DOWN_SUFFIXES if key.endswith(suffix))
    return sorted(modules) if flux else []


def _first_key(shapes: dict[str, tuple[int, ...]], module: str) -> str:
    return min(key for key in shapes if key.startswith(module + "."))


def family_mismatch(header: LoraHeader, model_family: str | None) -> str | None:
    """Why a LoRA does not fit a base model of ``model_family``, or None (also when either
    family is unknown)."""
    if model_family is None or header.family is None or header.family == model_family:
        return None
    return (f"{header.path} is a LoRA for {header.family_words} models, but the base model "
            f"is {family_words(model_family)}")
