"""An exception Python cannot raise (a ``__del__``'s, a finalizer's: "Exception ignored in") is logged as
any record is: under ``--log-format json`` one JSON line, its traceback in ``exception``, where Python
printed it raw on stderr, a line each frame."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

UNRAISABLE = """
import gc, sys
from serving.__main__ import _start_logging
_start_logging("info", sys.argv[1])
class Handle:
    def __del__(self):
        raise ValueError("cannot close the handle")
Handle()
gc.collect()
"""


def _run(log_format: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", UNRAISABLE, log_format], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_an_exception_ignored_in_a_finalizer_is_one_json_line_with_its_traceback():
    stderr = _run("json")
    entries = []
    for line in stderr.splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\n{stderr}")
    (entry,) = entries
    assert entry["severity"] == "ERROR" and entry["logger"] == "serving", entry
    assert entry["message"].startswith("Exception ignored in: <function Handle.__del__"), entry
    assert entry["exception"].endswith("ValueError: cannot close the handle"), entry


def test_under_the_text_format_it_is_a_dated_record_too():
    (first, *traceback) = _run("text").splitlines()
    assert " ERROR [" in first and "serving: Exception ignored in: <function Handle.__del__" in first, first
    assert traceback[-1] == "ValueError: cannot close the handle", traceback
