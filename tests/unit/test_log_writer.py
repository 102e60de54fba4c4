from __future__ import annotations

import io
import json
import logging
import threading
import time

from cache_service.log_writer import BackgroundHandler
from cache_service.logs import JsonFormatter


class SlowStream(io.StringIO):
    """Records each write, so a test sees how many writes the lines took."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.written = threading.Event()

    def write(self, s: str) -> int:
        self.writes += 1
        n = super().write(s)
        self.written.set()
        return n


def _logger(handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(f"test-log-writer-{id(handler)}")
    log.propagate = False
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    return log


def test_info_lines_wait_for_the_writer_and_leave_in_order_in_one_write() -> None:
    stream = SlowStream()
    handler = BackgroundHandler(stream, flush_interval_s=3600)
    handler.setFormatter(JsonFormatter())
    log = _logger(handler)
    for i in range(50):
        log.info("request", extra={"n": i})
    time.sleep(0.05)
    assert stream.getvalue() == ""  # queued: the caller neither formatted nor wrote them
    handler.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["n"] for line in lines] == list(range(50))
    assert lines[0]["event"] == "request" and lines[0]["level"] == "info"
    assert stream.writes == 1


def test_a_warning_is_written_at_once_with_what_was_queued_before_it() -> None:
    stream = SlowStream()
    handler = BackgroundHandler(stream, flush_interval_s=3600)
    handler.setFormatter(JsonFormatter())
    log = _logger(handler)
    log.info("before")
    log.warning("trouble")
    assert stream.written.wait(5)
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["before", "trouble"]
    handler.close()


def test_lines_are_written_within_the_interval_without_a_close() -> None:
    stream = SlowStream()
    handler = BackgroundHandler(stream, flush_interval_s=0.05)
    handler.setFormatter(JsonFormatter())
    _logger(handler).info("soon")
    assert stream.written.wait(5)
    assert json.loads(stream.getvalue())["event"] == "soon"
    handler.close()


def test_a_record_that_cannot_be_formatted_costs_only_itself() -> None:
    stream = SlowStream()
    handler = BackgroundHandler(stream, flush_interval_s=3600)
    handler.setFormatter(JsonFormatter())
    log = _logger(handler)
    log.info("bad %d", "not a number")  # formatting raises in the writer, not the caller
    log.info("good")
    handler.close()
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["good"]
