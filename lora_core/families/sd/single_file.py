"""Single-file checkpoints (A1111 / LDM / SAI key layout) into diffusers models.

``load_model`` (loading.py) calls :func:`load_single_file` for ``.safetensors`` / ``.ckpt``
files and :func:`load_vae` for the profile's ``vae``. Conversion uses diffusers' own
converters (``diffusers.loaders.single_file_utils``) fed with configs built from the shipped
family configs and the checkpoint's shapes (``checkpoint.py``). Each part is built on the meta
device and its tensors are read one by one, cast to the training dtype as read and assigned
(``load_state_dict(assign=True)``): the U-Net peaks at one copy in the training dtype plus one
tensor in the file's dtype. ``.ckpt`` files are read with ``torch.load(weights_only=True)``;
one that needs more is refused without running its code. Every tensor of a part must be used
and every parameter filled, else a ModelError names the file and the keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lora_core.errors import ModelError
from lora_core.families.sd import checkpoint as ckpt
from lora_core.models.files import (
    DAMAGED_HINT,
    SAFETENSORS_SUFFIX,
    first_line,
    no_transformers_progress_bar,
)
from lora_core.models.headers import TensorEntry, read_entries
from lora_core.models.pickle_scan import code_error

# safetensors dtype names -> torch dtype attribute names (the ones torch has)
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
              "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
              "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
              "U16": "uint16", "U32": "uint32", "U64": "uint64"}


class _Reader:
    """The tensors of a checkpoint file, read one at a time.

    ``.safetensors``: each tensor's bytes are read from the file (the header gives their
    offsets) into a buffer of its own, cast and dropped: the process holds one
    tensor in the file's dtype at a time, never a mapping of the whole file (a memory-mapped
    read would count every byte of a 2-7 GB file in the process's resident memory while
    loading). ``.ckpt`` / ``.pt``: ``torch.load(weights_only=True, mmap=True)``; the tensors
    stay in the mapped file until read. A pickle that needs anything beyond tensors and plain
    containers is refused by torch's restricted unpickler before any of its code runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, TensorEntry] = {}
        self._state: dict[str, Any] = {}
        if path.suffix.lower() == SAFETENSORS_SUFFIX:
            self._data_start, self._entries, self.metadata = read_entries(path)
            self.shapes = {key: entry[1] for key, entry in self._entries.items()}
        else:
            self._state = _torch_load(path)
            self.metadata = {}
            self.shapes = {k: tuple(v.shape) for k, v in self._state.items()}

    def _read(self, key: str) -> Any:
        import torch

        if not self._entries:
            return self._state[key]
        dtype_name, shape, start, end = self._entries[key]
        torch_dtype = getattr(torch, _ST_DTYPES.get(dtype_name, ""), None)
        if torch_dtype is None:
            raise ValueError(f"unsupported dtype {dtype_name}")
        data = bytearray(end - start)
        with open(self.path, "rb", buffering=0) as fh:  # unbuffered: straight into data
            fh.seek(self._data_start + start)
            view, done = memoryview(data), 0
            while done < len(data):  # a raw read may return less than asked
                got = fh.readinto(view[done:])
                if not got:
                    raise OSError(f"the file ends before tensor {key!r} does")
                done += got
        if not data:
            return torch.empty(shape, dtype=torch_dtype)
        return torch.frombuffer(data, dtype=torch_dtype).reshape(shape)

    def get(self, key: str, dtype: Any) -> Any:
        """The tensor ``key`` as ``dtype`` (floating tensors only; others as stored)."""
        try:
            tensor = self._read(key)
        except Exception as exc:
            raise ModelError(f"cannot read tensor {key!r} from {self.path}: "
                             f"{first_line(exc)}", DAMAGED_HINT) from exc
        return tensor.to(dtype) if tensor.is_floating_point() else tensor

    def take(self, prefix: str, dtype: Any, skip: Any = None, fp8: bool = False
             ) -> dict[str, Any]:
        """Every tensor under ``prefix`` (minus ignorable ones and ``skip(key)``), cast;
        with ``fp8`` the Linear and Conv2d weights (2-D / 4-D ``.weight``s) to float8 as each
        is read, so the wide copy of the whole part never exists (``fp8_base``)."""
        from lora_core.models.fp8 import FP8_DTYPE

        def cast(key: str) -> Any:
            wide = fp8 and key.endswith(".weight") and len(self.shapes[key]) in (2, 4)
            return self.get(key, FP8_DTYPE if wide else dtype)

        return {k: cast(k) for k in self.shapes
                if k.startswith(prefix) and not ckpt.is_ignorable(k)
                and not (skip and skip(k))}


