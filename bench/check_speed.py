"""How long `lora-train check` takes, as a user waits for it (issue 13's targets).

    python bench/check_speed.py [--rounds 5] [--images 1000]

Times the whole command, process launch to exit, on the quickstart profile (target < 1 s)
and on a generated dataset of ``--images`` 64-px images with captions in one
``<repeats>_<name>`` folder on the built-in tiny model (target < 3 s for 1,000), and reports
the median of ``--rounds`` runs each. Every check `run` makes before its first step is part of
it (profile rules, model header, tokenizers, optimizer signature read from source, image
headers, plan); torch is never imported. The generated dataset is cached in
``bench/.cache/datasets`` (shared with run_bench.py).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.dataset import ensure_check_dataset  # noqa: E402
from bench.run_bench import child_env, write_profile  # noqa: E402


def time_check(profile: Path, env: dict[str, str]) -> tuple[float, int, str]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lora_core.cli", "check", str(profile)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - started, proc.returncode, proc.stdout + proc.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    cache = ROOT / "bench" / ".cache"
    with tempfile.TemporaryDirectory(prefix="check-speed-") as tmp:
        work = Path(tmp)
        env = child_env(work, "cpu")
        data = ensure_check_dataset(cache / "datasets", count=args.images)
        big = write_profile(work / "check.toml", {
            "profile_version": 1,
            "model": {"pretrained_model_name_or_path": "builtin:tiny-sd1"},
            "dataset": {"train_data_dir": str(data), "resolution": 64, "min_bucket_reso": 64,
                        "max_bucket_reso": 64},
            "training": {"max_train_epochs": 1, "mixed_precision": "no"},
            "saving": {"output_dir": str(work / "out"), "output_name": "check"},
        })
        targets = [("quickstart", ROOT / "examples" / "quickstart.toml", 1.0),
                   (f"{args.images} images", big, 3.0)]
        time_check(targets[0][1], env)  # builds the tiny model once, outside the timing
        for name, profile, target in targets:
            times = []
            for _ in range(args.rounds):
                seconds, rc, output = time_check(profile, env)
                if rc != 0:
                    print(output)
                    raise SystemExit(f"check failed on {profile} (exit {rc})")
                times.append(seconds)
            median = statistics.median(times)
            print(f"lora-train check, {name}: median {median:.3f} s over {args.rounds} runs "
                  f"(min {min(times):.3f}, max {max(times):.3f}); target < {target:g} s: "
                  f"{'met' if median < target else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
