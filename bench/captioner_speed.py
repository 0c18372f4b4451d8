"""Pictures per second of `lora-train caption --captioner` on this machine's CPU.

No captioner can be downloaded here, so one shaped like Florence-2-base is built from config
(tests/helpers/tiny_captioners.py, ``shape="base"``): the DaViT vision tower (dims
128/256/512/1024, depths 1/1/9/1, window 12), a 6+6-layer BART of width 768 with the real
51,289-token vocabulary, 768-px input (577 image tokens); about 0.23 B weights, random.
Random weights would stop a caption at any length, so the saved generation config asks for
exactly ``--tokens`` new tokens each (a detailed caption is 30-60): the time is then that of
a real caption of that length. Timed through the command's own code path
(``captioner.caption_folder``, dry run: decode, resize, encode, greedy generation, clean-up).

    .venv/bin/python bench/captioner_speed.py [--images 8] [--batch 4] [--tokens 40] [--tiny]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=40, help="new tokens per caption")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny Florence-2")
    args = parser.parse_args()
    from transformers import GenerationConfig

    from bench.tagger_speed import pictures
    from lora_core.captioning.captioner import CaptionerOptions, caption_folder
    from tests.helpers.tiny_captioners import make_florence

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        started = time.perf_counter()
        model = make_florence(tmp_path / "florence", shape="tiny" if args.tiny else "base")
        config = GenerationConfig.from_pretrained(model)
        config.min_new_tokens = args.tokens  # every caption exactly --tokens long
        config.save_pretrained(model)
        print(f"built in {time.perf_counter() - started:.1f} s")
        data = pictures(tmp_path / "data", args.images)
        options = CaptionerOptions(batch_size=args.batch, max_length=args.tokens, raw=True)
        caption_folder(data, str(model), options, dry_run=True, limit=1)  # warm-up
        stamps: list[tuple[float, int]] = []
        started = time.perf_counter()
        changes = caption_folder(data, str(model), options, dry_run=True,
                                 progress=lambda done, _: stamps.append(
                                     (time.perf_counter(), done)))
        seconds = time.perf_counter() - started
    (first, first_done), (last, last_done) = stamps[0], stamps[-1]
    steady = (last_done - first_done) / (last - first) if last > first else float("nan")
    print(f"{args.images} pictures (768x512 PNG), {len(changes)} non-empty (random weights), "
          f"in {seconds:.1f} s with the model's loading: {args.images / seconds:.3f} "
          f"pictures/s; after the first batch: {steady:.3f} pictures/s; batch {args.batch}, "
          f"{args.tokens} tokens each, "
          f"{'tiny' if args.tiny else 'Florence-2-base-shaped'} captioner "
          "(<DETAILED_CAPTION>, greedy, fp32 on the CPU)")

if __name__ == "__main__":
    main()