def _torch_load(path: Path) -> dict[str, Any]:
    import pickle

    import torch

    def load(mmap: bool) -> Any:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            data = load(True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            data = load(False)  # a legacy (pre-zip) torch file cannot be memory-mapped
    except pickle.UnpicklingError as exc:
        # torch's message starts with a paragraph about its weights_only default; the line
        # that matters names the function the pickle wanted to call.
        wanted = re.search(r"GLOBAL ([\w.]+)", str(exc), re.IGNORECASE)
        if wanted is None:
            raise ModelError(f"cannot read {path} as a PyTorch checkpoint: the pickle inside "
                             "is damaged or not a checkpoint", DAMAGED_HINT) from None
        raise code_error(path, wanted.group(1)) from None
    except Exception as exc:
        raise ModelError(f"cannot read {path} as a PyTorch checkpoint: {first_line(exc)}",
                         DAMAGED_HINT) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelError(f"{path} holds a {type(data).__name__}, not a state dict",
                         "give a Stable Diffusion checkpoint")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def load_single_file(path: Path, dtype: Any, vae_dtype: Any, vae_replaced: bool,
                      tokenizer_dir: Path | None, fp8_unet: bool = False) -> dict[str, Any]:
    """The parts of an LDM-layout checkpoint; ``fp8_unet``: the U-Net's Linear and Conv2d
    weights read as float8 (``fp8_base``: the family's placement makes them fp8 layers)."""
    from lora_core.models.tokenizers import load_tokenizers

    reader = _Reader(path)
    arch = ckpt.read_architecture(reader.shapes, path)
    if arch.vae is None and not vae_replaced:
        raise ModelError(f"{path} contains no VAE (no {ckpt.VAE_PREFIX}* tensors)",
                         "set `[model] vae` to the VAE this model is meant to be used with")
    # Tokenizers first: a missing one fails in a second, not after gigabytes were read.
    tokenizers = load_tokenizers(arch.family, None, tokenizer_dir)
    unet = _single_file_unet(reader, arch, dtype, fp8_unet)
    vae = None
    if not vae_replaced:
        assert arch.vae is not None
        vae = _ldm_vae(reader.take(ckpt.VAE_PREFIX, vae_dtype), arch.family, arch.vae, path)
    with no_transformers_progress_bar():
        encoders = [_single_file_text_encoder(reader, arch, i, dtype)
                    for i in range(len(arch.text_encoders))]
    return {"family": arch.family, "unet": unet, "vae": vae, "text_encoders": encoders,
            "tokenizers": tokenizers, "own_vae": not vae_replaced}


def _empty(build: Any) -> Any:
    """``build()`` with parameters on the meta device (buffers stay real: position ids)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return build()


def _single_file_unet(reader: _Reader, arch: ckpt.Architecture, dtype: Any,
                      fp8: bool = False) -> Any:
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = ckpt.unet_config(arch)
    # sd-scripts builds SD 2.x U-Nets from single files with 1x1-conv proj_in / proj_out,
    # reshaping the linear weights, so LoRA files get 4-D proj tensors (§6.1). Do the same.
    conv_proj = arch.family == "sd2" and arch.unet.linear_proj
    if conv_proj:
        config["use_linear_projection"] = False
    source = reader.take(ckpt.UNET_PREFIX, dtype, fp8=fp8)
    converted = convert_ldm_unet_checkpoint(source, config)
    if conv_proj:
        converted = {k: (v.reshape(*v.shape, 1, 1) if k.endswith(("proj_in.weight",
                                                                   "proj_out.weight"))
                         and v.ndim == 2 else v) for k, v in converted.items()}
    _check_all_used("U-Net", source, converted, reader.path)
    unet = _empty(lambda: UNet2DConditionModel(**config))
    _assign(unet, converted, "U-Net", reader.path, config)
    return unet


def _ldm_vae(source: dict[str, Any], family: str, vae: ckpt.VaeArch, path: Path) -> Any:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = ckpt.vae_config(family, vae)
    converted = convert_ldm_vae_checkpoint(source, config)
    _check_all_used("VAE", source, converted, path)
    model = _empty(lambda: AutoencoderKL(**config))
    _assign(model, converted, "VAE", path)
    return model


def _single_file_text_encoder(reader: _Reader, arch: ckpt.Architecture, index: int,
                              dtype: Any) -> Any:
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_open_clip_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    te = arch.text_encoders[index]
    config = ckpt.text_encoder_config(arch.family, index, te)
    config.pop("model_type", None)
    cls = CLIPTextModelWithProjection if arch.family == "sdxl" and index == 1 else CLIPTextModel
    model = _empty(lambda: cls(CLIPTextConfig(**config)))
    if te.kind == "open_clip":
        # SD 2.x: OpenCLIP's last block and text_projection are unused (§11) and not loaded.
        dropped = (f"{te.prefix}transformer.resblocks.{te.layers}.",
                   f"{te.prefix}text_projection") if arch.family == "sd2" else ()
        source = reader.take(te.prefix, dtype, skip=lambda k: k.startswith(dropped))
        converted = convert_open_clip_checkpoint(model, source, prefix=te.prefix)
    else:
        source = reader.take(te.prefix, dtype)
        converted = convert_ldm_clip_checkpoint(source, remove_prefix=te.prefix)
    # One key layout for both transformers generations: "text_model." + inner path;
    # transformers >= 5.6 has no text_model wrapper in CLIPTextModel, so strip it there.
    normal = {}
    for key, value in converted.items():
        inner = key.removeprefix("text_model.")
        normal[key if key.startswith("text_projection") else f"text_model.{inner}"] = value
    if not hasattr(model, "text_model"):
        normal = {k.removeprefix("text_model."): v for k, v in normal.items()}
    _check_all_used(f"text encoder {index + 1}" if len(arch.text_encoders) > 1
                    else "text encoder", source, normal, reader.path)
    _assign(model, normal, "text encoder", reader.path)
    return model


def _check_all_used(what: str, source: dict[str, Any], converted: dict[str, Any],
                    path: Path) -> None:
    """Every weight of the part must arrive: the converters only re-key, split (OpenCLIP's
    fused q/k/v) or reshape, so the element counts before and after must match. A mismatch
    means the converter did not understand some tensors; name them."""
    before = sum(t.numel() for t in source.values())
    after = sum(t.numel() for t in converted.values())
    if before == after:
        return
    used = {t.untyped_storage().data_ptr() for t in converted.values()}
    copied = ("in_proj_weight", "in_proj_bias", "text_projection")  # split or transposed
    left = [k for k, t in source.items()
            if t.untyped_storage().data_ptr() not in used and not k.endswith(copied)]
    raise ModelError(f"{path}: {len(left) or 'some'} {what} tensor(s) would not be loaded "
                     f"({', '.join(left[:4]) or f'{before - after} elements'}"
                     f"{' ...' if len(left) > 4 else ''})",
                     "the checkpoint has an unusual layout for this family; use the original "
                     "file or the model's diffusers folder")


def _assign(model: Any, converted: dict[str, Any], what: str, path: Path,
            unet_config: dict[str, Any] | None = None) -> None:
    """Put ``converted`` into the meta-device ``model`` as its parameters (no copy)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong = [k for k in set(expected) & set(converted)
             if tuple(expected[k].shape) != tuple(converted[k].shape)]
    if missing:
        raise ModelError(f"{path} is missing {len(missing)} {what} weight(s): "
                         f"{', '.join(_file_key(k, unet_config) for k in missing[:4])}"
                         f"{' ...' if len(missing) > 4 else ''}",
                         "the checkpoint is incomplete or pruned too far; use the full file")
    if unexpected or wrong:
        names = [*(_file_key(k, unet_config) for k in unexpected),
                 *(f"{_file_key(k, unet_config)} {tuple(converted[k].shape)}" for k in wrong)]
        raise ModelError(f"{path}: {what} weights do not fit its detected architecture "
                         f"({', '.join(names[:4])}{' ...' if len(names) > 4 else ''})",
                         "the checkpoint has an unusual layout; use the original file or the "
                         "model's diffusers folder")
    model.load_state_dict(converted, strict=True, assign=True)


def _file_key(key: str, unet_config: dict[str, Any] | None) -> str:
    """A missing U-Net weight as the file would name it (``model.diffusion_model.…``)."""
    if unet_config is None:
        return key
    try:
        from lora_core.families.sd.unet_layout import diffusers_to_original

        return ckpt.UNET_PREFIX + diffusers_to_original(key, unet_config)
    except (ImportError, ModelError):
        return key


# --- separate VAE ---------------------------------------------------------------------------


def load_vae(path: Path, family: str, dtype: Any) -> Any:
    """``[model] vae``: a diffusers folder (or its ``vae/``), a diffusers-format state dict
    (.safetensors / .bin), or an LDM file, full (``first_stage_model.*``) or VAE-only (§11)."""
    if path.is_dir():
        from diffusers import AutoencoderKL

        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise ModelError(f"the VAE folder {path} has no config.json (nor vae/config.json)",
                             "give a diffusers VAE folder or a VAE file")
        try:
            return AutoencoderKL.from_pretrained(folder, torch_dtype=dtype,
                                                 local_files_only=True)
        except Exception as exc:  # any loader failure names the folder
            raise ModelError(f"could not load the VAE from {folder}: {first_line(exc)}",
                             DAMAGED_HINT) from exc
    reader = _Reader(path)
    keys = list(reader.shapes)
    if any(k.startswith(ckpt.VAE_PREFIX) for k in keys):
        arch = ckpt.read_vae(reader.shapes, ckpt.VAE_PREFIX, path)
        return _ldm_vae(reader.take(ckpt.VAE_PREFIX, dtype), family, arch, path)
    if any(k.startswith("encoder.down.") for k in keys):
        arch = ckpt.read_vae(reader.shapes, "", path)
        return _ldm_vae(reader.take("", dtype), family, arch, path)
    if any(k.startswith("encoder.down_blocks.") for k in keys):
        from diffusers import AutoencoderKL

        config = ckpt.vae_config(family, ckpt.read_diffusers_vae(reader.shapes, path))
        state = reader.take("", dtype)
        model = _empty(lambda: AutoencoderKL(**config))
        _assign(model, state, "VAE", path)
        return model
    raise ModelError(f"{path} is not a VAE (no encoder/decoder tensors)",
                     "set `[model] vae` to a VAE file or folder, or leave it empty")
