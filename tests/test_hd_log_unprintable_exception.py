"""An exception whose ``__str__`` raises, logged a second time (uvicorn's "Exception in ASGI application"
after the gateway's own line for the same 500): named in one line, as its first traceback names it, in
either log format; it made logging's "--- Logging error ---", dozens of raw lines that are not JSON."""

from __future__ import annotations

import json
import logging

import pytest

from serving.__main__ import LOG_FORMAT, LogLine
from serving.log_json import JsonLine


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def _exc_info() -> tuple:
    try:
        raise Unprintable()
    except Unprintable as error:
        return (Unprintable, error, error.__traceback__)


def _record(exc_info: tuple) -> logging.LogRecord:
    return logging.LogRecord(
        "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application", (), exc_info
    )


@pytest.mark.parametrize("kind", ["text", "json"])
def test_an_exception_whose_text_raises_is_named_in_one_line_when_logged_again(kind):
    text = LogLine(LOG_FORMAT)
    formatter = JsonLine(traceback=text) if kind == "json" else text
    exc_info = _exc_info()
    first = formatter.format(_record(exc_info))
    assert "Unprintable: <exception str() failed>" in first
    again = formatter.format(_record(exc_info))  # raised RuntimeError: logging's raw error report
    named = "(Unprintable: <exception str() failed>: its traceback is above)"
    if kind == "json":
        assert "\n" not in again and json.loads(again)["exception"] == named, again
    else:  # the record's line, then the exception's in one line
        assert again.splitlines()[1:] == [named], again
