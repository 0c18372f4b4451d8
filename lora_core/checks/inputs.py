"""Checks of the files a profile names, from their headers: the base model and what loading
it needs (tokenizers, a VAE), the start weights, the sample prompts, the output folder, and
the optimizer's package and arguments.

Only headers and small text files are read (safetensors JSON headers, model_index.json, the
prompt file, an optimizer's source): never weights, never torch. What ``run`` would stop on
while loading the model and can be told from here is reported here, with the message ``run``
would give.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lora_core.checks import levers, optimizer
from lora_core.checks.problem import Problem, error, from_error, warning
from lora_core.errors import LoraError
from lora_core.family_registry import all_families, family, family_words
from lora_core.models.loading import ModelSource, inspect_model, inspect_vae
from lora_core.profile import OPTIONAL_SECTIONS, SECTIONS, Profile
from lora_core.values import format_value

if TYPE_CHECKING:
    from lora_core.families.interface import ModelFamily

# A pickled (.ckpt) checkpoint is an SD one (only SD checkpoints are pickled); which SD
# variant is told when it loads. The SD families answer alike what is asked of it here.
PICKLED_CHECKPOINTS = "sd1"
_MODEL = {"section": "model", "key": "pretrained_model_name_or_path"}


def inspect_profile_model(profile: Profile) -> ModelSource | LoraError:
    """What the profile's base model is (headers only), or why it cannot be used."""
    try:
        return inspect_model(profile.model.pretrained_model_name_or_path, profile.base_dir)
    except LoraError as exc:
        return exc


def resolved_prediction(profile: Profile, source: ModelSource | LoraError) -> Profile:
    """A copy of ``profile`` with v_parameterization and zero_terminal_snr as a run uses them
    (unset ones decided by the model file's markers: ``models.prediction``)."""
    import dataclasses

    from lora_core.models.prediction import apply_prediction

    resolved = dataclasses.replace(profile, model=dataclasses.replace(profile.model),
                                   training=dataclasses.replace(profile.training))
    markers = () if isinstance(source, LoraError) else source.markers
    apply_prediction(resolved.model, resolved.training, markers)
    return resolved


def prediction_problems(profile: Profile, source: ModelSource | LoraError) -> list[Problem]:
    """What the model file's v_pred / ztsnr markers decide for the unset settings, and a
    value given as false beside them."""
    from lora_core.models.prediction import decide_prediction

    if isinstance(source, LoraError) or not source.markers:
        return []
    name, markers = source.name, source.markers
    decided = decide_prediction(profile.model, profile.training, markers)
    found = []
    if "v_parameterization" in decided.from_markers:
        ztsnr = " with zero terminal SNR (its `ztsnr` marker)" \
            if "zero_terminal_snr" in decided.from_markers else ""
        found.append(warning(
            f"`[model] v_parameterization` is unset and {name} carries a `v_pred` marker "
            f"tensor (a v-prediction model, as ComfyUI and Forge read it): this run trains it "
            f"as v-prediction{ztsnr}", "set `[model] v_parameterization` in the profile to "
            "decide it yourself", section="model", key="v_parameterization"))
        if profile.training.v_pred_like_loss:  # the profile rule, on the decided value
            found.append(error(
                f"`[training] v_pred_like_loss` adds a v-prediction-like loss to an "
                f"ε-prediction model's, and {name} is a v-prediction model (its `v_pred` "
                "marker)", "remove v_pred_like_loss (sd-scripts refuses both together too)",
                section="training", key="v_pred_like_loss"))
    elif profile.model.v_parameterization is False and "v_pred" in markers:
        found.append(warning(
            f"`[model] v_parameterization` = false, but {name} carries a `v_pred` marker "
            "tensor: it is a v-prediction model, and training it for noise prediction ruins "
            "it", "remove the key (the marker then decides) or set it to true",
            section="model", key="v_parameterization"))
    if profile.training.zero_terminal_snr is False and decided.v_parameterization \
            and "ztsnr" in markers:
        found.append(warning(
            f"`[training] zero_terminal_snr` = false, but {name} carries a `ztsnr` marker "
            "tensor: it was trained with zero terminal SNR", "remove the key (the marker "
            "then decides) or set it to true", section="training", key="zero_terminal_snr"))
    return found


