"""The answers SD 1.x, SD 2.x and SDXL give alike, with each variant's facts as attributes.

A variant module (``families/sd1.py`` ...) makes one :class:`StableDiffusionFamily` subclass
that sets its facts (names, ``ss_*`` strings, LoRA naming, bucket rule, text encoding) and
inherits the rest: loading through ``families.sd.loading`` (a checkpoint, a diffusers folder or a
built-in, with the architecture read from the tensors), the DDPM objective, sd-scripts'
``networks.lora`` network, the pipeline sampler and the checks of an SD profile.

No torch at import: every method imports what it uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_core.network.blocks import SD_BLOCKS, BlockLayout
from lora_core.network.naming import SD_NAMING, LoraNaming

if TYPE_CHECKING:
    from lora_core.checks.problem import Problem
    from lora_core.models.bundle import ModelBundle
    from lora_core.models.loading import ModelSource
    from lora_core.profile import NetworkSection, Profile, TrainingSection


class StableDiffusionFamily:
    """A U-Net, a 4-channel VAE and CLIP text encoders, trained on the DDPM schedule."""

    name = "sd1"
    label = "SD1"
    words = "SD 1.x"
    sd_scripts_script = "train_network.py"
    lora_module = "networks.lora"  # sd-scripts' network_module of its LoRA
    # sd-scripts asserts bucket_reso_steps % 64 for SD 1.x / 2.x (32 for SDXL).
    bucket_step_multiple = 64
    levers: frozenset[str] = frozenset({"fp8_base", "fp8_base_unet",
                                        "cpu_offload_checkpointing"})
    # diffusers' U-Net blocks that repeat (resnets; the attention's transformer blocks).
    repeated_blocks: tuple[str, ...] = ("ResnetBlock2D", "BasicTransformerBlock")
    # sd-scripts' train_network.py calls unet.enable_gradient_checkpointing(cpu_offload=True),
    # which its SD 1.x / 2.x / SDXL U-Nets do not take (a TypeError after the model loads).
    sd_scripts_lacks: dict[str, str] = {  # noqa: RUF012 (read only)
        "cpu_offload_checkpointing": "sd-scripts' SD 1.x / 2.x / SDXL U-Nets take no CPU "
        "offload (its train_network.py would stop with a TypeError once the model is "
        "loaded); lora-train offloads them itself"}
    profile_sections: tuple[str, ...] = ()  # the optional profile tables only it reads
    model_files: tuple[tuple[str, str], ...] = ()  # all its parts are in the one model
    reads_model_vae = True
    supports_base_weights = True
    naming: LoraNaming = SD_NAMING
    blocks: BlockLayout = SD_BLOCKS
    v2 = False  # ss_v2, and what `[model] v2` must say
    modelspec_implementation = "diffusers"

    # --- metadata strings (kohya-compat.md §7.2, §7.4) ----------------------------------
    def base_model_version(self, v_parameterization: bool) -> str:
        """``ss_base_model_version`` as sd-scripts writes it."""
        return f"sd_{'v2' if self.v2 else 'v1'}{'_v' if v_parameterization else ''}"

    def modelspec_architecture(self, v_parameterization: bool) -> str:
        """``modelspec.architecture`` of a LoRA for this base model (SAI ModelSpec)."""
        return "stable-diffusion-v1/lora"

    def clip_skip_note(self, clip_skip: int) -> str | None:
        """What ``check`` says about ``[model] clip_skip`` for this family, or None."""
        return None

    # --- its files (headers only) -------------------------------------------------------
    def claim_model_file(self, spec: str, path: Path, shapes: Any, metadata: Any
                         ) -> ModelSource | None:
        """An LDM-layout checkpoint, whichever SD variant: ``checkpoint.py`` tells SD 1.x,
        2.x and SDXL apart from the U-Net's and text encoders' shapes (the first SD family
        asked answers for the three). Asked after the families with layouts of their own,
        it refuses what is not an SD checkpoint, naming the file."""
        from lora_core.families.sd.loading import claim_file

        return claim_file(spec, path, shapes, metadata)

    def claim_model_folder(self, spec: str, folder: Path, index: Any) -> ModelSource | None:
        """A diffusers Stable Diffusion folder; None for another pipeline's."""
        from lora_core.families.sd.loading import claim_folder

        return claim_folder(spec, folder, index)

    def misplaced_part(self, shapes: Any) -> str | None:
        return None

    # --- its LoRA files (what saving.lora_header and the tools ask) ---------------------
    inspect_settings: tuple[tuple[str, str], ...] = ()  # its own ss_* rows for `inspect`
    inspect_hidden: frozenset[str] = frozenset()  # common rows that mean nothing for it
    inspect_labels: dict[str, str] = {}  # its labels for common rows
    part_words: dict[str, str] = {}  # words for its parts in `lora_parts`

    def lora_variant(self, metadata: dict[str, str]) -> str | None:
        return None  # no variants apart from the family

    def variant_words(self, variant: str) -> str:
        return self.words

    def lora_lineage(self, variant: str | None) -> str | None:
        return self.name  # its LoRAs merge with each other

    def lora_parts(self, modules: list[str]) -> dict[str, int]:
        """Modules per part: "unet", "te" (SD 1/2), "te1" and "te2" (SDXL)."""
        parts: dict[str, int] = {}
        for name in modules:
            part = name.split("_")[1]  # lora_unet_..., lora_te_..., lora_te1_...
            parts[part] = parts.get(part, 0) + 1
        return parts

    def merged_file_keys(self, variant: str | None) -> dict[str, str]:
        """The base model version and network module for a merged file whose first input
        does not say them."""
        return {"ss_network_module": "networks.lora",
                "ss_base_model_version": self.base_model_version(False)}

    def sd_scripts_told(self, profile: Profile, source: ModelSource) -> list[tuple[str, Any]]:
        """Options its sd-scripts script must be given that the profile leaves unset: none
        (the prediction type is resolved into the profile before export)."""
        return []

    # --- built-ins ----------------------------------------------------------------------
    def builtin_folder(self, name: str, cache_root: Path | None = None) -> Path:
        from lora_core.families.sd.builtin import sd_builtin_folder

        return sd_builtin_folder(name, cache_root)

    def ensure_builtin(self, name: str, cache_root: Path | None = None) -> Path:
        from lora_core.families.sd.builtin import ensure_sd_builtin

        return ensure_sd_builtin(name, cache_root)

    # --- checks -------------------------------------------------------------------------
    def input_problems(self, profile: Profile, source: ModelSource) -> list[Problem]:
        from lora_core.families.sd.checks import model_problems

        return model_problems(profile, source, self if source.family else None)

    def notes(self, profile: Profile, source: ModelSource) -> list[Problem]:
        from lora_core.checks.problem import warning
        from lora_core.families.sd.checks import prediction_notes, schedule_notes

        notes = prediction_notes(profile, source)
        text = self.clip_skip_note(profile.model.clip_skip) \
            if profile.model.clip_skip != 1 and source.family else None
        if text:
            notes.append(warning(text, section="model", key="clip_skip"))
        return notes + schedule_notes(profile)

    def lever_problems(self, profile: Profile) -> list[Problem]:
        return []

    # --- loading and training -----------------------------------------------------------
    def load(self, profile: Profile, dtype: Any) -> ModelBundle:
        """The checkpoint, folder or built-in, with the profile's VAE, tokenizers, prediction
        type and text settings (``families.sd.loading.load_model``)."""
        import torch

        from lora_core.families.sd.loading import load_model
        from lora_core.models.bundle import TextSettings

        return load_model(
            profile.model.pretrained_model_name_or_path, profile.base_dir, dtype,
            vae_dtype=torch.float32 if profile.model.no_half_vae else None,
            vae_spec=profile.model.vae or None,
            tokenizer_dir=profile.path("model", "tokenizer_cache_dir"),
            v_parameterization=profile.model.v_parameterization,
            text=TextSettings(clip_skip=profile.model.clip_skip,
                              max_token_length=profile.dataset.max_token_length,
                              weighted_captions=profile.dataset.weighted_captions),
            # fp8 as the weights are read, unless base_weights are merged into them first
            # (then place_transformer converts after the merge).
            fp8_unet=(profile.training.fp8_base or profile.training.fp8_base_unet)
            and not profile.network.base_weights)

    def unet_extra_conditioning(self, bundle: ModelBundle, **kwargs: Any) -> dict[str, Any]:
        return {}

    def text_cache_settings(self, bundle: ModelBundle) -> dict[str, Any]:
        return {}  # its encoding is decided by bundle.text (clip_skip, max_token_length)

    def objective(self, bundle: ModelBundle, training: TrainingSection, device: Any) -> Any:
        from lora_core.families.sd.objective import DiffusionObjective

        return DiffusionObjective(bundle, training, device)

    def block_layout(self) -> BlockLayout:
        return self.blocks

    def build_network(self, bundle: ModelBundle, net: NetworkSection,
                      lr_weights: list[float] | None = None, shapes: Any = None) -> Any:
        from lora_core.network.build import build_network

        return build_network(bundle.unet, bundle.text_encoders, net, lr_weights,
                             naming=self.naming, layout=self.blocks, shapes=shapes)

    def merge_base_weights(self, bundle: ModelBundle, paths: list[str],
                           multipliers: list[float]) -> list[str]:
        from lora_core.network.merge import merge_base_weights

        return merge_base_weights(bundle.unet, bundle.text_encoders, paths, multipliers,
                                  naming=self.naming)

    def place_transformer(self, bundle: ModelBundle, training: TrainingSection, device: Any,
                          dtype: Any) -> bool:
        """False: the trainer places the U-Net. With ``fp8_base`` / ``fp8_base_unet`` its
        Linear and Conv2d weights become float8 first (after base_weights were merged in, in
        the file's precision), and with ``fp8_base`` the text encoders' Linears too, as
        sd-scripts stores them; each layer computes in the training precision."""
        if training.fp8_base or training.fp8_base_unet:
            import torch

            from lora_core.models.fp8 import to_fp8

            # Under mixed precision each layer widens its weight straight to that dtype (not
            # to the fp32 of an input autocast then casts again); in fp32, to the input's.
            compute = None if dtype == torch.float32 else dtype
            to_fp8(bundle.unet, compute, convs=True)
            if training.fp8_base:
                for encoder in bundle.text_encoders:
                    to_fp8(encoder, compute)
        return False

    def enable_gradient_checkpointing(self, bundle: ModelBundle, cpu_offload: bool) -> None:
        """diffusers' checkpointing of the U-Net's resnets and transformer blocks; with
        ``cpu_offload`` through ``offloaded_checkpoint``, which diffusers calls in place of
        torch's ``checkpoint`` (its ``gradient_checkpointing_func``)."""
        if not cpu_offload:  # diffusers' default: torch's non-reentrant checkpoint
            bundle.unet.enable_gradient_checkpointing()
            return
        from lora_core.models.offloaded_checkpointing import offloaded_checkpoint

        # The keyword came with diffusers 0.33 (the floor pyproject asks for).
        bundle.unet.enable_gradient_checkpointing(gradient_checkpointing_func=offloaded_checkpoint)

    def preview_sampler(self, bundle: ModelBundle) -> Any:
        from lora_core.families.sd.sampler import PipelineSampler

        return PipelineSampler(bundle)

    def file_metadata(self, bundle: ModelBundle, profile: Profile,
                      metadata: dict[str, str]) -> dict[str, str]:
        """``ss_v2``, ``ss_base_model_version`` and the modelspec architecture (kept with
        ``no_metadata`` too: they are in sd-scripts' minimum keys)."""
        v_pred = bool(profile.model.v_parameterization)
        return {**metadata,
                "ss_v2": str(self.v2),
                "ss_base_model_version": self.base_model_version(v_pred),
                "modelspec.architecture": self.modelspec_architecture(v_pred),
                "modelspec.implementation": self.modelspec_implementation}
