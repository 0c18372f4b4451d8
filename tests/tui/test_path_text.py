"""Paths fitted into narrow panes: the file name whole, the folder cut in the middle."""

from __future__ import annotations

import pytest

from lora_tui.path_text import ELLIPSIS, break_name, fit_line, fit_text, shorten_path

PATH = "/home/someone/projects/loras/a-rather-long-folder-name/out/mylora-000001.safetensors"
NAME = "mylora-000001.safetensors"


@pytest.mark.parametrize("width", [len(NAME) + 1, 34, 42, 60, len(PATH) - 1])
def test_a_shortened_path_keeps_its_name_and_both_ends_of_its_folder(width):
    short = shorten_path(PATH, width)
    assert len(short) <= width and short.endswith("/" + NAME) or short == ELLIPSIS + NAME
    assert short.count(ELLIPSIS) == 1
    if width >= 42:
        assert short.startswith("/home/") and short.endswith("/out/" + NAME)


def test_a_path_that_fits_is_left_alone_and_a_name_wider_than_the_pane_is_whole():
    assert shorten_path(PATH, len(PATH)) == PATH
    assert shorten_path(PATH, 10) == NAME  # it wraps in the pane, but it is the name
    assert shorten_path("C:\\lora\\out\\a-very-long-folder\\x.safetensors", 24) \
        == "C:\\…folder\\x.safetensors"  # another machine's path: the same rule


def test_a_label_and_its_path_share_a_line_or_the_path_gets_its_own():
    assert fit_line("epoch checkpoint:", PATH, 80) == [
        "epoch checkpoint: " + shorten_path(PATH, 80 - 18)]
    label, path = fit_line("epoch checkpoint:", PATH, 34)
    assert label == "epoch checkpoint:" and path.startswith("  ") and path.endswith(NAME)
    assert len(path) <= 34


def test_a_line_of_text_ending_in_a_path_is_fitted_and_other_text_is_not():
    (line,) = fit_text(f"saved {PATH}", 60)
    assert line.startswith("saved /home/") and line.endswith(NAME) and len(line) <= 60
    words = "loading the model and caching latents for the first epoch of the run"
    assert fit_text(words, 20) == [words]  # the pane wraps it at its spaces


def test_a_name_wider_than_the_pane_breaks_between_its_parts():
    """At 80x24 the Files pane is 30 wide and a step checkpoint's name 35: it once broke
    as `quickstart-step00000004.safeten` / `sors`."""
    path = "/tmp/out/quickstart-step00000004.safetensors"
    assert fit_line("step checkpoint:", path, 30) == [
        "step checkpoint:", "quickstart-step00000004", ".safetensors"]
    assert break_name("quickstart-000001.safetensors", 30) == ["quickstart-000001.safetensors"]
    assert all(len(line) <= 10 for line in break_name("a" * 25, 10))
