"""Issue 28: ``torch_compile`` against eager on a full-size model (the real SD 1.5 / SDXL
architecture with random weights, bench/full_size.py's checkpoints), as ``lora-train
calibrate --compare-compile`` measures and judges it on this machine.

    python bench/compile_speed.py [--family sd15|sdxl] [--resolution 256] [--steps 4]
                                  [--precision no] [--json] [--cache-dir DIR]

In a temporary work folder with an empty compile cache:

1. ``calibrate --compare-compile --json`` on the profile (U-Net LoRA rank 4, latents cached,
   AdamW, batch 1): the eager run and the compiled one (inductor, the repeated blocks
   compiled once per type), each its own child, the compile cache cold;
2. the same again (``--again``) with the cache now warm: what a second run pays.

Printed as Markdown for bench/RESULTS.md: time to the first step, s/step (median after two
warm-up steps), the compile cost (cold and warm cache) and the break-even step count, or
"never" where compiled steps are no faster.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.calibrate_levers import profile_for  # noqa: E402
from bench.full_size import ensure_checkpoint, ensure_hf_home  # noqa: E402
from tests.e2e.conftest import make_images  # noqa: E402


def calibrate(profile: Path, env: dict, *extra: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "lora_core.cli", "calibrate", str(profile),
                           "--json", "--compare-compile", *extra], env=env,
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode not in (0, 1):
        raise SystemExit(f"calibrate failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="sd15", choices=("sd15", "sdxl"))
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--precision", default="no", choices=("no", "bf16", "fp16"))
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "bench" / ".cache")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    checkpoint = ensure_checkpoint(args.cache_dir, args.family)
    hf_home = ensure_hf_home(args.cache_dir, args.family)
    work = Path(tempfile.mkdtemp(prefix="bench-compile-"))
    data = work / "data"
    make_images(data / "1_tok thing", args.images, size=(args.resolution, args.resolution))
    profile = work / "profile.toml"
    args.steps += 2  # the profile's own length (calibrate measures its own steps)
    profile.write_text(tomli_w.dumps(profile_for(checkpoint, data, work / "out", args)))
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "LORA_TUI_STATE_DIR": str(work / "state"), "PYTHONPATH": str(ROOT)}
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "LORA_TUI_COMPILE_CACHE_DIR"):
        env.pop(name, None)  # the state folder's own, empty: a cold cache
    steps = str(args.steps - 2)
    cold = calibrate(profile, env, "--steps", steps)
    warm = calibrate(profile, env, "--steps", steps, "--again")
    report = {"family": args.family, "resolution": args.resolution,
              "precision": args.precision, "cold": cold, "warm": warm,
              "torch": cold["torch_version"], "device": cold["device"]}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{args.family} at {args.resolution} px, mixed_precision {args.precision}, "
          f"{cold['device']}, torch {cold['torch_version']}, inductor")
    print("| cache | eager s/step | compiled s/step | compile cost (s) | break-even steps |"
          "\n|---|---|---|---|---|")
    for label, result in (("cold", cold), ("warm", warm)):
        verdict = result["torch_compile"]
        if verdict is None:
            print(f"| {label} | {result['seconds_per_step']:.2f} | not measured | | |")
            continue
        even = verdict["break_even_steps"]
        print(f"| {label} | {verdict['eager_seconds_per_step']:.2f} | "
              f"{verdict['compiled_seconds_per_step']:.2f} | {verdict['compile_seconds']:.0f} | "
              f"{'never' if even is None else even} |")
    print(f"\neager time to the first step: {cold['first_step_seconds']:.1f} s "
          "(calibrate's own measurement of the profile as it is)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
