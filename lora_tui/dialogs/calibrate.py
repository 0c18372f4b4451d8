"""C on the review: what the run will take, measured before it (``lora-train calibrate``), and
the settings that make it fit, one key each. The review shows the figures beside the plan
(:func:`review_text`) once measured, and at once when it opens for answers measured before.

The measurement is the engine's (a child ``lora-train calibrate --json``: a few real training
steps that save nothing; the wizard never imports torch). It takes about as long as loading
the model and a few steps; a result for the same profile, device and torch version is
remembered by the engine and shown at once. On a GPU the budget is its free memory; on a
CPU there is none until one is given (B), since the RAM is shared with everything else.
A proposal is only ever taken with its key: it is the ``--set`` lines the user could have
typed, put into the answers (and shown on the review as changes) when chosen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from lora_tui.widgets.ordered_keys import OrderedInput


def calibrate_argv(profile: Path, budget: str | None, overrides: list[str] = ()) -> list[str]:
    """The engine's command (the tests give another); ``overrides``: ``--set`` items."""
    argv = [sys.executable, "-m", "lora_core.cli", "calibrate", str(profile), "--json"]
    for item in overrides:
        argv += ["--set", item]
    return argv + (["--memory-budget", budget] if budget else [])


def _size(size: float | None) -> str:
    if size is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{int(size)} B"


def result_text(result: dict[str, Any]) -> str:
    """The measured figures beside the plan, as markup."""
    parts = ", ".join(f"{name.replace('_', ' ')} {seconds:.0f} s"
                      for name, seconds in result.get("eta_parts", {}).items()
                      if seconds >= 0.5)
    head = (f"[b]Measured on {escape(str(result['device']))}[/b] "
            f"(torch {escape(str(result['torch_version']))}"
            + (", remembered" if result.get("remembered") else "") + ")")
    if result.get("seconds_per_step") is None:  # the profile as it is did not run
        lines = [head, f"  [red]as it is: {escape(str(result.get('error') or 'failed'))}"
                       "[/red]"]
    else:
        lines = [head, f"  time to the first step  {result['first_step_seconds']:.1f} s",
                 f"  seconds per step        {result['seconds_per_step']:.2f} s",
                 f"  peak memory             {_size(result['peak_memory_bytes'])}",
                 f"  the whole run           about {result['eta_seconds'] / 60:.1f} min for "
                 f"{result['total_steps']} steps ({parts})"]
    if (compiled := compile_line(result)) is not None:
        lines.append(compiled)
    budget = result.get("budget_bytes")
    if budget is None:
        lines.append("[dim]No memory budget: B gives one (e.g. 10GiB) to get settings that "
                     "fit it.[/dim]")
    else:
        fits = bool(result.get("fits"))
        lines.append(f"Budget {_size(budget)}: the profile "
                     + ("[green]fits[/green]" if fits else "[red]does not fit[/red]"))
        if not result["proposals"]:
            lines.append("[dim]no proposal[/dim]")
        elif not fits and not any(p["fits"] for p in result["proposals"]):
            lines.append("[yellow]nothing measured fits: a smaller resolution or rank, or "
                         "more memory[/yellow]")
    return "\n".join(lines)


def compile_line(result: dict[str, Any]) -> str | None:
    """calibrate's verdict on torch_compile, in two lines (None when it did not compare)."""
    verdict = result.get("torch_compile")
    if not verdict:
        note = result.get("torch_compile_note")
        return f"  torch_compile: not compared: {escape(note)}" if note else None
    speed = (f"\n    {verdict['compiled_seconds_per_step']:.2f} s/step compiled, "
             f"{verdict['eager_seconds_per_step']:.2f} without, "
             f"{verdict['compile_seconds']:.0f} s to compile")
    even = verdict["break_even_steps"]
    if even is None:
        return f"  torch_compile: [yellow]never pays off here[/yellow]{speed}"
    if verdict["pays_off"]:
        return (f"  torch_compile: [green]pays off[/green] after {even} of "
                f"{verdict['planned_steps']} steps{speed}")
    return (f"  torch_compile: [yellow]pays off after {even} steps[/yellow], the run has "
            f"{verdict['planned_steps']}{speed}")


