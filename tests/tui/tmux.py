"""A real terminal for the wizard's tests: tmux, TERM=xterm-256color, keys as a terminal
sends them, the screen read back as a person sees it.

tmux stands in for an SSH session's terminal: the app draws with real escape sequences and
``capture-pane`` returns the text on screen. :meth:`Terminal.type` sends a whole string in one
``send-keys`` (a burst, as a paste or a fast SSH link delivers it), :meth:`Terminal.burst`
named keys and text together in one; :meth:`Terminal.keys` sends named keys one call each.
Each terminal is its own tmux server (``-L``), killed at the end. tmux comes from the
system's packages; when it is missing and cannot be installed the tests that need it are
skipped with the command to install it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXITED = "LORA_TUI_EXITED="


def find_tmux() -> str | None:
    """tmux, installed from the system's packages when missing and this user may (a CI
    container runs as root); None when it cannot be had."""
    found = shutil.which("tmux")
    if found is None and shutil.which("apt-get") and hasattr(os, "geteuid") \
            and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "install", "-y", "-q", "tmux"], ["apt-get", "update", "-q"],
                        ["apt-get", "install", "-y", "-q", "tmux"]):
            subprocess.run(command, capture_output=True, timeout=300, env=env)
            found = shutil.which("tmux")
            if found:
                break
    return found


class Terminal:
    """One tmux server with one window of ``width`` x ``height``."""

    def __init__(self, tmux: str, width: int = 80, height: int = 24) -> None:
        self.tmux_path = tmux
        self.width, self.height = width, height
        self.socket = f"lora-tui-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def tmux(self, *args: str) -> str:
        result = subprocess.run([self.tmux_path, "-L", self.socket, "-f", os.devnull, *args],
                                capture_output=True, text=True, timeout=20)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def start(self, argv: list[str], env: Mapping[str, str], cwd: Path = ROOT) -> None:
        """Run ``argv`` in the window; when it exits the shell prints its exit code."""
        command = (f"cd {shlex.quote(str(cwd))} && env TERM=xterm-256color "
                   + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " "
                   + " ".join(shlex.quote(a) for a in argv)
                   + f"; echo {EXITED}$?; sleep 60")
        self.tmux("new-session", "-d", "-x", str(self.width), "-y", str(self.height),
                  "-s", "t", command)

    def start_wizard(self, env: Mapping[str, str], *args: str) -> None:
        self.start([sys.executable, "-m", "lora_tui.cli", *args], env)

    def type(self, text: str) -> None:
        """``text`` in one burst (-l: literally, no key names)."""
        self.tmux("send-keys", "-t", "t", "-l", text)

    def burst(self, *keys: str) -> None:
        """Named keys and text mixed, in one send-keys (a burst: what a paste or a fast link
        delivers), e.g. ``burst("C-u", "out/x", "Enter", "name", "Enter")``. A part that is
        not a key name is typed as text."""
        self.tmux("send-keys", "-t", "t", *keys)

    def keys(self, *names: str) -> None:
        """Named keys (Enter, Escape, C-n, Tab...), one send-keys each."""
        for name in names:
            self.tmux("send-keys", "-t", "t", name)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def wait_for(self, expected: str | Callable[[str], bool], timeout_s: float = 15.0) -> str:
        """The screen once it shows ``expected`` (text, or a predicate of the screen)."""
        check = expected if callable(expected) else (lambda s: expected in s)
        end = time.monotonic() + timeout_s
        while True:
            text = self.screen()
            if check(text):
                return text
            if time.monotonic() > end:
                raise AssertionError(f"the screen never showed {expected!r}:\n{text}")
            time.sleep(0.1)

    def title(self) -> str:
        """The first line: which screen or step is shown."""
        lines = self.screen().splitlines()
        return lines[0].strip() if lines else ""

    def kill(self) -> None:
        subprocess.run([self.tmux_path, "-L", self.socket, "kill-server"],
                       capture_output=True, timeout=10)


def flat(screen: str) -> str:
    """The screen's text as one line: borders and the wrapping of long lines removed, so a
    path that wraps in a narrow pane is found whole."""
    text = re.sub(r"[│┃╭╮╰╯─━▊▎▔▁]", " ", screen)
    return re.sub(r"\s+", "", text)
