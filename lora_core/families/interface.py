"""What every model family answers: the one interface the trainer, the checks, the tools and
the wizard use. ``lora_core.family_registry.family(name)`` gives a family's object; nothing
outside ``families/`` asks "is this SDXL?".

A family's object is a plain object with these members; no base class is required
(``families/sd/family.py`` holds what SD 1.x, 2.x and SDXL answer alike, ``families/flux/``
is Flux.1's own). Importing a family's module imports no torch: the methods that load,
encode, train or sample import it when called. ``tests/core/test_families.py`` holds every
registered family to this list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from lora_core.checks.problem import Problem
    from lora_core.models.bundle import ModelBundle, TextConditioning
    from lora_core.models.loading import ModelSource
    from lora_core.profile import NetworkSection, Profile, TrainingSection


class ModelFamily(Protocol):
    # --- who it is ---------------------------------------------------------------------
    name: str  # "sd1", "sd2", "sdxl", "flux": what ModelSource.family and bundles carry
    label: str  # "SD1", "Flux.1": one-line summaries
    words: str  # "SD 1.x", "Flux.1": sentences
    sd_scripts_script: str  # the sd-scripts script that trains it (export, import)
    lora_module: str  # sd-scripts' network_module of its LoRA ("networks.lora_flux")
    bucket_step_multiple: int  # bucket sizes must be multiples of this (sd-scripts' rule)
    levers: frozenset[str]  # the memory levers that work for it ([training] keys)
    # The classes of its transformer's repeated blocks, compiled (one graph per width) with
    # torch_compile (training.compiling).
    repeated_blocks: tuple[str, ...]
    # Profile fields its sd-scripts script cannot take, and why (export leaves them out).
    sd_scripts_lacks: dict[str, str]
    profile_sections: tuple[str, ...]  # optional profile tables only it reads ("flux")
    model_files: tuple[tuple[str, str], ...]  # files beside the model the wizard asks for
    reads_model_vae: bool  # whether `[model] vae` means anything for it
    supports_base_weights: bool  # `[network] base_weights` merged before training

    # --- its files (headers only, no torch) --------------------------------------------
    def claim_model_file(self, spec: str, path: Path, shapes: Any, metadata: Any
                         ) -> ModelSource | None:
        """The ModelSource of a base-model file in its own layout, None for another's;
        ModelError for one of its own files that is not a base model (Flux's T5 alone)."""
        ...

    def claim_model_folder(self, spec: str, folder: Path, index: Any) -> ModelSource | None:
        """The ModelSource of a diffusers folder of its own (``model_index.json`` read), None
        for another's; ModelError for a folder of its own it cannot train."""
        ...

    def misplaced_part(self, shapes: Any) -> str | None:
        """What a file of its own is when given where it does not belong ("a T5 text
        encoder alone (Flux's `[flux] t5xxl`)"), else None."""
        ...

    def builtin_folder(self, name: str, cache_root: Path | None = None) -> Path:
        """Where its built-in ``name`` lives, built or not."""
        ...

    def ensure_builtin(self, name: str, cache_root: Path | None = None) -> Path:
        """Its built-in ``name``, built on first use."""
        ...

    # --- its checks (no torch) ---------------------------------------------------------
    def input_problems(self, profile: Profile, source: ModelSource) -> list[Problem]:
        """What is wrong with the files and options of a profile whose model is its own
        (``check`` and ``run`` both ask, before anything loads)."""
        ...

    def notes(self, profile: Profile, source: ModelSource) -> list[Problem]:
        """Settings that run but are probably not what was meant."""
        ...

    def lever_problems(self, profile: Profile) -> list[Problem]:
        """Its own limits on the levers it has (Flux: how many blocks may swap)."""
        ...

    # --- loading and training (import torch when called) --------------------------------
    def load(self, profile: Profile, dtype: Any) -> ModelBundle:
        """The profile's base model and the files beside it, frozen, in eval mode, the
        bundle's ``impl`` this object."""
        ...

    def tokenize(self, bundle: ModelBundle, captions: list[str]) -> list[Any]:
        """Token ids for captions, one tensor per tokenizer (what the text cache keeps)."""
        ...

    def encode(self, bundle: ModelBundle, input_ids_list: list[Any]) -> TextConditioning:
        """The denoiser's text conditioning for those ids."""
        ...

    def unet_extra_conditioning(self, bundle: ModelBundle, **kwargs: Any) -> dict[str, Any]:
        """Extra keyword arguments of the denoiser call (SDXL: its size conditioning)."""
        ...

    def text_cache_settings(self, bundle: ModelBundle) -> dict[str, Any]:
        """What decides a caption's encoding besides the encoders, tokenizers and
        ``bundle.text`` (the on-disk text cache's fingerprint takes it in)."""
        ...

    def objective(self, bundle: ModelBundle, training: TrainingSection, device: Any) -> Any:
        """The training objective: ``loss(batch, latents, text, model, dtype)`` draws the
        noise and timesteps and returns the batch's mean loss (SD: DDPM ε / v prediction;
        Flux: rectified flow); ``validation_losses(batch, latents, text, model, dtype,
        timesteps, generator)`` the loss at each fixed timestep."""
        ...

    def block_layout(self) -> Any:
        """The block slots of block-wise learning rates and dims (``network.blocks``)."""
        ...

    def build_network(self, bundle: ModelBundle, net: NetworkSection,
                      lr_weights: list[float] | None = None, shapes: Any = None) -> Any:
        """Its LoRA network under sd-scripts' module names (not yet applied)."""
        ...

    def merge_base_weights(self, bundle: ModelBundle, paths: list[str],
                           multipliers: list[float]) -> list[str]:
        """``[network] base_weights`` merged into the model; returns warnings."""
        ...

    def place_transformer(self, bundle: ModelBundle, training: TrainingSection, device: Any,
                          dtype: Any) -> bool:
        """Put the denoiser on ``device`` its own way (Flux's block swap); False when the
        trainer's usual placement applies."""
        ...

    def enable_gradient_checkpointing(self, bundle: ModelBundle, cpu_offload: bool) -> None:
        """Recompute the denoiser's blocks in the backward instead of keeping their
        activations; ``cpu_offload`` (``cpu_offload_checkpointing``, where ``levers`` has
        it): the inputs each block keeps for that in CPU memory
        (``models.offloaded_checkpointing``)."""
        ...

    def preview_sampler(self, bundle: ModelBundle) -> Any:
        """An object whose ``image(prompt, seed, device)`` makes one preview (PIL image);
        one per sampling, dropped after it."""
        ...

    def file_metadata(self, bundle: ModelBundle, profile: Profile,
                      metadata: dict[str, str]) -> dict[str, str]:
        """The run's common metadata with its ``ss_*`` / ``modelspec.*`` keys (base model
        version, architecture, its own settings)."""
        ...

    # --- its LoRA files (what saving.lora_header and the tools ask; no torch) -----------
    inspect_settings: tuple[tuple[str, str], ...]  # its own ss_* rows for `inspect`
    inspect_hidden: frozenset[str]  # common rows that mean nothing for it
    inspect_labels: dict[str, str]  # its labels for common rows ("DiT lr")
    part_words: dict[str, str]  # words for the parts `lora_parts` names

    def lora_variant(self, metadata: dict[str, str]) -> str | None:
        """The variant a LoRA file was trained on, where its metadata says."""
        ...

    def variant_words(self, variant: str) -> str:
        """A variant in words ("Flux.1 dev", "Chroma")."""
        ...

    def lora_lineage(self, variant: str | None) -> str | None:
        """Which LoRAs of its own a LoRA merges with (Chroma apart from dev / schnell)."""
        ...

    def lora_parts(self, modules: list[str]) -> dict[str, int]:
        """Modules per part of the model (U-Net and text encoders; DiT blocks ...)."""
        ...

    def merged_file_keys(self, variant: str | None) -> dict[str, str]:
        """Base model version and network module for a merged file that does not say."""
        ...

    def sd_scripts_told(self, profile: Profile, source: ModelSource) -> list[tuple[str, Any]]:
        """Options its sd-scripts script must be given that the profile leaves unset
        (Chroma: ``--model_type chroma``, ``--guidance_scale 0.0``)."""
        ...