def proposal_result(result: dict[str, Any], proposal: dict[str, Any]) -> dict[str, Any]:
    """What the review shows for a proposal taken: its own seconds per step and peak (its
    few steps measured; no time to the first step, no whole-run prediction)."""
    return {"device": result["device"], "torch_version": result["torch_version"],
            "seconds_per_step": proposal["seconds_per_step"],
            "peak_memory_bytes": proposal["peak_memory_bytes"], "first_step_seconds": None,
            "eta_seconds": None, "budget_bytes": result.get("budget_bytes"),
            "fits": proposal["fits"], "proposals": [], "taken": " ".join(proposal["set"])}


def review_text(result: dict[str, Any]) -> str:
    """The figures the review shows beside the plan (``--json``'s object)."""
    head = (f"[b]Measured on this machine[/b]: {escape(str(result['device']))} "
            f"[dim](torch {escape(str(result['torch_version']))}"
            + ("; remembered" if result.get("remembered") else "") + ")[/dim]")
    if result.get("taken"):
        head += (f"\n  [dim]as proposed ({escape(result['taken'])}); C measures the whole "
                 "run[/dim]")
    if result.get("seconds_per_step") is None:
        lines = [head, f"  [red]as it is: {escape(str(result.get('error') or 'failed'))}"
                       "[/red]"]
    else:
        parts = ", ".join(f"{name.replace('_', ' ')} {seconds:.0f} s"
                          for name, seconds in result.get("eta_parts", {}).items()
                          if seconds >= 0.5)
        first = result.get("first_step_seconds")
        lines = [head,
                 f"  {result['seconds_per_step']:.2f} s/step · peak memory "
                 f"{_size(result['peak_memory_bytes'])}"
                 + ("" if first is None else f" · first step after {first:.1f} s")]
        if result.get("eta_seconds") is not None:
            lines.append(f"  whole run of {result['total_steps']} steps: about "
                         f"{result['eta_seconds'] / 60:.1f} min ({parts})")
        if (compiled := compile_line(result)) is not None:
            lines.append(compiled)
    budget = result.get("budget_bytes")
    if budget is not None:
        fits = bool(result.get("fits"))
        fitting = sum(1 for p in result.get("proposals", []) if p.get("fits"))
        lines.append(f"  budget {_size(budget)}: "
                     + ("[green]fits[/green]" if fits else "[red]does not fit[/red]")
                     + (f"; C shows {fitting} setting{'s' * (fitting != 1)} that "
                        f"fit{'s' * (fitting == 1)}" if fitting and not fits else ""))
    return "\n".join(lines)


def proposal_label(index: int, proposal: dict[str, Any]) -> str:
    sets = " ".join(proposal["set"])
    if proposal["seconds_per_step"] is None:
        return f"{index}  {sets}: {proposal['note']}"
    return (f"{index}  {sets}  ({proposal['seconds_per_step']:.2f} s/step, "
            f"{_size(proposal['peak_memory_bytes'])}, "
            + ("fits)" if proposal["fits"] else "does not fit)"))