def input_problems(profile: Profile, source: ModelSource | LoraError) -> list[Problem]:
    """Every problem with the files the profile names. ``source``: the answer of
    :func:`inspect_profile_model`."""
    found: list[Problem] = []
    fam = source_family(source)
    if isinstance(source, LoraError):
        found += from_error(source, **_MODEL, path=profile.model.pretrained_model_name_or_path)
    else:  # the family's own files and options
        reader = fam or family(PICKLED_CHECKPOINTS)  # it leaves out what needs the variant
        found += reader.input_problems(profile, source)
        found += family_section_problems(profile, reader)
    if profile.model.vae and (fam is None or fam.reads_model_vae):
        try:
            inspect_vae(profile.model.vae, profile.base_dir)
        except LoraError as exc:
            found.append(error(exc.message, exc.hint, section="model", key="vae",
                               path=profile.model.vae))
    found += lora_weights_problems(profile, None if fam is None else fam.name)
    if fam is None or fam.supports_base_weights:  # else refused by the family's check
        found += base_weights_problems(profile)
    found += sample_prompt_problems(profile)
    pickled = not isinstance(source, LoraError) and fam is None
    found += levers.lever_problems(profile, family(PICKLED_CHECKPOINTS) if pickled else fam)
    found += optimizer.installed_optimizer_problems(profile.optimizer)
    found += output_problems(profile)
    found += logging_problems(profile)
    return found


def family_section_problems(profile: Profile, fam: ModelFamily) -> list[Problem]:
    """Values set in a family's own table (``[flux]``) for a model of another family."""
    found = []
    for section in OPTIONAL_SECTIONS:
        if section in fam.profile_sections:
            continue
        owner = next((f.words for f in all_families() if section in f.profile_sections),
                     section)
        default = SECTIONS[section]()
        for f in dataclasses.fields(default):
            value = getattr(getattr(profile, section), f.name)
            if value != getattr(default, f.name):
                found.append(error(
                    f"`[{section}] {f.name}` = {format_value(value)} is only for {owner} "
                    f"models, and the base model is {fam.words}",
                    f"remove it (or the whole [{section}] table), or choose a {owner} model",
                    section=section, key=f.name))
    return found


def source_family(source: ModelSource | LoraError) -> ModelFamily | None:
    """The family of the profile's model, None when the headers do not tell (a pickled
    checkpoint) or the model cannot be used."""
    if isinstance(source, LoraError) or source.family is None:
        return None
    return family(source.family)


# network_module -> the kind its files' tensors show (lora_header's names); DyLoRA's files
# are LoRA files.
_KIND_OF_MODULE = {"LoRA": "LoRA/LoCon", "LoCon": "LoRA/LoCon", "DyLoRA": "LoRA/LoCon",
                   "LoHa": "LoHa", "LoKr": "LoKr", "Full": "full", "IA3": "IA3",
                   "DiagOFT": "OFT", "BOFT": "OFT", "GLoRA": "GLoRA"}


def lora_weights_problems(profile: Profile, model_family: str | None) -> list[Problem]:
    """``[network] network_weights``: a readable kohya-format LoRA of this model's family,
    of the network type and rank the profile trains (what ``network.weights`` would refuse
    after the model loaded)."""
    path = profile.path("network", "network_weights")
    if path is None:
        return []
    spot = {"section": "network", "key": "network_weights", "path": path}
    if not path.is_file():
        return [error(f"`[network] network_weights` file not found: {path}",
                      "give an existing LoRA .safetensors file, or \"\" to start fresh", **spot)]
    from lora_core.saving.lora_header import read_lora_header

    try:
        header = read_lora_header(path)
    except LoraError as exc:
        return [error(f"`[network] network_weights` {exc.message}", exc.hint, **spot)]
    if model_family is not None and header.family is not None \
            and header.family != model_family:
        return [error(f"`[network] network_weights` {path} is a LoRA for "
                      f"{header.family_words} models, but the base model is "
                      f"{family_words(model_family)}",
                      "start from a LoRA trained for this base model, or leave "
                      "network_weights empty", **spot)]
    return _weights_shape_problems(profile, path, header.shapes, header.network_type)


