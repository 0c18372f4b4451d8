"""The sample grid from a run's events: one row per prompt, one column per sampling point,
and a resumed run's points replacing what its killed attempt made after the state."""

from __future__ import annotations

from PIL import Image

from lora_core.events import RunResumed, SampleSaved, ValidationMeasured
from lora_core.saving.sample_grid import CELL_PX, HEADER_PX, LABEL_PX, collect, write_grid


def test_columns_rows_labels_and_a_resume(tmp_path):
    def png(name: str, colour) -> str:
        path = tmp_path / name
        Image.new("RGB", (64, 64), colour).save(path)
        return str(path)

    events = [SampleSaved(png(f"s{step}_{i}.png", (10 * step, 0, 0)), step, step // 3, i,
                          f"prompt {i}") for step in (3, 6, 9) for i in (0, 1)]
    events.insert(2, ValidationMeasured(step=3, epoch=1, kind="epoch", loss=0.25,
                                        divergence=0.0, images=2))
    # Killed after step 9's samples; resumed from the state of step 6: step 9 made again.
    events += [RunResumed("/s", 6, 2),
               SampleSaved(png("again_0.png", (0, 0, 255)), 9, 3, 0, "prompt 0")]
    stream = tmp_path / "events.jsonl"
    stream.write_text("".join(e.to_json() + "\n" for e in events), encoding="utf-8")
    columns, prompts = collect(stream)
    assert [c.step for c in columns] == [3, 6, 9]
    assert columns[0].label == "e1 s3\nval 0.2500" and columns[1].label == "e2 s6"
    assert columns[2].images == {0: tmp_path / "again_0.png"}  # not the killed attempt's
    assert prompts == {0: "prompt 0", 1: "prompt 1"}
    grid = write_grid(stream, tmp_path / "grid.png")
    assert (grid.rows, grid.columns) == (2, 3)
    with Image.open(tmp_path / "grid.png") as image:
        assert image.size == (LABEL_PX + 3 * CELL_PX, HEADER_PX + 2 * CELL_PX)
        middle = CELL_PX // 2
        # Column 3, row 1: the resumed run's blue image; row 2: none made again (grey).
        assert image.getpixel((LABEL_PX + 2 * CELL_PX + middle, HEADER_PX + middle)) == \
            (0, 0, 255)
        assert image.getpixel((LABEL_PX + 2 * CELL_PX + middle,
                               HEADER_PX + CELL_PX + middle)) == (64, 64, 64)
