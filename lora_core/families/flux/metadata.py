"""The Flux-specific ``ss_*`` and ``modelspec.*`` keys of a LoRA file.

As sd-scripts' ``flux_train_network.py`` (``update_metadata``) and ``sai_model_spec.py`` write
them: every value a string (``str()`` of the argument, so booleans read "True"/"False"),
``ss_base_model_version`` "flux1" ("chroma" for Chroma), ``modelspec.architecture``
``flux-1-dev/lora``, ``flux-1-schnell/lora`` or ``chroma/lora``, no
``modelspec.prediction_type`` (Flux has none). The common keys (dataset, optimizer, hashes)
are the saving module's; these are merged over them.

Pure Python; no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # objective imports torch; this module must not
    from lora_core.families.flux.objective import FlowSettings

ARCHITECTURES = {"dev": "flux-1-dev", "schnell": "flux-1-schnell", "chroma": "chroma"}
IMPLEMENTATIONS = {"dev": "https://github.com/black-forest-labs/flux",
                   "schnell": "https://github.com/black-forest-labs/flux",
                   "chroma": "https://huggingface.co/lodestones/Chroma"}
NETWORK_MODULE = "networks.lora_flux"
DEFAULT_RESOLUTION = "1024x1024"


def base_model_version(variant: str) -> str:
    return "chroma" if variant == "chroma" else "flux1"


def training_keys(variant: str, settings: FlowSettings, apply_t5_attn_mask: bool
                  ) -> dict[str, str]:
    """The keys ``flux_train_network.update_metadata`` adds, plus the base model version."""
    return {
        "ss_base_model_version": base_model_version(variant),
        "ss_model_type": "chroma" if variant == "chroma" else "flux",
        "ss_apply_t5_attn_mask": str(bool(apply_t5_attn_mask)),
        "ss_weighting_scheme": str(settings.weighting_scheme),
        "ss_logit_mean": str(settings.logit_mean),
        "ss_logit_std": str(settings.logit_std),
        "ss_mode_scale": str(settings.mode_scale),
        "ss_guidance_scale": str(settings.guidance_scale),
        "ss_timestep_sampling": str(settings.timestep_sampling),
        "ss_sigmoid_scale": str(settings.sigmoid_scale),
        "ss_model_prediction_type": str(settings.model_prediction_type),
        "ss_discrete_flow_shift": str(settings.discrete_flow_shift),
    }


def modelspec_keys(variant: str) -> dict[str, str]:
    """The family's modelspec keys for a LoRA (title, date, resolution are the caller's)."""
    return {
        "modelspec.architecture": f"{ARCHITECTURES[variant]}/lora",
        "modelspec.implementation": IMPLEMENTATIONS[variant],
    }
