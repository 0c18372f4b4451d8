"""Event protocol: JSON round trip, torn lines, and engine log lines becoming events."""

import logging

from lora_core.cli import LogToEvents
from lora_core.events import EventBus, JsonLinesSink, LogLine, StepEnded, WarningIssued, read_events


def test_events_round_trip_and_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "e.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        sink = JsonLinesSink(fh)
        sink(StepEnded(step=1, total_steps=2, epoch=1, total_epochs=1, loss=0.5, avg_loss=0.5,
                       lrs={"lr/unet": 1e-4}, it_per_s=3.0, eta_s=1.0))
        sink(WarningIssued("ä"))
        fh.write('{"type": "step_ended", "st')  # a writer still mid-line
    events = list(read_events(path))
    assert [type(e) for e in events] == [StepEnded, WarningIssued]
    assert events[0].lrs == {"lr/unet": 1e-4} and events[1].message == "ä"


def test_engine_warnings_and_info_become_events():
    got = []
    bridge = LogToEvents(EventBus([got.append]))
    logger = logging.getLogger("lora_core.test_bridge")
    logger.setLevel(logging.INFO)
    logger.addHandler(bridge)
    try:
        logger.warning("12 tensors match no module")
        logger.info("loading")
        logger.error("errors travel as run_failed instead")
    finally:
        logger.removeHandler(bridge)
    assert [type(e) for e in got] == [WarningIssued, LogLine]
    assert got[0].message == "12 tensors match no module"
