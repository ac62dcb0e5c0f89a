"""``--log-format json``: every line the gateway writes through logging is one JSON object (Loki, ELK and
Cloud Logging read a container's output a line an entry), whatever a record holds: arguments, a
traceback, non-ASCII text, newlines, a client's control characters."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from serving.__main__ import LOG_FORMAT, LogLine, parse_args
from serving.log_json import JsonLine
from tests.repo_fixtures import build_classifier_repository
from tests.test_gateway_lifecycle import stop_gateway
from tests.waiting import eventually

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
FIELDS = {"time", "level", "severity", "logger", "message", "pid"}


def _line(record: logging.LogRecord) -> str:
    return JsonLine(traceback=LogLine(LOG_FORMAT)).format(record)


def _record(name: str, level: int, msg: str, args: tuple, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)  # type: ignore[arg-type]


def test_a_record_with_arguments_non_ascii_and_newlines_is_one_ascii_line_of_json_with_its_fields():
    record = _record("serving.app", logging.WARNING, "refused %r: %s", ("naïve\nmodel", "für\r\n2 \u2028 ✓"))
    line = _line(record)
    assert "\n" not in line and "\r" not in line and line.isascii(), line
    entry = json.loads(line)
    assert entry["message"] == "refused 'naïve\\nmodel': für\r\n2 \u2028 ✓"  # the text, whole, once parsed
    assert set(entry) == FIELDS and TIME.fullmatch(entry["time"]), entry
    assert (entry["level"], entry["severity"], entry["logger"]) == ("WARNING", "WARNING", "serving.app")
    assert entry["pid"] == record.process


def test_a_client_s_terminal_escapes_and_delete_never_reach_the_line_raw():
    line = _line(_record("serving", logging.INFO, "%s", ("\x1b[2J\x9b31m\x85\x7f\x00",)))
    assert all(ch.isprintable() and ch.isascii() for ch in line), line
    assert json.loads(line)["message"] == "\x1b[2J\x9b31m\x85\x7f\x00"


def test_an_exception_s_traceback_is_a_field_written_once_and_named_when_logged_again():
    try:
        raise ValueError("bad\nvalue")
    except ValueError as exc:
        error = exc
    exc_info = (ValueError, error, error.__traceback__)
    first = json.loads(_line(_record("serving", logging.ERROR, "failed %d", (1,), exc_info)))
    assert first["message"] == "failed 1" and first["severity"] == "ERROR"
    assert first["exception"].startswith("Traceback (most recent call last):\n")
    assert first["exception"].endswith("ValueError: bad\nvalue"), first["exception"]
    again = json.loads(
        _line(_record("uvicorn.error", logging.ERROR, "Exception in ASGI application\n", (), exc_info))
    )
    assert again["message"] == "Exception in ASGI application"
    assert again["exception"] == "(ValueError: bad\\nvalue: its traceback is above)"


def test_an_access_record_carries_its_request_as_fields_its_ipv6_client_in_brackets():
    args = ("2001:db8::7:59496", "GET", "/v2/models/x/ready?a=b", "1.1", 404)
    entry = json.loads(_line(_record("uvicorn.access", logging.INFO, '%s - "%s %s HTTP/%s" %d', args)))
    assert entry["message"] == '[2001:db8::7]:59496 - "GET /v2/models/x/ready?a=b HTTP/1.1" 404'
    assert {k: entry[k] for k in ("client", "method", "path", "http_version", "status")} == {
        "client": "[2001:db8::7]:59496",
        "method": "GET",
        "path": "/v2/models/x/ready?a=b",
        "http_version": "1.1",
        "status": 404,
    }


def test_uvicorn_s_trace_level_is_debug_to_cloud_logging_and_bad_arguments_still_make_a_line():
    logging.addLevelName(5, "TRACE")
    entry = json.loads(_line(_record("uvicorn.error", 5, "%d items", ("many",))))
    assert (entry["level"], entry["severity"]) == ("TRACE", "DEBUG")
    assert "%d items" in entry["message"] and "unformattable" in entry["message"]


def test_the_log_format_is_a_setting_from_its_flag_or_its_variable(monkeypatch, tmp_path):
    assert parse_args(["--model-repository", str(tmp_path)]).log_format == "text"
    monkeypatch.setenv("KILN_LOG_FORMAT", "JSON")
    assert parse_args(["--model-repository", str(tmp_path)]).log_format == "json"
    assert parse_args(["--log-format", "text"]).log_format == "text"  # the flag wins
    with pytest.raises(SystemExit):
        parse_args(["--log-format", "logfmt"])


WIRED = """
import logging, threading, warnings
from serving.__main__ import _start_logging
_start_logging("info", "json")
warnings.warn("a library's warning")
thread = threading.Thread(target=lambda: 1 / 0, name="kiln-batch-resnet18-0")
thread.start()
thread.join()
logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/x", "1.1", 200)
raise RuntimeError("the gateway crashed")
"""


def test_python_warnings_a_dying_thread_and_a_crash_of_the_main_thread_are_json_lines_too():
    done = subprocess.run([sys.executable, "-c", WIRED], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    errors = [json.loads(line) for line in done.stderr.splitlines()]
    assert [e["logger"] for e in errors] == ["py.warnings", "serving", "serving"], done.stderr
    assert "UserWarning: a library's warning" in errors[0]["message"]
    assert errors[1]["exception"].endswith("ZeroDivisionError: division by zero")
    assert errors[2]["severity"] == "CRITICAL"
    assert errors[2]["exception"].endswith("RuntimeError: the gateway crashed")
    (access,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert (access["path"], access["status"]) == ("/x", 200)


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return build_classifier_repository(tmp_path_factory.mktemp("jsonlog") / "repo")


def _entries(path: Path) -> list[dict]:
    """The JSON objects of a log file; a line that is not one fails the test, naming it."""
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line in {path.name}: {line!r}")
    return entries


def test_the_gateway_started_with_log_format_json_writes_only_json_lines_on_stderr_and_stdout(
    repository, tmp_path
):
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    cmd = [sys.executable, "-m", "serving", "--model-repository", str(repository), "--host", "127.0.0.1"]
    cmd += ["--http-port", "0", "--grpc-port", "0", "--log-format", "json"]
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, start_new_session=True)
    try:
        running = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
        assert eventually(lambda: proc.poll() is not None or running.search(err.read_text()), 60)
        assert proc.poll() is None, err.read_text()
        port = int(running.search(err.read_text())[1])
        assert httpx.get(f"http://127.0.0.1:{port}/v2/models/lenet/ready", timeout=10).status_code == 200
        assert eventually(lambda: "/v2/models/lenet/ready" in out.read_text())
    finally:
        stop_gateway(proc)
    assert proc.returncode == -signal.SIGTERM, err.read_text()  # drained, then ended as signalled
    logged = _entries(err)
    assert all(set(e) >= FIELDS and e["pid"] == proc.pid for e in logged), logged
    assert any(e["logger"] == "uvicorn.error" and "Finished server process" in e["message"] for e in logged)
    (access,) = _entries(out)
    assert set(access) >= FIELDS and access["client"].startswith("127.0.0.1:"), access
    assert (access["method"], access["path"], access["status"]) == ("GET", "/v2/models/lenet/ready", 200)
