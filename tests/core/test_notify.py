"""[notify]: where notifications go, said without a literal URL's secret parts, and its
rules refused by name."""

from __future__ import annotations

from lora_core.checks.notify import notify_problems
from lora_core.notify import Ending, describe_webhook, destinations, resolve_webhook
from lora_core.profile import NotifySection


def test_a_webhook_is_shown_by_scheme_and_host_only(monkeypatch):
    assert describe_webhook("https://hooks.example.com/services/T0/B1/s3cret?x=k3y") == \
        "https://hooks.example.com/…"
    monkeypatch.setenv("NTFY_URL", "https://ntfy.sh/my-s3cret-topic")
    assert describe_webhook("$NTFY_URL") == "$NTFY_URL (https://ntfy.sh/…)"
    monkeypatch.delenv("NTFY_URL")
    assert describe_webhook("${NTFY_URL}") == "${NTFY_URL} (not set here)"
    lines = destinations(NotifySection(webhook="http://127.0.0.1:8080/abc", command="say hi",
                                       on=["failed"]))
    assert lines == ["command `say hi` (on failed)",
                     "webhook http://127.0.0.1:8080/… (on failed)"]


def test_bad_webhooks_and_endings_are_named():
    assert resolve_webhook("ftp://host/x")[1].startswith("`[notify] webhook` must be an http")
    assert "not an environment variable name" in resolve_webhook("$not a name")[1]
    assert "names the environment variable NOPE_29, which is not set" in \
        resolve_webhook("$NOPE_29", {})[1]
    problems = notify_problems(NotifySection(on=["finished", "done"], webhook="nope"))
    assert [(p.key, p.is_error) for p in problems] == [("on", True), ("webhook", True)]
    assert "'done', which is not an ending" in problems[0].message
    (literal,) = notify_problems(NotifySection(webhook="https://h.example/t0ken"))
    assert not literal.is_error and "t0ken" not in literal.message + literal.hint


def test_the_summary_carries_status_file_best_and_reason():
    ending = Ending("failed", "/runs/a", "a", "", "/o/a-best.safetensors", 0.1234,
                    "the GPU ran out of memory", 40, 3725.0)
    payload = ending.payload()
    assert payload["text"] == payload["content"] == (
        "lora-train: a failed after 40 steps in 1h 02m: the GPU ran out of memory; best "
        "a-best.safetensors (validation loss 0.1234)")
    env = ending.environment()
    assert env["LORA_TRAIN_STATUS"] == "failed"
    assert env["LORA_TRAIN_BEST_FILE"] == "/o/a-best.safetensors"
    assert env["LORA_TRAIN_MESSAGE"] == "the GPU ran out of memory"
    assert "LORA_TRAIN_BEST_FILE" not in Ending("finished").environment()
