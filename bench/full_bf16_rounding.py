"""Issue 28: what full_bf16's stochastic rounding buys, on the tiny SD 1 model.

    python bench/full_bf16_rounding.py [--steps 40] [--rank 8] [--lr 1e-4] [--json]
                                       [--optimizer AdamW] [--step-time]

Four runs of the same profile (builtin:tiny-sd1, LoRA rank ``--rank`` / alpha 1, torch
AdamW at ``--lr``, constant rate, ``mixed_precision = "bf16"``, batch 1, ``--steps`` steps,
seed 1), one after another in this process:

1. ``float32``: the LoRA weights and AdamW's moments in float32 (full_bf16 off);
2. ``bf16, to nearest``: full_bf16 with torch's AdamW writing its update to the bf16
   weights and moments rounded to nearest (what full_bf16 did before stochastic rounding;
   here by building the optimizer without a rounding seed);
3. ``bf16, stochastic``: full_bf16 as lora-train runs it, weights and moments rounded
   stochastically (lora_core/training/stochastic_rounding.py);
4. ``bf16 weights, float32 moments``: the weights rounded stochastically, the moments kept
   in float32 (the alternative for the moments, to weigh memory against result).

For each, of the ``lora_down`` and ``lora_up`` weights over every module (:func:`compared`):
how far they moved from where they started (the norm of the change: stochastic rounding's
own noise counts in it), how much of float32's change they made (1 is all of it, unbiased
rounding's expectation) and how far their change is from float32's; the largest and mean
difference of the step losses from float32's (every run draws the same
noise and timesteps: the rounding has its own generator), and the optimizer state's bytes.
With ``--optimizer AdamW8bit``, runs 1 to 3 (its moments are 8-bit: no run 4; run 2 is
bitsandbytes' own update, written to nearest). ``--step-time`` adds what one optimizer step costs,
in one thread, on 528 synthetic tensors the sizes of an SD 1.5 rank-8 LoRA's
(8 x 768 and 768 x 8, 3.2 M values): torch's fused AdamW on float32 and on bf16 weights
against the stochastically rounding AdamW on bf16 weights.

Printed as a Markdown table (``--json``: one object) to paste into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import make_images  # noqa: E402

VARIANTS = ("float32", "bf16, to nearest", "bf16, stochastic", "bf16 weights, float32 moments")


def profile_for(work: Path, args: argparse.Namespace, full_bf16: bool) -> Path:
    data = work / "data"
    if not data.exists():
        make_images(data / "10_tok thing", 4, caption="tok, thing, red, blue")
    profile = {
        "profile_version": 1,
        "model": {"pretrained_model_name_or_path": "builtin:tiny-sd1"},
        "dataset": {"train_data_dir": str(data), "resolution": 64, "min_bucket_reso": 64,
                    "max_bucket_reso": 64, "max_data_loader_n_workers": 0},
        "network": {"network_dim": args.rank, "network_alpha": 1.0},
        "optimizer": {"optimizer_type": args.optimizer, "learning_rate": args.lr,
                      "lr_scheduler": "constant"},
        "training": {"max_train_steps": args.steps, "train_batch_size": 1,
                     "mixed_precision": "bf16", "full_bf16": full_bf16, "seed": 1},
        "saving": {"output_dir": str(work / "out"), "output_name": "bench"},
    }
    path = work / f"bench-{int(full_bf16)}.toml"
    path.write_text(tomli_w.dumps(profile), encoding="utf-8")
    return path


@contextmanager
def watched(variant: str, seen: dict):
    """Patch the trainer for one variant and note the network, its starting weights and the
    optimizer as they are built."""
    import torch

    from lora_core.training import stochastic_rounding, trainer

    class FloatMoments(stochastic_rounding.StochasticRoundingAdamW):
        def _update(self, param, state, group, index):
            if not state:  # float32 moments; the rest as lora-train's
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(param, dtype=torch.float32)
                state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.float32)
            super()._update(param, state, group, index)

    setup_network, build = trainer._setup_network, trainer.build_optimizer
    rounding = stochastic_rounding.StochasticRoundingAdamW

    def network_seen(*args, **kwargs):
        seen["network"] = setup_network(*args, **kwargs)
        return seen["network"]

    def optimizer_seen(groups, opt, rounding_seed=None):
        seen["start"] = {name: p.detach().float().clone()
                         for name, p in seen["network"].named_parameters()}
        if variant == "bf16, to nearest":
            rounding_seed = None
        seen["optimizer"] = build(groups, opt, rounding_seed=rounding_seed)
        return seen["optimizer"]

    trainer._setup_network, trainer.build_optimizer = network_seen, optimizer_seen
    if variant == "bf16 weights, float32 moments":
        stochastic_rounding.StochasticRoundingAdamW = FloatMoments
    try:
        yield
    finally:
        trainer._setup_network, trainer.build_optimizer = setup_network, build
        stochastic_rounding.StochasticRoundingAdamW = rounding


def run_variant(work: Path, args: argparse.Namespace, variant: str) -> dict:
    from lora_core.events import EventBus, StepEnded
    from lora_core.profile_load import load_profile
    from lora_core.session import run_training, start_run

    path = profile_for(work / variant.replace(" ", "_").replace(",", ""), args,
                       full_bf16=variant != "float32")
    profile = load_profile(path)
    events: list = []
    seen: dict = {}
    started = time.time()
    with watched(variant, seen):
        started_run = start_run(profile, path)
        run_training(profile, path, started_run, EventBus([events.append]), lambda: False)
        started_run.lock.close()
    wall = time.time() - started
    params = {n: p.detach().float() for n, p in seen["network"].named_parameters()}
    state = seen["optimizer"].state
    state_bytes = sum(t.numel() * t.element_size() for s in state.values()
                      for k, t in s.items() if k != "step")
    dtypes = sorted({str(p.dtype).removeprefix("torch.")
                     for p in seen["network"].parameters()})
    moment_dtypes = sorted({str(t.dtype).removeprefix("torch.") for s in state.values()
                            for k, t in s.items() if k != "step"})
    return {"variant": variant, "losses": [e.loss for e in events if isinstance(e, StepEnded)],
            "start": seen["start"], "final": params, "state_bytes": state_bytes,
            "weights": "/".join(dtypes),
            "moments": "/".join(moment_dtypes), "wall_s": wall,
            "optimizer": type(seen["optimizer"]).__name__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--optimizer", default="AdamW")
    parser.add_argument("--step-time", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    variants = VARIANTS if args.optimizer == "AdamW" else VARIANTS[:3]
    with tempfile.TemporaryDirectory(prefix="bf16-rounding-") as folder:
        work = Path(folder)
        os.environ["LORA_TUI_STATE_DIR"] = str(work / "state")
        results = [run_variant(work, args, v) for v in variants]
    steps_ms = step_times() if args.step_time else None
    base = results[0]
    for r in results:
        diffs = [abs(a - b) for a, b in zip(r["losses"], base["losses"], strict=True)]
        r["loss_diff_max"], r["loss_diff_mean"] = max(diffs), sum(diffs) / len(diffs)
        r.update(compared(r, base))
    for r in results:
        del r["start"], r["final"]
    if args.json:
        print(json.dumps({"steps": args.steps, "rank": args.rank, "lr": args.lr,
                          "optimizer": args.optimizer, "runs": results,
                          "optimizer_step_ms": steps_ms}, indent=2))
        return 0
    print(f"tiny SD 1, LoRA rank {args.rank}, {args.optimizer} lr {args.lr:g}, {args.steps} "
          "steps, mixed_precision bf16, batch 1\n")
    print("| run | weights / moments | lora_down: moved | along float32's change "
          "| off float32's change | lora_up: along / off | loss diff max / mean "
          "| optimizer state |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        down, up = r["lora_down"], r["lora_up"]
        print(f"| {r['variant']} | {r['weights']} / {r['moments']} "
              f"| {down['moved']:.4f} | {down['along']:.2f} | {down['off']:.2f} "
              f"| {up['along']:.2f} / {up['off']:.2f} "
              f"| {r['loss_diff_max']:.2e} / {r['loss_diff_mean']:.2e} "
              f"| {r['state_bytes'] / 1024:.0f} KiB |")
    if steps_ms is not None:
        print("\n| optimizer step, 528 tensors, 3.2 M values, 1 thread | ms (median) |")
        print("|---|---|")
        for name, ms in steps_ms.items():
            print(f"| {name} | {ms:.1f} |")
    return 0


def step_times(steps: int = 15) -> dict[str, float]:
    """Median milliseconds of one optimizer step (after 3 warm-up steps), one thread."""
    import statistics

    import torch

    from lora_core.training.stochastic_rounding import StochasticRoundingAdamW

    torch.set_num_threads(1)  # a shared machine: spinning thread pools distort small ops

    def timed(make, dtype) -> float:
        torch.manual_seed(0)
        params = [torch.nn.Parameter((torch.randn(shape) * 0.05).to(dtype))
                  for _ in range(264) for shape in ((8, 768), (768, 8))]
        optimizer, times = make(params), []
        for _ in range(steps):
            for param in params:
                param.grad = torch.randn_like(param) * 1e-3
            started = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - started)
        return statistics.median(times[3:]) * 1000

    return {
        "torch AdamW, fused, float32 weights": timed(
            lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=True), torch.float32),
        "torch AdamW, fused, bf16 weights (to nearest)": timed(
            lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=True), torch.bfloat16),
        "StochasticRoundingAdamW, bf16 weights": timed(
            lambda ps: StochasticRoundingAdamW(ps, lr=1e-4, seed=1), torch.bfloat16)}


def compared(run: dict, base: dict) -> dict:
    """Per factor (lora_down, lora_up), over every module: ``moved``, the norm of the change
    from the run's own start; ``along``, how much of float32's change it made (its
    projection on float32's change, over that change's squared norm: 1 is all of it);
    ``off``, the norm of its change's difference from float32's, over float32's change's
    norm (each from its own start: bf16 starts from the float32 start rounded)."""
    found = {}
    for part in ("lora_down", "lora_up"):
        names = [n for n in run["final"] if f".{part}." in n]
        delta = {n: run["final"][n] - run["start"][n] for n in names}
        ref = {n: base["final"][n] - base["start"][n] for n in names}
        ref_sq = sum(float(ref[n].pow(2).sum()) for n in names)
        found[part] = {
            "moved": math.sqrt(sum(float(delta[n].pow(2).sum()) for n in names)),
            "along": sum(float((delta[n] * ref[n]).sum()) for n in names) / ref_sq,
            "off": math.sqrt(sum(float((delta[n] - ref[n]).pow(2).sum()) for n in names)
                             / ref_sq)}
    return found


if __name__ == "__main__":
    raise SystemExit(main())
