"""What a base model's file says about how it predicts, and the settings it decides.

Most weights cannot tell epsilon- from v-prediction (kohya-compat.md §11), so
``[model] v_parameterization`` is the user's word. Some v-prediction finetunes say it
themselves: NoobAI-XL v-pred and others carry a ``v_pred`` marker tensor, and ``ztsnr``
when they were trained with zero terminal SNR (``checkpoint.PREDICTION_MARKERS``, read as
ComfyUI and Forge read them). When the profile leaves ``v_parameterization`` unset, the
markers decide it (and an unset ``zero_terminal_snr``); a value the user gave always wins.

Pure Python, no I/O: the markers come from the header ``loading.inspect_model`` read. The
checks report what was decided (``checks.inputs``); ``lora-train run`` applies the same
decision to the profile it trains and stores.
"""

from __future__ import annotations

from dataclasses import dataclass

from lora_core.profile import ModelSection, TrainingSection


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
