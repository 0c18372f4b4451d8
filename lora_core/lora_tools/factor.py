"""`lora-train resize` and `lora-train merge`: a LoRA's deltas, re-factored by SVD.

A LoRA/LoCon module adds ``delta = alpha/dim * up @ down`` to its base weight (a 3x3
convolution's ``down`` is ``(dim, in, kh, kw)``, flattened to ``(dim, in*kh*kw)``; a Tucker
``mid`` is folded into ``down`` first). Each delta has rank at most ``dim``, so its SVD is
taken through two thin QR factorisations and a ``dim x dim`` SVD: exact, and cheap even for
SDXL's 3x3 convolutions. The best rank-``k`` approximation keeps the ``k`` largest singular
values (Eckart-Young); its error in the Frobenius norm is the norm of those discarded.

Resize keeps each module's ``alpha/dim`` ratio: the new alpha is ``k * alpha/dim``, so the
file's effective weights are the approximation and a user's sense of its strength holds.
Merge sums the weighted deltas of several files (the union of their modules; a module in
both must have the same shape) and factors the sum to the asked rank with ``alpha = rank``
unless told otherwise.

Any family's kohya-format LoRA works, Flux.1's (sd-scripts' ``networks.lora_flux``: plain
linear modules) too; the family's ``ss_base_model_version``, ``ss_network_module`` and
``modelspec.architecture`` are kept. Files for different base models are not merged: SD and
Flux.1, and Chroma with Flux.1 dev / schnell (dev and schnell share a layout and merge, with a
note). A Flux LoRA with diffusers / PEFT key names is refused with the way to convert it.

LoHa, LoKr, DoRA and other LyCORIS types are refused: their files do not record what would
be needed to rebuild every delta (a LoHa convolution's kernel size, a DoRA's base weight
norms), and a guess would write a wrong file. ``inspect`` and ``edit`` read them all.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_core.errors import LoraError
from lora_core.family_registry import family
from lora_core.saving.lora_file import read_lora, save_lora
from lora_core.saving.lora_header import LoraHeader, read_lora_header

DYNAMIC_METHODS = ("sv_fro", "sv_ratio", "sv_cumulative")
_PARTS = ("lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha")


@dataclass
class Delta:
    """One module's delta as ``up @ down`` (float64, scale folded into ``up``)."""

    up: torch.Tensor  # (out, r)
    down: torch.Tensor  # (r, in * kh * kw)
    kernel: tuple[int, ...]  # () for a linear layer, (kh, kw) for a convolution
    in_features: int

    def matrix(self) -> torch.Tensor:
        return self.up @ self.down

    @property
    def conv3x3(self) -> bool:
        return bool(self.kernel) and self.kernel != (1, 1)


@dataclass
class ModuleResult:
    name: str
    old_rank: int
    new_rank: int
    retained: float  # the share of the delta's Frobenius norm kept (1.0 = all)
    error: float  # the Frobenius norm of what was dropped


@dataclass
class FactorReport:
    output: Path
    modules: list[ModuleResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self, limit: int = 40) -> str:
        ranks = Counter(m.new_rank for m in self.modules)
        worst = sorted(self.modules, key=lambda m: m.retained)
        lines = [f"Wrote {self.output}",
                 f"Modules: {len(self.modules)}; new ranks: "
                 + ", ".join(f"{r} ({n})" for r, n in sorted(ranks.items())),
                 f"Retained Frobenius norm: lowest {worst[0].retained:.4f}, mean "
                 f"{sum(m.retained for m in self.modules) / len(self.modules):.4f}"
                 if self.modules else "", *self.notes, "",
                 f"{'module':<60} {'rank':>9} {'retained':>9}"]
        shown = sorted(self.modules, key=lambda m: m.name)
        for m in shown[:limit]:
            lines.append(f"{m.name[:60]:<60} {m.old_rank:>4}->{m.new_rank:<4} "
                         f"{m.retained:>9.4f}")
        if len(shown) > limit:
            lines.append(f"... {len(shown) - limit} more modules (--json lists all)")
        return "\n".join(lines) + "\n"

    def as_json(self) -> dict:
        return {"output": str(self.output), "notes": self.notes,
                "modules": [vars(m) for m in self.modules]}


