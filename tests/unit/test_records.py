"""Records: the answer is kept as the text a hit serves, and older records still read."""

from __future__ import annotations

import json
import math

from cache_service.backends.records import from_record, to_record
from cache_service.cache.front import servable
from cache_service.protocols import Entry, answer_json

ANSWER = {"choices": [{"message": {"content": "Use the reset link ☃"}}], "n": 1.5}


def entry(body: str) -> Entry:
    return Entry("e1", "s", "k", "ns", "m", "How do I reset it?", None, body, 0.0, None)


def test_the_answer_is_stored_as_the_served_text_and_decoded_on_demand() -> None:
    record = to_record(entry(answer_json(ANSWER)))
    assert record["v"] == 2 and "response" not in record
    got = from_record(record)
    assert got.body == json.dumps(ANSWER)  # what a hit sends, byte for byte
    assert got._response is None  # a candidate read decodes nothing...
    assert got.response == ANSWER  # ...until something asks for the answer
    assert servable(got)


def test_a_version_1_record_is_encoded_once_when_read() -> None:
    record = to_record(entry("{}"))
    del record["body"]
    record.update(v=1, response=ANSWER)
    got = from_record(record)
    assert got.body == json.dumps(ANSWER) and got.response == ANSWER and servable(got)


def test_answers_that_cannot_be_served_have_no_text() -> None:
    for bad in ({"x": math.nan}, {"x": [math.inf]}, ["a", "list"], "text", None):
        assert answer_json(bad) == ""
        record = to_record(entry("{}"))
        del record["body"]
        record.update(v=1, response=bad)
        got = from_record(record)
        assert not servable(got) and got.response == {}
