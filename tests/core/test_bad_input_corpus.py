"""The bad-input corpus (issue 6): every dataset, profile and model mistake we know of,
run through the real CLI entry point in-process.

Each case must give: a non-zero exit; ``error:`` and ``hint:`` on stderr; a message that
names the file or the ``[section] key``; no traceback anywhere; and inputs byte-identical
afterwards, with nothing new inside them. ``check`` reports dataset problems in its
"Problems" section (the report is its output) and exits 2; ``run`` refuses the same input
with an error and a hint before any model is loaded. Inputs that are unusual but fine (CMYK,
16-bit, palette and RGBA images, captions with a byte-order mark, tiny images, empty caption
files) are tested below the corpus: they must train, with the right pixels.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_core.dataset.images import load_training_image
from tests.helpers import bad_inputs as bad
from tests.helpers.bad_inputs import CASES, Case, make_setup, snapshot


def _assert_refused(command: str, case: Case, code: int, out: str, err: str) -> None:
    text = out + err
    where = f"`{command}` on case {case.id}:\n--- stdout\n{out}\n--- stderr\n{err}"
    assert code != 0, where
    assert "Traceback" not in text, where
    assert "internal error" not in text, where
    assert "error:" in err and "hint:" in err, where
    if command == "check" and "Problems (" in err:
        # check's report lists the problem under "these stop a run", on stderr (a profile
        # that cannot be read at all gets its error alone).
        assert "these stop a run" in err, where
    flat = " ".join(text.split())  # the report wraps long lines at 80 columns
    for name in case.names:
        assert name in text or name in flat, f"{name!r} not named; {where}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_clearly(case: Case, tmp_path: Path, cli) -> None:
    setup = make_setup(tmp_path)
    case.build(setup)
    setup.write()
    before = snapshot(setup.inputs)
    for command in case.commands:
        argv = [command, str(setup.profile_path), *case.extra_args]
        if command == "run":
            argv.append("--no-progress")
        code, out, err = cli(*argv)
        _assert_refused(command, case, code, out, err)
        assert snapshot(setup.inputs) == before, f"`{command}` changed the inputs"
    # The malicious pickle was refused, not run: its os.system never happened.
    assert not (tmp_path / bad.PWNED_MARKER_NAME).exists()


def test_corpus_is_large_and_distinct() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)
    assert len({case.build for case in CASES}) == len(CASES)


def test_good_setup_passes(tmp_path: Path, cli) -> None:
    """The starting point of every case is itself fine: each failure above is the case's."""
    setup = make_setup(tmp_path)
    setup.write()
    code, out, err = cli("check", str(setup.profile_path))
    assert code == 0, out + err
    assert "Problems (0)" in out


def test_huge_image_is_not_decoded_at_scan_time(tmp_path: Path, cli, monkeypatch) -> None:
    """The 30000x30000 header must be judged from the header: a decode would need 2.7 GB."""
    setup = make_setup(tmp_path)
    bad.huge_header_png(setup)
    setup.write()
    decoded = []
    original = Image.Image.load

    def spy(self):
        if self.size == (30000, 30000):
            decoded.append(self.size)
        return original(self)

    monkeypatch.setattr(Image.Image, "load", spy)
    code, out, err = cli("check", str(setup.profile_path))
    assert code != 0 and "huge.png" in out + err
    assert decoded == []


# --- unusual inputs that are fine ---------------------------------------------------------


def _pixels(path: Path, size: int = 8) -> np.ndarray:
    """What training sees: the loader's RGB pixels at the image's own size."""
    image = load_training_image(path, (size, size), (size, size))
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def test_cmyk_jpeg_trains_as_its_rgb_colour(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    # C=0 M=255 Y=255 K=0 is pure red; a CMYK JPEG stores inverted values (Adobe), which
    # a naive reader would turn into cyan.
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)
    assert Image.open(path).mode == "CMYK"
    assert np.abs(_pixels(path) - np.array([255, 0, 0])).max() <= 3