def _weights_shape_problems(profile: Profile, path: Path, shapes: dict[str, tuple[int, ...]],
                            network_type: str) -> list[Problem]:
    """The file's network type and ranks against the profile's (network.weights refuses a
    file whose tensors do not fit the modules it builds)."""
    net = profile.network
    kinds = {_KIND_OF_MODULE.get(kind, kind) for kind in network_type.split("+")} - {"unknown"}
    dora = "DoRA" in kinds
    kinds.discard("DoRA")
    wanted = _KIND_OF_MODULE[net.network_module]
    spot = {"section": "network", "key": "network_module", "path": path}
    if kinds and wanted not in kinds:
        return [error(f"`[network] network_weights` {path} holds a {'/'.join(sorted(kinds))} "
                      f"network, but network_module is \"{net.network_module}\"",
                      "set `[network] network_module` to the file's type, or start from "
                      "another file", **spot)]
    if kinds and dora != net.dora_wd:
        return [error(f"`[network] network_weights` {path} "
                      + ("is a DoRA file (it has dora_scale), but dora_wd is false" if dora
                         else "has no DoRA magnitudes (dora_scale), but dora_wd is true"),
                      f"set `[network] dora_wd = {str(dora).lower()}` to match the file, or "
                      "start from another file", section="network", key="dora_wd", path=path)]
    if wanted != "LoRA/LoCon" or net.block_dims or net.conv_block_dims or net.dim_from_weights:
        # per-block ranks differ by design; LoHa/LoKr shapes are checked at load;
        # dim_from_weights takes the file's ranks
        return []
    from lora_core.profile import conv_rank_and_alpha

    conv_dim, _ = conv_rank_and_alpha(net)
    for key, shape in shapes.items():
        if not key.endswith(".lora_down.weight") or len(shape) < 2:
            continue
        is_conv3x3 = len(shape) == 4 and shape[2:] != (1, 1)
        rank, wanted_rank, field = shape[0], (conv_dim if is_conv3x3 else net.network_dim), \
            ("conv_dim" if is_conv3x3 else "network_dim")
        if wanted_rank is not None and rank != wanted_rank:
            return [error(f"`[network] network_weights` {path} was trained with {field} "
                          f"{rank} (module {key.partition('.')[0]}), but `[network] {field}` "
                          f"is {wanted_rank}", f"set {field} = {rank} to continue from this "
                          "file", section="network", key=field, path=path)]
    return []


def base_weights_problems(profile: Profile) -> list[Problem]:
    """``[network] base_weights``: every file there (merged into the model at the start)."""
    return [error(f"`[network] base_weights` file not found: {path}",
                  "check the path, or remove it from base_weights", section="network",
                  key="base_weights", path=path)
            for path in profile.network.base_weights if not Path(path).is_file()]


def sample_prompt_problems(profile: Profile) -> list[Problem]:
    """The prompt file, read and checked whole, even when no schedule is set yet, so a
    mistake shows before the run instead of as a warning hours into it; a file without
    prompts while a schedule asks for samples; the LMS samplers without scipy."""
    from lora_core.training.sample_prompts import read_sample_prompts  # torch-free

    section = profile.sample
    path = profile.path("sample", "sample_prompts")
    if path is None:
        return []
    spot = {"section": "sample", "key": "sample_prompts", "path": path}
    try:
        prompts = read_sample_prompts(path, section.sample_sampler)
    except LoraError as exc:
        return [error(exc.message, exc.hint, **spot)]
    found = []
    wanted = section.sample_at_first or section.sample_every_n_steps \
        or section.sample_every_n_epochs
    if wanted and not prompts:
        found.append(error(f"sample prompt file {path} has no prompts",
                           "add one prompt per line, or remove the [sample] schedule", **spot))
    lms = sorted({p.sampler for p in prompts if p.sampler in ("lms", "k_lms")})
    if lms and not installed("scipy"):
        found.append(error(f"sample prompt file {path}: sampler {lms[0]!r} needs scipy, which "
                           "is not installed", "pip install scipy, or choose another sampler",
                           **spot))
    return found