# --- reading ---------------------------------------------------------------------------------


def read_deltas(path: Path) -> tuple[LoraHeader, dict[str, Delta], dict[str, float], str]:
    """The header, each module's delta, each module's alpha/dim and the file's tensor dtype
    ("float", "fp16" or "bf16"); LoraError for a file that is not a LoRA/LoCon."""
    header = read_lora_header(path)
    kinds = set(header.network_type.split("+"))
    if not kinds <= {"LoRA", "LoCon"}:
        raise LoraError(f"{header.path} holds {header.network_type} modules; resize and "
                        "merge work on LoRA and LoCon files",
                        "its file does not record all that is needed to rebuild a LoHa, "
                        "LoKr or DoRA delta; inspect and edit work on it")
    tensors, _ = read_lora(header.path)
    deltas, scales = {}, {}
    for name in header.modules:
        parts = {part: tensors.get(f"{name}.{part}") for part in _PARTS}
        down, up, mid = parts["lora_down.weight"], parts["lora_up.weight"], \
            parts["lora_mid.weight"]
        if down is None or up is None:
            raise LoraError(f"module {name} of {header.path} lacks its "
                            f"{'lora_down' if down is None else 'lora_up'} weight",
                            "the file is damaged or not a kohya-format LoRA")
        rank = down.shape[0]
        alpha = float(parts["alpha"]) if parts["alpha"] is not None else float(rank)
        scales[name] = alpha / rank
        down, up = down.double(), up.double()
        if mid is not None:  # Tucker: down (r, in, 1, 1), mid (r, r, kh, kw)
            down = torch.einsum("abhw,bi->aihw", mid.double(), down.flatten(1))
        deltas[name] = Delta(up.flatten(1) * scales[name], down.flatten(1),
                             tuple(down.shape[2:]), down.shape[1])
        if deltas[name].up.shape[1] != deltas[name].down.shape[0]:
            raise LoraError(f"module {name} of {header.path}: lora_up and lora_down do not "
                            "fit together", "the file is damaged; copy it again")
    dtype = next(iter(tensors.values())).dtype
    precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "float")
    return header, deltas, scales, precision


# --- the maths -------------------------------------------------------------------------------


