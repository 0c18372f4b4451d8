"""Run another trainer's script and write a ``step_ended`` event at every optimizer step.

    PEER_PYTHON bench/peer_probe.py EVENTS SCRIPT [ARGS...]

The full-size benchmark's peer mode (``bench/full_size.py --sd-scripts DIR``) measures
sd-scripts the way it measures our engine: from a JSON-lines event stream. sd-scripts
writes none, so this wrapper registers a global optimizer step hook
(``torch.optim.optimizer.register_optimizer_step_post_hook``: it fires after every
``Optimizer.step`` of any optimizer, under accelerate's wrapper too), then runs SCRIPT as
``__main__`` with ``sys.argv`` = [SCRIPT, *ARGS] and the script's folder first on
``sys.path``, as ``python SCRIPT ARGS`` would.

It runs under the peer's own Python, so it imports nothing of this project: the standard
library and torch only.
"""

from __future__ import annotations

import json
import runpy
import sys
import time
from pathlib import Path


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit("usage: peer_probe.py EVENTS SCRIPT [ARGS...]")
    events_path, script = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
    events = open(events_path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run
    steps = 0

    from torch.optim.optimizer import register_optimizer_step_post_hook

    def step_ended(optimizer, args, kwargs) -> None:
        nonlocal steps
        steps += 1
        events.write(json.dumps({"type": "step_ended", "step": steps, "time": time.time()})
                     + "\n")
        events.flush()

    register_optimizer_step_post_hook(step_ended)
    sys.argv = [str(script), *sys.argv[3:]]
    sys.path.insert(0, str(script.parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        events.close()


if __name__ == "__main__":
    main()
