"""Pictures per second of `lora-train caption` on this machine's CPU.

No tagger can be downloaded here, so the realistic one is built: a ConvNeXt-Base-shaped
network (the architecture of wd-v1-4-convnext-tagger-v2: dims 128/256/512/1024, depths
3/3/27/3, about 88 M weights) with random weights, 448-px NHWC input and 10,861 sigmoid
outputs, exported to ONNX with the real tagger's interface and timed through the same code
path as the command (``caption_folder``, dry run: decode, pad, resize, infer, threshold).
Random weights give different tags, not a different speed.

    .venv/bin/python bench/tagger_speed.py [--images 16] [--batch 4] [--tiny]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TAGS = 10861  # rows of wd-v1-4-convnext-tagger-v2's selected_tags.csv


def build_convnext(folder: Path, size: int = 448) -> Path:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
            self.norm = nn.LayerNorm(dim)
            self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

        def forward(self, x):
            y = self.dw(x).permute(0, 2, 3, 1)
            y = self.fc2(nn.functional.gelu(self.fc1(self.norm(y))))
            return x + y.permute(0, 3, 1, 2)

    class ConvNeXt(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            dims, depths = (128, 256, 512, 1024), (3, 3, 27, 3)
            layers: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, stride=4)]
            for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
                if i:
                    layers.append(nn.Conv2d(dims[i - 1], dim, 2, stride=2))
                layers += [Block(dim) for _ in range(depth)]
            self.features = nn.Sequential(*layers)
            self.norm, self.head = nn.LayerNorm(dims[-1]), nn.Linear(dims[-1], TAGS)

        def forward(self, x):  # NHWC BGR 0-255, as the taggers take it
            x = self.features(x.permute(0, 3, 1, 2) / 255.0)
            return torch.sigmoid(self.head(self.norm(x.mean(dim=(2, 3)))))

    model = ConvNeXt().eval()
    params = sum(p.numel() for p in model.parameters())
    folder.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, torch.zeros(1, size, size, 3), str(folder / "model.onnx"),
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      dynamo=False)
    rows = ["tag_id,name,category,count"] + [
        f"{i},{'rating' if i < 4 else 'tag'}_{i},{9 if i < 4 else 4 if i > 8000 else 0},1"
        for i in range(TAGS)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n")
    print(f"built a ConvNeXt-Base-shaped tagger: {params / 1e6:.1f} M weights, "
          f"{size}-px input, {TAGS} tags")
    return folder


def pictures(folder: Path, count: int) -> Path:
    import numpy as np
    from PIL import Image

    target = folder / "1_bench"
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (768, 512, 3), dtype=np.uint8)).save(
            target / f"{i}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tiny", action="store_true", help="the tests' 32-px tagger instead")
    args = parser.parse_args()
    from lora_core.captioning.tagger import TaggerOptions, caption_folder

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.tiny:
            from tests.core.test_captioning import make_tagger

            model = make_tagger(tmp_path / "tagger")
        else:
            model = build_convnext(tmp_path / "tagger")
        data = pictures(tmp_path / "data", args.images)
        options = TaggerOptions(batch_size=args.batch)
        caption_folder(data, str(model), options, dry_run=True, limit=args.batch)  # warm-up
        started = time.perf_counter()
        changes = caption_folder(data, str(model), options, dry_run=True)
        seconds = time.perf_counter() - started
    print(f"{len(changes)} pictures (768x512 PNG) in {seconds:.1f} s: "
          f"{len(changes) / seconds:.2f} pictures/s, batch {args.batch}, "
          f"{'tiny 32-px' if args.tiny else '448-px ConvNeXt-Base-shaped'} tagger")


if __name__ == "__main__":
    main()