def taken_name(output_dir: Path | None, wanted: str) -> tuple[str, list[Problem]]:
    """The output name a run will use (``output_names.free_output_name``: files are never
    overwritten, so a taken name becomes ``<name>_2``...) and the note saying so."""
    from lora_core import output_names

    if output_dir is None:
        return wanted, []
    name = output_names.free_output_name(output_dir, wanted)
    if name == wanted:
        return wanted, []
    return name, [warning(f"files named {wanted!r} already exist in {output_dir}; this run "
                          f"saves as {name!r} so nothing is overwritten",
                          section="saving", key="output_name")]


def installed(package: str) -> bool:
    """Whether ``package`` can be imported (found without importing it)."""
    return importlib.util.find_spec(package) is not None


def nearest_existing(path: Path) -> Path:
    """``path``, or the closest of its parents that exists (what creating it writes into)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def output_problems(profile: Profile) -> list[Problem]:
    """The output folder can be made and written, and is not inside a dataset."""
    output_dir = profile.path("saving", "output_dir")
    if output_dir is None:
        return []
    spot = {"section": "saving", "key": "output_dir", "path": output_dir}
    hint = "set `[saving] output_dir` to a folder you can write to"
    existing = nearest_existing(output_dir)
    if existing.exists() and not existing.is_dir():
        what = "is a file" if existing == output_dir else f"is inside {existing}, which is a file"
        return [error(f"`[saving] output_dir` {output_dir} {what}, not a folder", hint, **spot)]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [error(f"`[saving] output_dir` {output_dir} cannot be created or written "
                      f"({existing} is not writable)", hint, **spot)]
    found = []
    for key in ("train_data_dir", "reg_data_dir"):
        data_dir = profile.path("dataset", key)
        if data_dir is not None and (output_dir == data_dir or data_dir in output_dir.parents):
            found.append(error(f"`[saving] output_dir` {output_dir} is inside `[dataset] {key}` "
                               f"{data_dir}; lora-train never writes into a dataset",
                               "choose a folder outside it", **spot))
    return found


def logging_problems(profile: Profile) -> list[Problem]:
    """``[logging] log_with``: the tracker's package is installed, its folder writable."""
    kind = profile.logging.log_with
    found = []
    spot = {"section": "logging", "key": "log_with"}
    for package, name in (("tensorboard", "TensorBoard"), ("wandb", "Weights & Biases")):
        if kind in (package, "all") and not installed(package):
            found.append(error(f"`[logging] log_with` = \"{kind}\" needs {name}, and the "
                               f"{package} package is not installed",
                               f"install it: .venv/bin/pip install {package} (or set "
                               "log_with = \"\")", **spot))
    folder = profile.path("logging", "logging_dir")
    if kind and folder is not None:
        existing = nearest_existing(folder)
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            found.append(error(f"`[logging] logging_dir` {folder} cannot be created or "
                               "written", "choose a folder you can write to",
                               section="logging", key="logging_dir", path=folder))
    return found


def model_notes(profile: Profile, source: ModelSource | LoraError) -> list[Problem]:
    """Settings that run but are probably not what was meant (sd-scripts warns about them):
    the model family's own (a pickled checkpoint's: SD's, leaving out what needs the
    variant); none for a model that cannot be used (its problem is reported instead)."""
    if isinstance(source, LoraError):
        return []
    return (source_family(source) or family(PICKLED_CHECKPOINTS)).notes(profile, source)
