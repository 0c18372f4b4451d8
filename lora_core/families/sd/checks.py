"""The checks of a Stable Diffusion profile (SD 1.x, 2.x, SDXL) against its model: what the
family's ``input_problems`` and ``notes`` answer, from headers and small files (no torch).
``fam`` is the SD family the weights tell, or None for a pickled checkpoint, whose variant is
told only when it loads: what needs the variant is left out then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lora_core.checks.problem import Problem, error, warning
from lora_core.checks.rules import block_problems
from lora_core.errors import LoraError
from lora_core.models.loading import ModelSource
from lora_core.profile import Profile

if TYPE_CHECKING:
    from lora_core.families.sd.family import StableDiffusionFamily


def model_problems(profile: Profile, source: ModelSource,
                   fam: StableDiffusionFamily | None = None) -> list[Problem]:
    """An SD model's settings that do not fit it, and what loading it would miss. ``fam``:
    its family (None for a pickled checkpoint, told when it loads)."""
    found: list[Problem] = []
    if "VAE" in source.missing and not profile.model.vae:
        found.append(error(f"the checkpoint {source.path} has no VAE: set `[model] vae` to a "
                           "VAE file or folder", section="model", key="vae"))
    found += tokenizer_problems(profile, source)
    if fam is None:
        return found
    if profile.model.v2 is not None and profile.model.v2 != fam.v2:
        found.append(error(f"`[model] v2` = {str(profile.model.v2).lower()} but the model is "
                           f"{fam.words} (detected from its weights); remove v2",
                           section="model", key="v2"))
    found += block_problems(profile, fam.block_layout())
    steps, multiple = profile.dataset.bucket_reso_steps, fam.bucket_step_multiple
    # A step that is not a multiple of 32 is the profile rule's to report.
    if profile.dataset.enable_bucket and steps % 32 == 0 and steps % multiple:
        found.append(error(f"`[dataset] bucket_reso_steps` = {steps} must be a multiple of "
                           f"{multiple} for {fam.words} models (32 is allowed for SDXL only)",
                           section="dataset", key="bucket_reso_steps"))
    return found


def tokenizer_problems(profile: Profile, source: ModelSource) -> list[Problem]:
    """Checkpoints hold no tokenizers: each one the family needs must be on this machine
    (``models.tokenizers.find_tokenizer``, the lookup the load uses). A pickled checkpoint's
    family is told only when it loads: SD 1.x is assumed unless ``[model] v2`` says SD 2.x."""
    if source.kind == "builtin":
        return []
    from lora_core.models.tokenizers import ROLES, find_tokenizer

    family = source.family or ("sd2" if profile.model.v2 else "sd1")
    folder = source.path if source.kind == "diffusers" else None
    found = []
    for index, role in enumerate(ROLES[family]):
        try:
            find_tokenizer(role, folder, ("tokenizer", "tokenizer_2")[index],
                           profile.path("model", "tokenizer_cache_dir"))
        except LoraError as exc:
            found.append(error(exc.message, exc.hint, section="model",
                               key="tokenizer_cache_dir"))
    return found


def prediction_notes(profile: Profile, source: ModelSource) -> list[Problem]:
    """A file name or metadata that suggests the other prediction type (SD models)."""
    from lora_core.models.loading import prediction_warning

    text = prediction_warning(source, bool(profile.model.v_parameterization))
    if text and "v_pred" not in source.markers:  # the marker's own note says it
        return [warning(text, section="model", key="v_parameterization")]
    return []


def schedule_notes(profile: Profile) -> list[Problem]:
    """zero_terminal_snr without v-prediction (SD's DDPM schedule)."""
    if profile.training.zero_terminal_snr and not profile.model.v_parameterization:
        return [warning("`[training] zero_terminal_snr` is meant for v-prediction models: "
                        "with noise prediction the last timestep has nothing left to "
                        "predict (set `[model] v_parameterization` = true if the model is "
                        "a v-pred model)", section="training", key="zero_terminal_snr")]
    return []