def low_rank_svd(up: torch.Tensor, down: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, Vh of ``up @ down`` (thin), without forming the product."""
    qu, ru = torch.linalg.qr(up)
    qd, rd = torch.linalg.qr(down.T)
    u, s, vh = torch.linalg.svd(ru @ rd.T, full_matrices=False)
    return qu @ u, s, vh @ qd.T


def dynamic_rank(s: torch.Tensor, method: str, param: float) -> int:
    """How many singular values a dynamic resize keeps (sd-scripts' three rules):
    sv_fro keeps the share ``param`` of the Frobenius norm, sv_cumulative the share ``param``
    of the sum of singular values, sv_ratio every value within ``param`` times the largest."""
    total = float(s.sum())
    if total == 0:
        return 1
    if method == "sv_ratio":
        return max(1, int((s >= s[0] / param).sum()))
    if method == "sv_fro":
        shares = torch.cumsum(s * s, 0) / float((s * s).sum())
        target = param * param
    else:
        shares = torch.cumsum(s, 0) / total
        target = param
    return min(len(s), int((shares < target - 1e-12).sum()) + 1)


def factor(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int, delta: Delta,
           alpha: float) -> dict[str, torch.Tensor]:
    """The kohya tensors of a rank-``rank`` module whose effective weight
    (``alpha/rank * up @ down``) is the truncated SVD."""
    root = (s[:rank] * (rank / alpha)).sqrt()
    up = u[:, :rank] * root
    down = root[:, None] * vh[:rank]
    if delta.kernel:
        down = down.reshape(rank, delta.in_features, *delta.kernel)
        up = up.reshape(*up.shape, 1, 1)
    return {"lora_up.weight": up.float(), "lora_down.weight": down.float(),
            "alpha": torch.tensor(float(alpha))}


def _retained(s: torch.Tensor, rank: int) -> tuple[float, float]:
    total = float((s * s).sum())
    dropped = float((s[rank:] * s[rank:]).sum())
    return (1.0 if total == 0 else math.sqrt(max(0.0, 1 - dropped / total)),
            math.sqrt(dropped))


def _check_rank(value: int | None, name: str) -> None:
    if value is not None and value <= 0:
        raise LoraError(f"{name} must be a whole number of 1 or more, not {value}",
                        "give the rank to keep, e.g. --rank 16")


def _check_dynamic(method: str | None, param: float | None) -> None:
    if method is None:
        return
    if method not in DYNAMIC_METHODS:
        raise LoraError(f"unknown dynamic method {method!r}",
                        f"use one of {', '.join(DYNAMIC_METHODS)}")
    if param is None:
        raise LoraError(f"--dynamic {method} needs --param",
                        "e.g. --param 0.9 (sv_fro, sv_cumulative) or --param 10 (sv_ratio)")
    if method == "sv_ratio" and not param >= 1:
        raise LoraError(f"--param for sv_ratio must be 1 or more, not {param}",
                        "it keeps every singular value within PARAM times the largest")
    if method != "sv_ratio" and not 0 < param <= 1:
        raise LoraError(f"--param for {method} must be above 0 and at most 1, not {param}",
                        "it is the share to keep, e.g. 0.9")


def _check_output(output: Path, inputs: list[Path]) -> Path:
    output = Path(output)
    if output.suffix.lower() != ".safetensors":
        raise LoraError(f"the output {output} must end in .safetensors",
                        "e.g. -o small.safetensors")
    if any(output.resolve() == Path(p).resolve() for p in inputs):
        raise LoraError(f"the output {output} is an input file", "write to a new file; the "
                        "input is never replaced")
    if output.exists():
        raise LoraError(f"{output} exists already", "choose another name, or move the old "
                        "file away first")
    if not output.parent.is_dir():
        raise LoraError(f"the folder of {output} does not exist", "create it first")
    return output


def _network_metadata(metadata: dict[str, str], results: dict[str, tuple[int, float, bool]]
                      ) -> dict[str, str]:
    """``metadata`` with ss_network_dim/alpha (and conv_dim/conv_alpha in ss_network_args)
    set to the most common new values."""
    metadata = {k: v for k, v in metadata.items() if not k.startswith("sshs_")}
    for conv in (False, True):
        ranks = Counter((r, a) for r, a, c in results.values() if c == conv)
        if not ranks:
            continue
        rank, alpha = ranks.most_common(1)[0][0]
        if conv:
            try:
                args = json.loads(metadata.get("ss_network_args") or "{}")
            except ValueError:
                args = {}
            args.update(conv_dim=str(rank), conv_alpha=f"{alpha:g}")
            metadata["ss_network_args"] = json.dumps(args)
        else:
            metadata["ss_network_dim"], metadata["ss_network_alpha"] = str(rank), f"{alpha:g}"
    return metadata


# --- the commands ----------------------------------------------------------------------------


def resize_lora(path: Path, output: Path, rank: int | None = None,
                conv_rank: int | None = None, dynamic: str | None = None,
                param: float | None = None, save_precision: str | None = None
                ) -> FactorReport:
    """Write ``output``: every module of ``path`` at rank ``rank`` (``conv_rank`` for 3x3
    convolutions, default ``rank``), or at the rank the dynamic rule picks (at most
    ``rank`` when given). The input is only read."""
    _check_rank(rank, "--rank")
    _check_rank(conv_rank, "--conv-rank")
    _check_dynamic(dynamic, param)
    if rank is None and dynamic is None:
        raise LoraError("resize needs --rank N or --dynamic METHOD --param X",
                        "e.g. --rank 16, or --dynamic sv_fro --param 0.9")
    output = _check_output(output, [path])
    header, deltas, scales, precision = read_deltas(Path(path))
    report = FactorReport(output)
    tensors: dict[str, torch.Tensor] = {}
    results: dict[str, tuple[int, float, bool]] = {}
    for name, delta in deltas.items():
        u, s, vh = low_rank_svd(delta.up, delta.down)
        old_rank = delta.up.shape[1]
        cap = (conv_rank or rank) if delta.conv3x3 else rank
        new_rank = dynamic_rank(s, dynamic, param) if dynamic else (cap or old_rank)
        new_rank = max(1, min(new_rank, cap or new_rank, old_rank, len(s)))
        alpha = new_rank * scales[name]
        for key, value in factor(u, s, vh, new_rank, delta, alpha).items():
            tensors[f"{name}.{key}"] = value
        kept, error = _retained(s, new_rank)
        report.modules.append(ModuleResult(name, old_rank, new_rank, kept, error))
        results[name] = (new_rank, alpha, delta.conv3x3)
    larger = sum(1 for m in report.modules if rank and m.old_rank < rank)
    if larger:
        report.notes.append(f"{larger} modules were already at a rank below {rank} and "
                            "keep their rank (a resize never adds rank)")
    metadata = _network_metadata(header.metadata, results)
    how = (f"dynamic {dynamic} {param:g}" + (f", at most rank {rank}" if rank else "")
           if dynamic else f"rank {rank}")
    metadata["ss_training_comment"] = _comment(header.metadata, f"resized from "
                                               f"{header.path.name} ({how})")
    save_lora(output, tensors, metadata, save_precision or precision)
    return report


def merge_loras(inputs: list[tuple[Path, float]], output: Path, rank: int,
                conv_rank: int | None = None, alpha: float | None = None,
                save_precision: str | None = None) -> FactorReport:
    """Write ``output``: the sum of each input's deltas times its weight, factored to rank
    ``rank`` (``conv_rank`` for 3x3 convolutions). Refused when the files are for different
    model families or a module they share differs in shape."""
    _check_rank(rank, "--rank")
    _check_rank(conv_rank, "--conv-rank")
    if not inputs:
        raise LoraError("merge needs at least one input", "e.g. merge a.safetensors:0.7 "
                        "b.safetensors:0.5 --rank 32 -o merged.safetensors")
    if alpha is not None and not 0 < alpha < math.inf:
        raise LoraError(f"--alpha must be a number above 0, not {alpha}",
                        "leave it out for alpha = rank")
    for path, weight in inputs:
        if not math.isfinite(weight):  # nan / inf would make every merged tensor NaN
            raise LoraError(f"the weight of {path} is {weight}, not a number",
                            f"write FILE:WEIGHT with an ordinary number, e.g. {path}:0.7")
    output = _check_output(output, [p for p, _ in inputs])
    read = [(Path(p), w, *read_deltas(Path(p))) for p, w in inputs]
    families = {h.family for _, _, h, *_ in read if h.family}
    lineages = {h.lineage for _, _, h, *_ in read if h.lineage}
    if len(families) > 1 or len(lineages) > 1:
        named = "; ".join(f"{p.name}: {h.base_words}" for p, _, h, *_ in read)
        raise LoraError(f"these LoRAs are for different model families ({named})",
                        "merge only LoRAs trained for the same base model family")
    first_path, _, first_header, *_ = read[0]
    merged: dict[str, Delta] = {}
    sources: dict[str, list[str]] = {}
    for path, weight, _header, deltas, _scales, _precision in read:
        for name, delta in deltas.items():
            have = merged.get(name)
            if have is not None and (have.up.shape[0], have.down.shape[1], have.kernel) != \
                    (delta.up.shape[0], delta.down.shape[1], delta.kernel):
                raise LoraError(f"module {name} has a different shape in {path} than in "
                                f"{sources[name][0]}", "merge only LoRAs of the same "
                                "base model and module layout")
            scaled = Delta(delta.up * weight, delta.down, delta.kernel, delta.in_features)
            merged[name] = scaled if have is None else Delta(
                torch.cat([have.up, scaled.up], 1), torch.cat([have.down, scaled.down], 0),
                delta.kernel, delta.in_features)
            sources.setdefault(name, []).append(str(path))
    if len(read) > 1 and all(len(v) == 1 for v in sources.values()):
        raise LoraError("these LoRAs share no module (their layouts differ)",
                        "merge only LoRAs trained with the same key layout and base model")
    report = FactorReport(output)
    tensors: dict[str, torch.Tensor] = {}
    results: dict[str, tuple[int, float, bool]] = {}
    for name, delta in merged.items():
        u, s, vh = low_rank_svd(delta.up, delta.down)
        new_rank = max(1, min(conv_rank or rank if delta.conv3x3 else rank, len(s)))
        module_alpha = float(alpha if alpha is not None else new_rank)
        for key, value in factor(u, s, vh, new_rank, delta, module_alpha).items():
            tensors[f"{name}.{key}"] = value
        kept, error = _retained(s, new_rank)
        report.modules.append(ModuleResult(name, delta.up.shape[1], new_rank, kept, error))
        results[name] = (new_rank, module_alpha, delta.conv3x3)
    partial = sorted(name for name, found in sources.items() if len(found) < len(read))
    if partial:
        report.notes.append(f"{len(partial)} modules are in only some of the inputs (e.g. "
                            f"{partial[0]}); the others add nothing there")
    variants = sorted({h.base_words for _, _, h, *_ in read if h.variant})
    if len(variants) > 1:
        report.notes.append(f"the inputs were trained on {' and '.join(variants)}; the merged "
                            f"file says {first_header.base_words}, as {first_path.name} does")
    metadata = _merge_metadata(first_header, read)
    save_lora(output, tensors, _network_metadata(metadata, results),
              save_precision or read[0][-1])
    return report


def _merge_metadata(first: LoraHeader, read: list) -> dict[str, str]:
    """What a merged file can honestly say: the family, the network module, where it came
    from; no training settings (it was not trained)."""
    keep = ("ss_base_model_version", "ss_v2", "modelspec.architecture", "ss_network_module",
            "modelspec.sai_model_spec", "modelspec.implementation", "modelspec.resolution",
            "ss_model_type")
    metadata = {k: first.metadata[k] for k in keep if k in first.metadata}
    names = {h.metadata.get("ss_sd_model_name") for _, _, h, *_ in read}
    if len(names) == 1 and None not in names:
        metadata["ss_sd_model_name"] = names.pop()
    for key, value in _family_keys(first).items():
        metadata.setdefault(key, value)
    metadata["ss_training_comment"] = "merged from " + ", ".join(
        f"{p.name} x {w:g}" for p, w, *_ in read)
    metadata["modelspec.merged_from"] = ", ".join(p.name for p, *_ in read)
    return metadata


def _family_keys(header: LoraHeader) -> dict[str, str]:
    """The base model version and network module sd-scripts writes for the file's family,
    for a merged file whose first input's metadata does not say."""
    if header.family is None:
        return {"ss_network_module": "networks.lora"}
    return family(header.family).merged_file_keys(header.variant)


def _comment(metadata: dict[str, str], added: str) -> str:
    old = metadata.get("ss_training_comment", "")
    return f"{old}; {added}" if old and old != "None" else added
