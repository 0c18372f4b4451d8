"""Shows a dataset check: one row per ``<repeats>_<name>`` folder with its image and caption
counts, then the problems (which stop a run) and the advisories."""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from lora_tui.dataset_check import DatasetCheck

COLUMNS = ("folder", "images", "repeats", "captions", "no caption", "other ext", "bad",
           "small")


class DatasetTable(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("Dataset check: waiting for a folder", id="check-status")
        table = DataTable(id="check-folders", cursor_type="row", zebra_stripes=True)
        table.add_columns(*COLUMNS)
        yield table
        yield Static("", id="check-problems")

    def show_running(self) -> None:
        self.query_one("#check-status", Static).update("Dataset check: scanning...")

    def show(self, check: DatasetCheck) -> None:
        table = self.query_one("#check-folders", DataTable)
        table.clear()
        status = self.query_one("#check-status", Static)
        problems = self.query_one("#check-problems", Static)
        if check.report is None or check.report.scan is None:
            status.update("[b]Dataset check[/b]: [red]cannot read the images[/red]")
            text = escape(check.message or "")
            if check.concept_parent is not None:
                text += (f"\n[b]Press Ctrl+R to use {escape(str(check.concept_parent))}[/b] "
                         "(the folder that contains it)")
            elif check.hint:
                text += f"\n[dim]{escape(check.hint)}[/dim]"
            problems.update(text)
            return
        scan = check.report.scan
        for subset in scan.subsets:
            table.add_row(("reg/" if subset.is_reg else "") + subset.name, len(subset.images),
                          subset.repeats, subset.captions_found, len(subset.missing_captions),
                          len(subset.other_extension_captions), len(subset.undecodable),
                          len(subset.too_small))
        plan = check.report.plan
        summary = (f"{plan.num_train_images} training samples per epoch (images x repeats), "
                   f"{plan.steps_per_epoch} steps per epoch" if plan else "no plan")
        missing = sum(len(s.missing_captions) for s in scan.subsets if not s.is_reg)
        gap = (f"; [b]Ctrl+T[/b] tags the {missing} without a caption" if missing else "")
        status.update(f"[b]Dataset check[/b]: {summary}{gap}")  # the gap the dialog fills
        lines = [f"[red]problem:[/red] {escape(p.text())}" for p in check.report.errors]
        lines += [f"[yellow]note:[/yellow] {escape(p.text())}" for p in check.report.warnings]
        problems.update("\n".join(lines) or "[green]no problems found[/green]")
