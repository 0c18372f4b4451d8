"""Caption processing against kohya-compat.md §3 (sd-scripts' BaseDataset.process_caption).

Each test turns one option on and checks the caption it produces, so it fails if that
option were ignored. Random choices come from seeded ``random.Random`` objects only.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lora_core.dataset.captions import (
    expand_wildcards,
    process_caption,
    sample_rng,
    warmup_steps_of,
)
from lora_core.dataset.subset_options import SubsetOptions

TAGS = [f"t{i}" for i in range(10)]
CAPTION = ", ".join(TAGS)


def run(caption: str, opts: SubsetOptions, seed: int = 0, *, epoch: int = 1, step: int = 0,
        max_train_steps: int = 100) -> str:
    return process_caption(caption, opts, random.Random(seed), epoch=epoch, step=step,
                           max_train_steps=max_train_steps)


def many(caption: str, opts: SubsetOptions, n: int = 1000, **kwargs) -> list[str]:
    return [run(caption, opts, seed, **kwargs) for seed in range(n)]


def test_defaults_leave_the_first_line_untouched() -> None:
    assert run("a,b ,  c", SubsetOptions()) == "a,b ,  c"
    assert run("first, line\nsecond line", SubsetOptions()) == "first, line"


# --- 1. prefix / suffix ----------------------------------------------------------------------


def test_prefix_and_suffix_are_joined_with_a_space() -> None:
    opts = SubsetOptions(caption_prefix="ohwx woman", caption_suffix="best quality")
    assert run("red hair, smile", opts) == "ohwx woman red hair, smile best quality"


def test_prefix_takes_part_in_shuffling() -> None:
    # "p" is glued onto the first tag by the space join, so that tag moves with shuffling.
    opts = SubsetOptions(caption_prefix="p", shuffle_caption=True)
    outputs = many("a, b, c, d", opts, 200)
    assert all(sorted(o.split(", ")) == ["b", "c", "d", "p a"] for o in outputs)
    assert len({o.split(", ").index("p a") for o in outputs}) == 4


# --- 2. whole-caption dropout ----------------------------------------------------------------


def test_caption_dropout_rate_is_respected() -> None:
    outputs = many(CAPTION, SubsetOptions(caption_dropout_rate=0.3))
    dropped = outputs.count("")
    assert 0.25 < dropped / len(outputs) < 0.35
    assert set(outputs) == {"", CAPTION}


def test_dropout_every_n_epochs_uses_one_based_epochs() -> None:
    opts = SubsetOptions(caption_dropout_every_n_epochs=3, caption_prefix="p")
    produced = {epoch: run(CAPTION, opts, epoch=epoch) for epoch in range(1, 8)}
    assert [e for e, c in produced.items() if c == ""] == [3, 6]
    assert produced[1] == "p " + CAPTION


def test_dropped_caption_skips_every_later_step() -> None:
    opts = SubsetOptions(caption_dropout_every_n_epochs=1, caption_prefix="p",
                         secondary_separator=";;;", shuffle_caption=True)
    assert run("a;;;b, c", opts) == ""


# --- 3. wildcards / multi-line ---------------------------------------------------------------


def test_wildcard_picks_each_line_and_each_choice() -> None:
    opts = SubsetOptions(enable_wildcard=True)
    outputs = Counter(many("a {red|blue} cat\na dog", opts, 600))
    assert set(outputs) == {"a red cat", "a blue cat", "a dog"}
    assert all(count > 100 for count in outputs.values())


def test_wildcard_choices_only_yield_their_alternatives() -> None:
    opts = SubsetOptions(enable_wildcard=True)
    outputs = set(many("{a|b}", opts, 200))
    assert outputs == {"a", "b"}
    assert set(many("x {1|2|3}, y {p|q}", opts, 300)) == {
        f"x {n}, y {c}" for n in "123" for c in "pq"}


def test_double_braces_are_literal_braces() -> None:
    rng = random.Random(0)
    assert expand_wildcards("{{not|a wildcard}} {a|a}", rng) == "{not|a wildcard} a"
    assert set(expand_wildcards("{{x}} {p|q}", random.Random(s)) for s in range(50)) == {
        "{x} p", "{x} q"}


def test_without_wildcard_braces_stay_and_only_the_first_line_is_used() -> None:
    assert run("a {red|blue} cat\nsecond", SubsetOptions()) == "a {red|blue} cat"


def test_prefix_lands_on_the_first_line_of_a_multiline_caption() -> None:
    # sd-scripts adds the prefix to the whole text before choosing a line.
    opts = SubsetOptions(enable_wildcard=True, caption_prefix="p")
    assert set(many("one\ntwo", opts, 100)) == {"p one", "two"}


# --- 4. tag processing -----------------------------------------------------------------------


def test_shuffle_moves_tags_but_never_the_first_keep_tokens() -> None:
    opts = SubsetOptions(shuffle_caption=True, keep_tokens=2)
    outputs = many(CAPTION, opts, 300)
    for out in outputs:
        tags = out.split(", ")
        assert tags[:2] == ["t0", "t1"] and sorted(tags) == sorted(TAGS)
    assert len(set(outputs)) > 250
    assert {o.split(", ")[2] for o in outputs} == set(TAGS[2:])


def test_shuffle_is_a_function_of_the_sample_position() -> None:
    opts = SubsetOptions(shuffle_caption=True)

    def at(position: int) -> str:
        return process_caption(CAPTION, opts, sample_rng(7, 2, position, 0), epoch=2, step=0,
                               max_train_steps=10)

    assert at(5) == at(5)
    assert len({at(p) for p in range(20)}) > 15


def test_tag_processing_rejoins_with_comma_space() -> None:
    # Any of the three switches re-joins the tags; the caption otherwise stays as written.
    assert run("a,b,c", SubsetOptions(shuffle_caption=True, keep_tokens=3)) == "a, b, c"
    assert run("a,b,c", SubsetOptions(token_warmup_step=5), step=10) == "a, b, c"
    assert run("a,b,c", SubsetOptions(keep_tokens=3)) == "a,b,c"


def test_keep_tokens_separator_splits_fixed_flexible_and_fixed_suffix() -> None:
    opts = SubsetOptions(shuffle_caption=True, keep_tokens=5, keep_tokens_separator="|||")
    caption = "ohwx, woman ||| a, b, c, d, e ||| best, quality"
    outputs = many(caption, opts, 300)
    for out in outputs:
        tags = out.split(", ")
        assert tags[:2] == ["ohwx", "woman"] and tags[-2:] == ["best", "quality"]
        assert sorted(tags[2:-2]) == list("abcde")
    assert len(set(outputs)) > 60  # keep_tokens = 5 is ignored: the flexible part moves
    assert all("|||" not in out for out in outputs)


def test_keep_tokens_separator_once_has_no_suffix() -> None:
    opts = SubsetOptions(shuffle_caption=True, keep_tokens_separator="|||")
    outputs = many("x|||a, b, c", opts, 100)
    assert all(o.startswith("x, ") for o in outputs)
    assert {o.split(", ")[-1] for o in outputs} == {"a", "b", "c"}


def test_keep_tokens_separator_stays_literal_without_tag_processing() -> None:
    opts = SubsetOptions(keep_tokens_separator="|||")
    assert run("x ||| a, b", opts) == "x ||| a, b"


def test_tag_dropout_drops_only_flexible_tags_at_its_rate() -> None:
    opts = SubsetOptions(caption_tag_dropout_rate=0.3, keep_tokens=1)
    outputs = many(CAPTION, opts)
    kept = Counter(tag for out in outputs for tag in out.split(", "))
    assert kept["t0"] == len(outputs)
    for tag in TAGS[1:]:
        assert 0.65 < kept[tag] / len(outputs) < 0.75
    # order is kept when not shuffling
    assert all(o.split(", ") == sorted(o.split(", "), key=TAGS.index) for o in outputs)


def test_warmup_steps_of_converts_a_ratio_with_floor() -> None:
    assert warmup_steps_of(SubsetOptions(token_warmup_step=0.25), 1000) == 250
    assert warmup_steps_of(SubsetOptions(token_warmup_step=0.3), 7) == 2
    assert warmup_steps_of(SubsetOptions(token_warmup_step=40), 1000) == 40
    assert warmup_steps_of(SubsetOptions(), 1000) == 0


@pytest.mark.parametrize(("step", "flexible"), [
    (0, 2), (1, 2), (5, 3), (9, 5), (10, 5), (19, 8), (20, 9), (500, 9)])
def test_token_warmup_truncates_flexible_tags(step: int, flexible: int) -> None:
    # 9 flexible tags after keep_tokens=1, min 2, 20 steps:
    # floor(step * (9 - 2) / 20) + 2 flexible tags before step 20, all 9 from then on.
    opts = SubsetOptions(token_warmup_step=20, token_warmup_min=2, keep_tokens=1)
    assert run(CAPTION, opts, step=step).split(", ") == TAGS[:1 + flexible]


def test_token_warmup_as_a_ratio_of_the_run() -> None:
    opts = SubsetOptions(token_warmup_step=0.5, token_warmup_min=1)
    # 10 tags, 200 steps -> warm-up over 100 steps: floor(step * 9 / 100) + 1 tags
    lengths = {s: len(run(CAPTION, opts, step=s, max_train_steps=200).split(", "))
               for s in (0, 12, 50, 99, 100)}
    assert lengths == {0: 1, 12: 2, 50: 5, 99: 9, 100: 10}


def test_token_warmup_truncates_before_shuffling() -> None:
    opts = SubsetOptions(token_warmup_step=10, token_warmup_min=3, shuffle_caption=True)
    outputs = many(CAPTION, opts, 100, step=0)
    assert {tuple(sorted(o.split(", "))) for o in outputs} == {("t0", "t1", "t2")}
    assert len(set(outputs)) == 6


# --- 5. secondary separator ------------------------------------------------------------------


def test_secondary_separator_becomes_the_caption_separator() -> None:
    opts = SubsetOptions(secondary_separator=";;;")
    assert run("a;;;b, c", opts) == "a,b, c"
    opts = SubsetOptions(secondary_separator=";;;", caption_separator="|")
    assert run("a;;;b| c", opts) == "a|b| c"


def test_secondary_separator_joins_words_into_one_tag_for_shuffle_and_dropout() -> None:
    opts = SubsetOptions(secondary_separator=";;;", shuffle_caption=True,
                         caption_tag_dropout_rate=0.5)
    outputs = many("a;;;b, c, d", opts, 300)
    for out in outputs:
        parts = out.split(", ")
        # "a,b" stays one unit: it is either kept whole or dropped whole
        assert "a" not in parts and "b" not in parts
        assert set(parts) <= {"a,b", "c", "d", ""}
    assert sum("a,b" in o for o in outputs) not in (0, len(outputs))
    assert any(o.startswith(("c", "d")) and "a,b" in o for o in outputs)


def test_secondary_separator_inside_wildcards() -> None:
    opts = SubsetOptions(enable_wildcard=True, secondary_separator=";;;")
    assert set(many("{x;;;y|z}", opts, 100)) == {"x,y", "z"}


# --- order of the steps ----------------------------------------------------------------------


def test_steps_run_in_sd_scripts_order() -> None:
    opts = SubsetOptions(caption_prefix="p", caption_suffix="s", enable_wildcard=True,
                         keep_tokens=1, shuffle_caption=True, secondary_separator=";;;")
    outputs = set(many("{a|b}, c;;;d, e", opts, 300))
    for out in outputs:
        tags = out.split(", ")
        assert tags[0] in ("p a", "p b")  # prefix joined before the fixed tag
        assert sorted(tags[1:]) == ["c,d", "e s"]  # suffix glued to the last tag
    assert len(outputs) == 4
