from collections import Counter

from lora_core.saving.tag_summary import render_tag_summary


def test_tag_summary_orders_by_count_then_name_or_alphabetically():
    counts = Counter({"red": 2, "ohwx": 5, "blue": 2, "sky": 1})
    assert render_tag_summary(counts, "count") == "[5] ohwx\n[2] blue\n[2] red\n[1] sky\n"
    assert render_tag_summary(counts, "alphabetical").splitlines()[0] == "[2] blue"
