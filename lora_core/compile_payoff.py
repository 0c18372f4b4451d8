"""Whether ``torch_compile`` pays off for a run: what calibrate says after measuring the
profile compiled and not (``lora-train calibrate``, the wizard's calibration).

Compiling costs time once, during the first steps (tracing, code generation, the C++ or
Triton compiler; a block of a new size compiles again), and saves some on each step after.
Both measurements time the same steps, so the cost is the compiled run's time beyond its
steady steps less the eager run's; the saving is the difference of their seconds per step.
It pays off after ``ceil(cost / saving)`` steps, never when compiled steps are no faster
(as on many CPUs).

The kept compile cache (``training.compiling``) changes the cost: a measurement with a cold
cache pays it in full and leaves the cache warm for the real run, which then starts sooner.
The verdict says which it measured.

No torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_core.paths import compile_cache_dir


@dataclass
class CompilePayoff:
    compile_seconds: float  # the one-off cost measured
    compiled_seconds_per_step: float
    eager_seconds_per_step: float
    break_even_steps: int | None  # None: never (compiled steps are no faster)
    planned_steps: int
    cache_was_warm: bool  # the kept cache held kernels when the measurement started
    bucket_sizes: int = 1  # of the run: each beyond the first compiles once more

    @property
    def pays_off(self) -> bool:
        return self.break_even_steps is not None and self.planned_steps > self.break_even_steps

    def as_json(self) -> dict[str, Any]:
        return {"compile_seconds": self.compile_seconds,
                "compiled_seconds_per_step": self.compiled_seconds_per_step,
                "eager_seconds_per_step": self.eager_seconds_per_step,
                "break_even_steps": self.break_even_steps, "planned_steps": self.planned_steps,
                "pays_off": self.pays_off, "cache_was_warm": self.cache_was_warm,
                "bucket_sizes": self.bucket_sizes}

    def lines(self) -> list[str]:
        speed = (f"{self.compiled_seconds_per_step:.2f} s per step compiled against "
                 f"{self.eager_seconds_per_step:.2f} s without")
        cache = "the kept cache was warm" if self.cache_was_warm else \
            "the kept cache was cold; the real run finds it warm and starts sooner"
        head = f"torch_compile: compiling cost {self.compile_seconds:.0f} s ({cache}); {speed}"
        if self.break_even_steps is None:
            verdict = ("never pays off here: compiled steps are no faster on this machine; "
                       "set training.torch_compile=false")
        elif self.pays_off:
            verdict = (f"pays off after {self.break_even_steps} steps; this run has "
                       f"{self.planned_steps}: keep it")
        else:
            verdict = (f"pays off only after {self.break_even_steps} steps; this run has "
                       f"{self.planned_steps}: set training.torch_compile=false for it")
        lines = [head, f"  {verdict}"]
        if self.bucket_sizes > 1 and self.break_even_steps is not None:
            lines.append(f"  (measured at one bucket size; the run's {self.bucket_sizes - 1} "
                         "other sizes each compile once more, a cost not counted here)")
        return lines


def payoff(compiled: Any, eager: Any, planned_steps: int, cache_was_warm: bool,
           bucket_sizes: int = 1) -> CompilePayoff:
    """The verdict from two measurements of one profile (``calibrate.Measurement``: its
    ``load_seconds`` is its time beyond its steady steps, compiling included)."""
    cost = max(0.0, compiled.load_seconds - eager.load_seconds)
    saving = eager.seconds_per_step - compiled.seconds_per_step
    # A saving within 2 % is measurement noise, not a reason to compile.
    if saving <= 0.02 * eager.seconds_per_step:
        break_even = None
    else:
        break_even = max(1, math.ceil(cost / saving))
    return CompilePayoff(cost, compiled.seconds_per_step, eager.seconds_per_step, break_even,
                         planned_steps, cache_was_warm, bucket_sizes)


def kept_cache_is_warm() -> bool:
    """Whether inductor's kept cache holds anything yet (the user's folder when set)."""
    folder = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or compile_cache_dir() / "inductor")
    return folder.is_dir() and any(folder.iterdir())
