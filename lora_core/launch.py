"""Several processes without an ``accelerate launch`` line: ``lora-train run PROFILE
--num-processes N`` (or ``[training] num_processes``) starts the same command again under
accelerate's own launcher, one process per GPU (or per CPU process group with gloo when
there is no GPU, which is how the tests run it).

The launcher runs in a session of its own, so a Ctrl+C in the terminal reaches the ranks
once, through it (the terminal would otherwise signal every rank a second time, and a second
Ctrl+C means "abort"); this process passes its own SIGINT / SIGTERM on and returns the
launcher's exit code (130 after a Ctrl+C). Plain ``accelerate launch -m lora_core.cli run
...`` keeps working: under a launcher (``WORLD_SIZE`` set) nothing is relaunched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys


def free_port() -> int:
    """A TCP port nothing listens on now, for the processes' rendezvous."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_command(num_processes: int, gpu_ids: str, cli_args: list[str]) -> list[str]:
    """The accelerate launch command line that runs ``lora-train <cli_args>`` in
    ``num_processes`` processes (torchrun underneath, ``--multi_gpu``; without a GPU each
    process trains on the CPU and they talk over gloo)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(num_processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port())]
    if gpu_ids:
        command += ["--gpu_ids", gpu_ids]
    return [*command, "-m", "lora_core.cli", *cli_args]


def relaunch(num_processes: int, gpu_ids: str, cli_args: list[str]) -> int:
    """Run ``lora-train <cli_args>`` in ``num_processes`` processes; the launcher's exit
    code. (The profile's mixed_precision is passed to accelerate by the trainer itself.)"""
    env = {**os.environ, "LORA_TUI_LAUNCHER_PID": str(os.getpid()), "OMP_NUM_THREADS":
           os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1)
                                                     // num_processes)))}
    child = subprocess.Popen(launch_command(num_processes, gpu_ids, cli_args), env=env,
                             start_new_session=True)

    def forward(signum, frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # (a handler above means this should not happen)
                forward(signal.SIGINT, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
