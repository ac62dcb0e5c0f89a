"""``--log-format json`` writes a record whose message cannot be formatted as one JSON line too.

A ``%(key)s`` missing from a dict argument (KeyError) or an argument whose ``str()`` raises made the
formatter raise, and logging's own report of it went to stderr raw: "--- Logging error ---", the
traceback a line a frame, the call stack, the message and its arguments, a collector's entry each, and
the record itself was lost."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from serving.__main__ import LOG_FORMAT, LogLine
from serving.log_json import JsonLine


class _NoText:
    def __str__(self) -> str:
        raise RuntimeError("no text")

    __repr__ = __str__


def _entry(msg: object, args: object) -> dict:
    record = logging.LogRecord("serving", logging.WARNING, __file__, 1, msg, args, None)  # type: ignore[arg-type]
    line = JsonLine(traceback=LogLine(LOG_FORMAT)).format(record)
    assert "\n" not in line, line
    return json.loads(line)


def test_a_dict_argument_missing_a_named_key_is_still_one_json_line_naming_the_error():
    entry = _entry("%(model)s refused", ({"name": "resnet18"},))
    assert "%(model)s refused" in entry["message"] and "resnet18" in entry["message"]
    assert "unformattable" in entry["message"] and "KeyError" in entry["message"], entry


def test_an_argument_or_message_whose_text_raises_is_still_one_json_line():
    assert "unformattable" in _entry("%s", (_NoText(),))["message"]
    assert "_NoText object at" in _entry(_NoText(), ())["message"]


WIRED = """
import logging
from serving.__main__ import _start_logging
_start_logging("info", "json")
logging.getLogger("serving").warning("%(model)s refused", {"name": "x"})
logging.getLogger("serving").warning("after")
"""


def test_the_gateway_s_stderr_holds_only_json_lines_after_such_a_record():
    done = subprocess.run([sys.executable, "-c", WIRED], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stderr.splitlines()]  # a raw line fails here
    assert [e["message"].split()[0] for e in entries] == ["%(model)s", "after"], done.stderr
