"""Flux.1 (dev, schnell) and Chroma as a model family: the object the trainer, the checks, the
tools and the wizard ask (``lora_core.family_registry.family("flux")``).

The answers that need no torch are here; the rest call into ``training.py`` (loading, text,
objective, network, previews, file keys), ``checks.py`` and
``builtin.py``, imported when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lora_core.checks.problem import Problem
    from lora_core.models.bundle import ModelBundle, TextConditioning
    from lora_core.models.loading import ModelSource
    from lora_core.profile import NetworkSection, Profile, TrainingSection


def _runtime() -> Any:
    from lora_core.families.flux.training import FluxRuntime

    return FluxRuntime()


class FluxFamily:
    """A rectified-flow DiT with a 16-channel autoencoder, CLIP-L (not for Chroma) and T5."""

    name = "flux"
    label = "Flux.1"
    words = "Flux.1"
    sd_scripts_script = "flux_train_network.py"
    lora_module = "networks.lora_flux"  # sd-scripts' network_module of its LoRA
    bucket_step_multiple = 32  # the 2x2 packing needs 16; the profile's rule is 32
    levers = frozenset({"fp8_base", "fp8_base_unet", "blocks_to_swap",
                        "cpu_offload_checkpointing"})
    repeated_blocks = ("DoubleStreamBlock", "SingleStreamBlock")  # 19 and 38 in Flux.1
    sd_scripts_lacks: dict[str, str] = {}  # noqa: RUF012 (read only)
    profile_sections = ("flux",)  # the profile tables only it reads
    # The files beside the model that the wizard's model step asks for (section, key).
    model_files = (("flux", "ae"), ("flux", "clip_l"), ("flux", "t5xxl"))
    reads_model_vae = False  # its autoencoder is `[flux] ae` (`[model] vae` is refused)
    supports_base_weights = False  # not wired for Flux yet: the check refuses it by name

    # --- built-ins ----------------------------------------------------------------------
    def builtin_folder(self, name: str, cache_root: Path | None = None) -> Path:
        from lora_core.families.flux.builtin import tiny_flux_folder

        return tiny_flux_folder(cache_root)  # tiny-flux and tiny-chroma share one folder

    def ensure_builtin(self, name: str, cache_root: Path | None = None) -> Path:
        from lora_core.families.flux.builtin import ensure_tiny_flux

        return ensure_tiny_flux(cache_root)

    # --- its files (headers only) -------------------------------------------------------
    def claim_model_file(self, spec: str, path: Path, shapes: Any, metadata: Any
                         ) -> ModelSource | None:
        """A Flux.1 / Chroma transformer file as the base model (its ae / clip_l / t5xxl
        are ``[flux]``'s, checked with them); None for a file that is not one."""
        from lora_core.errors import ModelError
        from lora_core.families.flux.files import (
            inspect_flux_file,
            is_flux_transformer,
            misplaced_part,
        )
        from lora_core.models.loading import ModelSource

        if not is_flux_transformer(shapes):
            part = misplaced_part(shapes)  # its ae / clip_l / t5xxl given as the model
            if part is not None:
                raise ModelError(f"{path} is {part}, not a base model",
                                 "give the base model file here; a Flux run's transformer "
                                 "goes here and its ae / clip_l / t5xxl files in the [flux] "
                                 "section")
            return None
        info = inspect_flux_file(path, where="pretrained_model_name_or_path")
        return ModelSource(spec, "single_file", self.name, path.name, path, info.describe(),
                           metadata=metadata)

    def claim_model_folder(self, spec: str, folder: Path, index: Any) -> ModelSource | None:
        """None: a diffusers Flux folder is refused (sd-scripts trains Flux from its single
        files), naming what to give instead."""
        from lora_core.errors import ModelError

        class_name = str(index.get("_class_name", ""))
        if class_name.startswith("Flux"):
            raise ModelError(f"{folder} is a diffusers {class_name} folder; Flux.1 is trained "
                             "from its single files, as sd-scripts does",
                             "give the transformer .safetensors file (flux1-dev.safetensors, "
                             "or the folder's transformer as one file) here and the ae / "
                             "clip_l / t5xxl files in the [flux] section")
        return None

    def misplaced_part(self, shapes: Any) -> str | None:
        from lora_core.families.flux.files import misplaced_part

        return misplaced_part(shapes)

    # --- its LoRA files (what saving.lora_header and the tools ask) ---------------------
    @property
    def inspect_settings(self) -> tuple[tuple[str, str], ...]:
        from lora_core.families.flux.lora_files import INSPECT_SETTINGS

        return INSPECT_SETTINGS

    @property
    def inspect_hidden(self) -> frozenset[str]:
        from lora_core.families.flux.lora_files import INSPECT_HIDDEN

        return INSPECT_HIDDEN

    @property
    def inspect_labels(self) -> dict[str, str]:
        from lora_core.families.flux.lora_files import INSPECT_LABELS

        return INSPECT_LABELS

    @property
    def part_words(self) -> dict[str, str]:
        from lora_core.families.flux.lora_files import PART_WORDS

        return PART_WORDS

    def lora_variant(self, metadata: dict[str, str]) -> str | None:
        from lora_core.families.flux.lora_files import lora_variant

        return lora_variant(metadata)

    def variant_words(self, variant: str) -> str:
        from lora_core.families.flux.lora_files import VARIANT_WORDS

        return VARIANT_WORDS.get(variant, f"{self.words} {variant}")

    def lora_lineage(self, variant: str | None) -> str | None:
        from lora_core.families.flux.lora_files import lora_lineage

        return lora_lineage(variant)

    def lora_parts(self, modules: list[str]) -> dict[str, int]:
        from lora_core.families.flux.lora_files import lora_parts

        return lora_parts(modules)

    def merged_file_keys(self, variant: str | None) -> dict[str, str]:
        from lora_core.families.flux.lora_files import merged_file_keys

        return merged_file_keys(variant)

    def sd_scripts_told(self, profile: Profile, source: ModelSource) -> list[tuple[str, Any]]:
        """What flux_train_network.py must be told that the profile leaves unset:
        ``--model_type chroma`` for a Chroma file (it takes "flux" unless told), and
        ``--guidance_scale 0.0`` for Chroma (unset trains it at 0.0 here; sd-scripts'
        default is 3.5)."""
        from lora_core.errors import LoraError
        from lora_core.families.flux.files import inspect_flux_file

        told: list[tuple[str, Any]] = []
        model_type = None
        if not profile.flux.model_type and source.kind == "single_file":
            try:
                info = inspect_flux_file(source.path)
            except LoraError:
                info = None
            if info is not None and info.variant == "chroma":
                model_type = info.model_type
                told.append(("model_type", model_type))
        chroma = "chroma" in (model_type, profile.flux.model_type) \
            or profile.model.pretrained_model_name_or_path.strip() == "builtin:tiny-chroma"
        if chroma and profile.flux.guidance_scale is None:
            told.append(("guidance_scale", 0.0))
        return told

    # --- checks -------------------------------------------------------------------------
    def input_problems(self, profile: Profile, source: ModelSource) -> list[Problem]:
        """Its own files (ae, clip_l, t5xxl, tokenizers) and the options it refuses (SD's
        VAE, tokenizers, blocks ...)."""
        from lora_core.families.flux import checks

        return checks.flux_input_problems(profile) + checks.flux_option_problems(profile)

    def notes(self, profile: Profile, source: ModelSource) -> list[Problem]:
        return []  # its SD options are refused by name (flux/checks.py)

    def lever_problems(self, profile: Profile) -> list[Problem]:
        from lora_core.families.flux.checks import swap_limit_problems

        return swap_limit_problems(profile) if profile.training.blocks_to_swap else []

    # --- loading and training -----------------------------------------------------------
    def load(self, profile: Profile, dtype: Any) -> ModelBundle:
        from lora_core.families.flux.training import load_flux_bundle

        return load_flux_bundle(profile, dtype)

    def tokenize(self, bundle: ModelBundle, captions: list[str]) -> list[Any]:
        return _runtime().tokenize(bundle, captions)

    def encode(self, bundle: ModelBundle, input_ids_list: list[Any]) -> TextConditioning:
        return _runtime().encode(bundle, input_ids_list)

    def encode_text(self, bundle: ModelBundle, input_ids_list: list[Any]) -> Any:
        return _runtime().encode_text(bundle, input_ids_list)

    def unet_extra_conditioning(self, bundle: ModelBundle, **kwargs: Any) -> dict[str, Any]:
        return {}

    def text_cache_settings(self, bundle: ModelBundle) -> dict[str, Any]:
        """What decides a caption's T5 states besides the encoders and tokenizers: its
        token count and whether T5 attends with the padding mask."""
        state = bundle.family_state
        return {"variant": state.variant, "t5_max_length": state.t5_max_length,
                "apply_t5_attn_mask": state.apply_t5_attn_mask}

    def objective(self, bundle: ModelBundle, training: TrainingSection, device: Any) -> Any:
        from lora_core.families.flux.training import FlowObjective

        return FlowObjective(bundle.family_state, bundle.unet, training.loss_type)

    def block_layout(self) -> Any:
        # Flux has no SD block slots: down/mid/up weights and block dims are refused by
        # the check, so the SD layout only ever sees their unset values.
        from lora_core.network.blocks import SD_BLOCKS

        return SD_BLOCKS

    def build_network(self, bundle: ModelBundle, net: NetworkSection,
                      lr_weights: list[float] | None = None, shapes: Any = None) -> Any:
        return _runtime().build_network(bundle, net, lr_weights, shapes)

    def merge_base_weights(self, bundle: ModelBundle, paths: list[str],
                           multipliers: list[float]) -> list[str]:
        from lora_core.errors import ProfileError

        raise ProfileError("`[network] base_weights` is not wired for Flux models yet",
                           "remove base_weights")  # the check says so first

    def place_transformer(self, bundle: ModelBundle, training: TrainingSection, device: Any,
                          dtype: Any) -> bool:
        return _runtime().place_transformer(bundle, training, device, dtype)

    def enable_gradient_checkpointing(self, bundle: ModelBundle, cpu_offload: bool) -> None:
        bundle.unet.enable_gradient_checkpointing(cpu_offload=cpu_offload)  # model.Flux's

    def preview_sampler(self, bundle: ModelBundle) -> Any:
        return _FluxPreviews(bundle)

    def file_metadata(self, bundle: ModelBundle, profile: Profile,
                      metadata: dict[str, str]) -> dict[str, str]:
        from lora_core.families.flux.training import file_metadata

        return file_metadata(bundle, metadata, profile.saving.no_metadata)


class _FluxPreviews:
    """sd-scripts' Flux sampler, one image per call (``FluxRuntime.sample_image``)."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle, self.runtime = bundle, _runtime()

    def image(self, prompt: Any, seed: int, device: Any) -> Any:
        return self.runtime.sample_image(self.bundle, prompt, seed, device)


FAMILY = FluxFamily()