@pytest.mark.parametrize("value16, expected8", [(65535, 255), (32768, 128), (257, 1), (0, 0)])
def test_16bit_grayscale_png_scales_to_8_bits(tmp_path: Path, value16: int,
                                              expected8: int) -> None:
    path = tmp_path / "gray16.png"
    Image.fromarray(np.full((8, 8), value16, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    assert (_pixels(path) == expected8).all()


def test_16bit_rgb_png_scales_to_8_bits(tmp_path: Path) -> None:
    path = tmp_path / "rgb16.png"
    path.write_bytes(bad.png16_rgb(8, 8, (65535, 32768, 0)))
    assert (_pixels(path) == np.array([255, 128, 0])).all()


def test_palette_png_with_transparency_keeps_its_colours(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    image = Image.new("P", (8, 8), 0)
    image.putpalette([10, 200, 30, 250, 5, 5] + [0, 0, 0] * 254)
    image.paste(1, (0, 0, 4, 8))
    image.save(path, transparency=1)  # the red half is "transparent"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's "convert to RGBA first" warning is handled
        pixels = _pixels(path)
    # sd-scripts converts to RGB: the alpha is dropped, the palette colours stay.
    assert (pixels[:, :4] == [250, 5, 5]).all() and (pixels[:, 4:] == [10, 200, 30]).all()


def test_rgba_png_drops_alpha_without_darkening(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    Image.new("RGBA", (8, 8), (120, 60, 240, 10)).save(path)
    assert (_pixels(path) == [120, 60, 240]).all()


def test_bom_caption_is_used_without_the_mark(tmp_path: Path, cli) -> None:
    setup = make_setup(tmp_path)
    (setup.concept / "img0.txt").write_bytes("\ufeffbom tag, second".encode())
    setup.write()
    from lora_core.checks import check_profile
    from lora_core.profile_load import load_profile

    report = check_profile(load_profile(setup.profile_path))
    record = next(r for s in report.scan.subsets for r in s.images
                  if r.path.name == "img0.png")
    assert record.caption == "bom tag, second"
    code, out, _ = cli("check", str(setup.profile_path))
    assert code == 0 and "img0.txt" in out and "byte-order mark" in out


def test_empty_caption_file_is_named_and_not_fatal(tmp_path: Path, cli) -> None:
    setup = make_setup(tmp_path)
    (setup.concept / "img1.txt").write_bytes(b"")
    setup.write()
    before = snapshot(setup.inputs)
    code, out, err = cli("check", str(setup.profile_path))
    assert code == 0, out + err
    assert "img1.txt" in out and "empty" in out
    assert snapshot(setup.inputs) == before


def test_tiny_image_is_named_and_will_be_enlarged(tmp_path: Path, cli) -> None:
    """sd-scripts enlarges an image below the smallest bucket; we train it too and say so."""
    setup = make_setup(tmp_path)
    (setup.concept / "tiny.png").write_bytes(bad.png_bytes((8, 8)))
    setup.write()
    code, out, err = cli("check", str(setup.profile_path))
    assert code == 0, out + err
    advisories = out.split("Advisories")[1]
    assert "tiny.png" in advisories and "enlarged" in advisories
    assert _pixels(setup.concept / "tiny.png", 64).shape == (64, 64, 3)


def test_jpeg_with_trailing_bytes_is_not_called_truncated(tmp_path: Path, cli) -> None:
    """Cameras append data after the JPEG end marker; such files decode fine and must pass
    (the truncation check confirms by decoding before it blames a file)."""
    setup = make_setup(tmp_path)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(buffer, "JPEG")
    (setup.concept / "camera.jpg").write_bytes(buffer.getvalue() + b"\x00" * 70_000)
    setup.write()
    code, out, err = cli("check", str(setup.profile_path))
    assert code == 0, out + err
    from lora_core.checks import scan_profile
    from lora_core.profile_load import load_profile

    scan = scan_profile(load_profile(setup.profile_path))
    record = next(r for r in scan.train[0].images if r.path.name == "camera.jpg")
    assert (record.width, record.height) == (64, 64)  # the decode check kept the real size