class CalibrateDialog(ModalScreen[list[str] | None]):
    """Dismisses with the ``--set`` items of the proposal chosen, or None."""

    BINDINGS = [Binding("escape,q", "close", "Close"),
                Binding("b", "budget", "Budget"),
                *[Binding(str(i), f"choose({i})", show=False) for i in range(1, 10)]]

    def __init__(self, profile: Path, budget: str | None = None,
                 overrides: list[str] = ()) -> None:
        super().__init__(classes="dialog calibrate")
        self.profile = profile
        self.budget = budget
        self.overrides = list(overrides)
        self.result: dict[str, Any] | None = None
        # The engine's process of the measurement under way (stopped when the dialog closes
        # or a new budget is measured: a calibration left running would hold the GPU the
        # run then needs); each measurement's number, so a stopped one's answer is dropped.
        self._child: subprocess.Popen | None = None
        self._generation = 0

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static("[b]Calibrate[/b]: a few real training steps of this profile, "
                         "nothing saved", classes="dialog-question")
            yield Static("measuring...", id="calibrate-result")
            yield OptionList(id="calibrate-proposals")
            yield OrderedInput(placeholder="memory budget, e.g. 10GiB, then Enter",
                               id="calibrate-budget")
            yield Static("[dim]1-9 or Enter: take a proposal · B: a memory budget · "
                         "Escape: close[/dim]")

    def on_mount(self) -> None:
        self.query_one("#calibrate-proposals", OptionList).display = False
        budget = self.query_one("#calibrate-budget", OrderedInput)
        budget.display = False
        budget.submit = lambda: self._budget_given(budget.value)
        self.measure()

    def measure(self) -> None:
        self._stop_child()
        self._generation += 1
        self._measure(self._generation)

    def _stop_child(self) -> None:
        child, self._child = self._child, None
        if child is not None and child.poll() is None:
            try:
                if hasattr(os, "killpg"):
                    os.killpg(child.pid, signal.SIGTERM)  # the engine and its measuring child
                else:  # Windows: no process groups; the engine stops its child on the way
                    child.terminate()
            except (ProcessLookupError, PermissionError, OSError):
                pass

    @work(thread=True, group="calibrate")
    def _measure(self, generation: int) -> None:
        """The engine's measurement; each of its progress lines ("measuring --set ...")
        shown as it comes (a proposal is a measurement of its own: this takes a while)."""
        try:
            child = subprocess.Popen(calibrate_argv(self.profile, self.budget, self.overrides),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        except OSError as exc:
            self.app.call_from_thread(self._failed, str(exc), generation)
            return
        self._child = child
        errors: list[str] = []
        assert child.stderr is not None and child.stdout is not None
        for line in child.stderr:
            if line.strip():
                errors.append(line.strip())
                if line.rstrip().endswith("..."):
                    self.app.call_from_thread(self._progress, line.strip(), generation)
        stdout = child.stdout.read()
        code = child.wait()
        error = next((line for line in errors if line.startswith("error:")),
                     errors[-1] if errors else f"exit code {code}")
        if code not in (0, 1) or not stdout.strip():
            self.app.call_from_thread(self._failed, error.removeprefix("error: "), generation)
            return
        try:
            result = json.loads(stdout)
        except json.JSONDecodeError:
            self.app.call_from_thread(self._failed, "the engine's answer was not JSON",
                                      generation)
            return
        self.app.call_from_thread(self._show, result, generation)

    def _progress(self, text: str, generation: int) -> None:
        if generation == self._generation and self.is_mounted:
            self.query_one("#calibrate-result", Static).update(f"[dim]{escape(text)}[/dim]")

    def _failed(self, message: str, generation: int) -> None:
        if generation == self._generation and self.is_mounted:
            self.query_one("#calibrate-result", Static).update(
                f"[red]could not measure: {escape(message)}[/red]")

    def _show(self, result: dict[str, Any], generation: int) -> None:
        if generation != self._generation or not self.is_mounted:
            return  # a measurement stopped for a newer one
        self.result = result
        self.query_one("#calibrate-result", Static).update(result_text(result))
        proposals = self.query_one("#calibrate-proposals", OptionList)
        proposals.clear_options()
        for index, proposal in enumerate(result["proposals"], start=1):
            proposals.add_option(Option(escape(proposal_label(index, proposal)),
                                        id=str(index - 1),
                                        disabled=proposal["seconds_per_step"] is None))
        proposals.display = bool(result["proposals"])
        if result["proposals"]:
            proposals.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.action_choose(int(event.option.id or 0) + 1)

    def action_choose(self, number: int) -> None:
        proposals = (self.result or {}).get("proposals", [])
        if 1 <= number <= len(proposals) \
                and proposals[number - 1]["seconds_per_step"] is not None:
            self._stop_child()
            self.dismiss(list(proposals[number - 1]["set"]))

    def action_budget(self) -> None:
        budget = self.query_one("#calibrate-budget", Input)
        budget.display = True
        budget.focus()

    def _budget_given(self, text: str) -> None:
        if not text.strip():
            return
        self.budget = text.strip()
        self.query_one("#calibrate-budget", Input).display = False
        self.query_one("#calibrate-result", Static).update("measuring...")
        self.query_one("#calibrate-proposals", OptionList).display = False
        self.measure()

    def action_close(self) -> None:
        self._stop_child()
        self.dismiss(None)

    def on_unmount(self) -> None:
        self._stop_child()
