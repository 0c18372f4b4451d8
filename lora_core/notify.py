"""Telling the user a run ended (``[notify]``): a command and/or a webhook.

A user who leaves a run overnight, or watches it over SSH, learns it finished, was stopped
or failed (out of memory and a NaN loss are failures, with the reason in the message)
without polling a terminal. Both channels are best effort: a notification that fails is
reported as a warning and in the log, and never changes how the run ended.

A webhook URL is a secret more often than not (Slack, Discord and ntfy tokens sit in it).
``webhook = "$NTFY_URL"`` reads it from the environment so the profile holds no secret; a
literal URL stays in the profile as the user wrote it, but only its scheme and host are ever
shown (:func:`describe_webhook`): logs, events, metadata and exports never hold it.

Standard library only (urllib, subprocess); no torch. It must not import lora_core.checks
(the checks import :func:`resolve_webhook` from here: one rule, one place).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lora_core.profile import NotifySection

_VARIABLE = re.compile(r"^\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))$")
COMMAND_TIMEOUT_S = 60
WEBHOOK_TIMEOUT_S = 10


@dataclass
class Ending:
    """How a run ended, as the notifications tell it."""

    status: str               # finished, stopped or failed
    run_dir: str = ""
    output_name: str = ""
    file: str = ""            # the final LoRA file ("" when none was written)
    best_file: str = ""       # <output_name>-best.safetensors, when validation made one
    best_loss: float | None = None
    message: str = ""         # why it stopped or failed
    steps: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for a phone's notification."""
        name = self.output_name or (Path(self.run_dir).name if self.run_dir else "run")
        text = f"lora-train: {name} {self.status}"
        if self.steps:
            text += f" after {self.steps} steps in {_duration(self.seconds)}"
        if self.message:
            text += f": {self.message}"
        if self.file:
            text += f"; file {Path(self.file).name}"
        if self.best_file:
            text += f"; best {Path(self.best_file).name}"
            if self.best_loss is not None:
                text += f" (validation loss {self.best_loss:.4g})"
        return text

    def environment(self) -> dict[str, str]:
        env = {"LORA_TRAIN_STATUS": self.status, "LORA_TRAIN_RUN_DIR": self.run_dir,
               "LORA_TRAIN_FILE": self.file, "LORA_TRAIN_MESSAGE": self.message or self.summary(),
               "LORA_TRAIN_STEPS": str(self.steps)}
        if self.best_file:
            env["LORA_TRAIN_BEST_FILE"] = self.best_file
        return env

    def payload(self) -> dict:
        summary = self.summary()
        return {"status": self.status, "run_dir": self.run_dir, "output_name": self.output_name,
                "file": self.file, "best_file": self.best_file,
                "best_validation_loss": self.best_loss, "message": self.message,
                "steps": self.steps, "elapsed_s": round(self.seconds, 1),
                "text": summary, "content": summary}


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def resolve_webhook(text: str, environ: dict[str, str] | None = None
                    ) -> tuple[str | None, str | None]:
    """(url, None), or (None, why it cannot be used). ``text`` is ``[notify] webhook``: a
    URL, or ``$NAME`` / ``${NAME}`` naming an environment variable that holds one."""
    environ = os.environ if environ is None else environ
    text = text.strip()
    if not text:
        return None, None
    variable = _VARIABLE.match(text)
    if text.startswith("$"):
        if variable is None:
            return None, (f"`[notify] webhook` = {text!r} is not an environment variable "
                          "name: write it like \"$NTFY_URL\"")
        name = variable.group(1) or variable.group(2)
        url = environ.get(name, "").strip()
        if not url:
            return None, (f"`[notify] webhook` names the environment variable {name}, which "
                          "is not set (or empty) here")
        where = f"the environment variable {name}"
    else:
        url, where = text, "`[notify] webhook`"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None, (f"{where} must be an http:// or https:// URL with a host "
                      f"(it starts with {url[:8]!r})")
    return url, None


def describe_webhook(text: str) -> str:
    """Where the webhook goes, safe to show and log: the variable's name and the URL's
    scheme and host only (a token in the path or query is never shown)."""
    text = text.strip()
    if not text:
        return ""
    url, _problem = resolve_webhook(text)
    shown = ""
    if url is not None:
        parts = urllib.parse.urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        shown = f"{parts.scheme}://{parts.hostname}{port}/…"
    if text.startswith("$"):
        return f"{text} ({shown})" if shown else f"{text} (not set here)"
    return shown or "an invalid URL"


