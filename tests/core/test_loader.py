"""The torch side of the dataset: tensors, caption randomness, sharding across processes."""

from __future__ import annotations

import random

from lora_core.dataset.captions import process_caption, sample_rng
from lora_core.dataset.loader import pixels_to_tensor, process_batches
from lora_core.dataset.subset_options import SubsetOptions


def test_process_batches_gives_every_process_the_same_count_and_covers_all():
    batches = [[i] for i in range(7)]
    shards = [process_batches(batches, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert {b[0] for s in shards for b in s} == set(range(7))
    assert process_batches(batches, 0, 1) == batches
    # more processes than batches still gives everyone one
    assert [len(process_batches([[0]], r, 4)) for r in range(4)] == [1, 1, 1, 1]


def test_pixels_are_scaled_to_minus_one_one():
    from PIL import Image

    t = pixels_to_tensor(Image.new("RGB", (4, 2), (0, 255, 127)))
    assert t.shape == (3, 2, 4)
    assert t[0].max() == -1 and t[1].min() == 1 and abs(float(t[2, 0, 0]) + 0.0039) < 1e-3


def test_shuffle_keeps_first_tokens_and_is_a_function_of_position():
    caption = "ohwx, red, blue, green, sky, grass"
    opts = SubsetOptions(shuffle_caption=True, keep_tokens=1)

    def fetch(position, options=opts, rng=None):
        return process_caption(caption, options, rng or sample_rng(1, 0, position, 0), epoch=1,
                               step=0, max_train_steps=10)

    a, b = fetch(5), fetch(5)
    assert a == b and a.startswith("ohwx, ")
    assert sorted(a.split(", ")) == sorted(caption.split(", "))
    assert len({fetch(p) for p in range(20)}) > 5
    assert fetch(0, SubsetOptions(), random.Random(0)) == caption
