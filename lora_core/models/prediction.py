"""What a base model's file says about how it predicts, and the settings it decides.

Most weights cannot tell epsilon- from v-prediction (kohya-compat.md §11), so
``[model] v_parameterization`` is the user's word. Some v-prediction finetunes say it
themselves: NoobAI-XL v-pred and others carry a ``v_pred`` marker tensor, and ``ztsnr``
when they were trained with zero terminal SNR (:data:`PREDICTION_MARKERS`, read as
ComfyUI and Forge read them). When the profile leaves ``v_parameterization`` unset, the
markers decide it (and an unset ``zero_terminal_snr``); a value the user gave always wins.

Pure Python, no I/O: the markers come from the header ``loading.inspect_model`` read. The
checks report what was decided (``checks.inputs``); ``lora-train run`` applies the same
decision to the profile it trains and stores.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lora_core.profile import ModelSection, TrainingSection

# Marker tensors a checkpoint may carry to say how it predicts: top-level keys whose values
# mean nothing (zero-size or scalar), only their presence. NoobAI-XL v-pred and other v-pred
# finetunes carry "v_pred" (plus "ztsnr" when trained with zero terminal SNR); ComfyUI's
# model detection (`"v_pred" in state_dict`, then `"ztsnr" in state_dict`) and Forge read them.
PREDICTION_MARKERS = ("v_pred", "ztsnr")
# File names that usually mean a v-prediction model (SD 2.x 768-v, v-pred finetunes).
_V_NAME = re.compile(r"(v[-_ ]?pred|768-v|[-_]v\.|[-_]v[-_])", re.IGNORECASE)


@dataclass(frozen=True)
class Prediction:
    """The two settings as a run uses them, and which of them came from the markers."""

    v_parameterization: bool
    zero_terminal_snr: bool
    from_markers: tuple[str, ...] = ()  # field names set from the file's markers


def decide_prediction(model: ModelSection, training: TrainingSection,
                      markers: tuple[str, ...]) -> Prediction:
    """The settings a run uses: each one given in the profile as given; unset ones from the
    markers (``v_pred`` -> v_parameterization; with it, ``ztsnr`` -> zero_terminal_snr),
    else false."""
    decided: list[str] = []
    v_pred = model.v_parameterization
    if v_pred is None:
        v_pred = "v_pred" in markers
        if v_pred:
            decided.append("v_parameterization")
    ztsnr = training.zero_terminal_snr
    if ztsnr is None:
        ztsnr = v_pred and "ztsnr" in markers
        if ztsnr:
            decided.append("zero_terminal_snr")
    return Prediction(bool(v_pred), bool(ztsnr), tuple(decided))


def apply_prediction(model: ModelSection, training: TrainingSection,
                     markers: tuple[str, ...]) -> Prediction:
    """Set both fields to what :func:`decide_prediction` decides (no field stays unset)."""
    decided = decide_prediction(model, training, markers)
    model.v_parameterization = decided.v_parameterization
    training.zero_terminal_snr = decided.zero_terminal_snr
    return decided


def prediction_markers(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, ...]:
    """The PREDICTION_MARKERS a checkpoint carries ("v_pred", "ztsnr")."""
    return tuple(key for key in PREDICTION_MARKERS if key in shapes)


def prediction_warning(path: Path | None, metadata: Mapping[str, str],
                       v_parameterization: bool) -> str | None:
    """A warning when the file's name or metadata suggests the other prediction type.

    v-prediction cannot be read from weights (kohya-compat.md §11), so it stays the
    ``v_parameterization`` setting; this only points out a likely mismatch."""
    said = (metadata.get("modelspec.prediction_type") or metadata.get("prediction_type")
            or "").strip().lower()
    if said in ("v", "v_prediction", "v-prediction"):
        suggests_v, why = True, f"its metadata says prediction type {said!r}"
    elif said in ("epsilon", "eps"):
        suggests_v, why = False, f"its metadata says prediction type {said!r}"
    elif path is not None and _V_NAME.search(path.name):
        suggests_v, why = True, "its file name suggests a v-prediction model"
    else:
        return None
    name = path.name if path is not None else "the model"
    if suggests_v and not v_parameterization:
        return (f"{name}: {why}, but `[model] v_parameterization` is false; training a "
                "v-prediction model for noise prediction ruins it (set it to true if the model "
                "is v-pred)")
    if not suggests_v and v_parameterization:
        return (f"{name}: {why}, but `[model] v_parameterization` is true (set it to false "
                "unless you know the model predicts v)")
    return None