def destinations(section: NotifySection) -> list[str]:
    """What the wizard's review and the logs say about where notifications go."""
    found = []
    on = ", ".join(section.on) if section.on else "nothing"
    if section.command.strip():
        found.append(f"command `{section.command.strip()}` (on {on})")
    if section.webhook.strip():
        found.append(f"webhook {describe_webhook(section.webhook)} (on {on})")
    return found


@dataclass
class Outcome:
    """One channel's result: ``problem`` is None when it was told."""

    channel: str        # "command" or "webhook"
    destination: str    # safe to show and log
    problem: str | None


def send(section: NotifySection, ending: Ending) -> list[Outcome]:
    """Run the command and POST the webhook that ``section`` asks for at this ending; never
    raises for a failing command or endpoint."""
    if ending.status not in section.on:
        return []
    outcomes = []
    if section.command.strip():
        outcomes.append(Outcome("command", section.command.strip(),
                                run_command(section.command.strip(), ending)))
    if section.webhook.strip():
        outcomes.append(Outcome("webhook", describe_webhook(section.webhook),
                                post_webhook(section.webhook, ending)))
    return outcomes


def run_command(command: str, ending: Ending) -> str | None:
    """Run ``command`` through the shell with the LORA_TRAIN_* variables; None when it
    exited 0, else a message saying what went wrong."""
    try:
        done = subprocess.run(command, shell=True, env={**os.environ, **ending.environment()},
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return (f"the notify command `{command}` did not finish within {COMMAND_TIMEOUT_S} s "
                "and was stopped (`[notify] command`)")
    except OSError as exc:
        return f"the notify command `{command}` could not start: {exc.strerror}"
    if done.returncode == 0:
        return None
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
    why = " (command not found)" if done.returncode == 127 else ""
    detail = f": {tail[0][:200]}" if tail[0] else ""
    return (f"the notify command `{command}` exited with status {done.returncode}{why}"
            f"{detail}; check `[notify] command` (the run itself is unaffected)")


def post_webhook(text: str, ending: Ending) -> str | None:
    """POST the ending as JSON to the webhook; None on a 2xx answer, else a message that
    names the host only."""
    url, problem = resolve_webhook(text)
    if url is None:
        return f"no webhook notification: {problem}"
    shown = describe_webhook(text)
    body = json.dumps(ending.payload()).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "lora-train"})
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as answer:
            status = answer.status
    except urllib.error.HTTPError as exc:
        return f"the webhook {shown} answered HTTP {exc.code} ({exc.reason})"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return (f"the webhook {shown} could not be reached: "
                f"{_without(str(reason), url)}; check `[notify] webhook` and the network")
    if not 200 <= status < 300:
        return f"the webhook {shown} answered HTTP {status}"
    return None


def _without(text: str, url: str) -> str:
    """``text`` with the URL (and its path and query) taken out, for a log line."""
    parts = urllib.parse.urlsplit(url)
    for secret in (url, parts.path, parts.query):
        if secret and secret != "/":
            text = text.replace(secret, "…")
    return text


class EndingRecorder:
    """An event sink that gathers how the run ended, for :func:`send`."""

    def __init__(self) -> None:
        self.ending: Ending | None = None
        self.run_dir = self.output_name = self.best_file = ""
        self.best_loss: float | None = None
        self.steps = 0
        self.started_at: float | None = None

    def __call__(self, event) -> None:
        from lora_core.events import (
            BestFileSaved,
            RunFailed,
            RunFinished,
            RunStarted,
            StepEnded,
        )

        if isinstance(event, RunStarted):
            self.run_dir, self.output_name = event.run_dir, event.output_name
            self.started_at = self.started_at or event.time
        elif isinstance(event, StepEnded):
            self.steps = event.step
        elif isinstance(event, BestFileSaved):
            self.best_file, self.best_loss = event.path, event.loss
        elif isinstance(event, RunFinished):
            self.ending = Ending(
                "stopped" if event.interrupted else "finished", self.run_dir,
                self.output_name, event.final_file, event.best_file or self.best_file,
                event.best_loss if event.best_file else self.best_loss,
                event.stop_reason or ("stopped before its last step" if event.interrupted
                                      else ""), event.steps, event.seconds)
        elif isinstance(event, RunFailed):
            self.ending = Ending(
                "failed", event.run_dir or self.run_dir, self.output_name, "", self.best_file,
                self.best_loss, event.message, self.steps,
                event.time - self.started_at if self.started_at else 0.0)
