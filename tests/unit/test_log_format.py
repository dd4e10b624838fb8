"""JSON log lines: one object per line, with the IDs the message names as fields."""

from __future__ import annotations

import json
import logging

from bot.cli import JsonLineFormatter


def test_a_json_line_carries_time_level_logger_message_and_ids() -> None:
    record = logging.LogRecord(
        "handlers.intake",
        logging.INFO,
        __file__,
        1,
        "referral recorded: ref=%s event=%s type=%s",
        ("REF-2026-000042", "$abc:localhost", "CONTACT"),
        None,
    )
    line = JsonLineFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "INFO" and data["logger"] == "handlers.intake"
    assert (
        data["message"]
        == "referral recorded: ref=REF-2026-000042 event=$abc:localhost type=CONTACT"
    )
    assert data["ref"] == "REF-2026-000042" and data["event"] == "$abc:localhost"
    assert data["ts"].endswith("+00:00")


def test_an_exception_stays_on_the_same_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    data = json.loads(JsonLineFormatter().format(record))
    assert "ValueError" in data["exception"]
