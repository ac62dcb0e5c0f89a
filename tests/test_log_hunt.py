"""What an operator reads in the gateway's log: one printable line a record whatever a client sends, a
server error's traceback once, a dying thread's exception in the log's format, and every line of
``python -m serving --workers 2`` (uvicorn's included) with its time, level and process."""

from __future__ import annotations

import io
import logging
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from serving.__main__ import LOG_FORMAT, LogLine, _log_thread_death
from serving.app import create_app
from serving.settings import Settings
from tests.repo_fixtures import LiveServer, build_classifier_repository
from tests.test_gateway_lifecycle import _children, _gateway
from tests.test_grpc import FakeBackend
from tests.waiting import eventually

# 2026-12-06 03:14:12,067 INFO [14454] uvicorn.error: ...
LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (TRACE|DEBUG|INFO|WARNING|ERROR|CRITICAL) \[(\d+)\] [\w.]+: "
)
FORGED = "6.6.6.6\x9b31mFAKE\x85ERROR forged"  # a C1 CSI and NEL, latin-1 bytes (llhttp refuses C0 ones)


@contextmanager
def _formatted(*loggers: str) -> Iterator[io.StringIO]:
    """What the gateway's formatter writes of the records of ``loggers`` while the block runs."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(LogLine(LOG_FORMAT))
    for name in loggers:
        logging.getLogger(name).addHandler(handler)
    try:
        yield out
    finally:
        for name in loggers:
            logging.getLogger(name).removeHandler(handler)


def _head(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(raw)
        return conn.recv(64)


class _Broken(FakeBackend):
    """A backend whose metadata has a bug: every metadata request is a 500."""

    def metadata(self, name: str, version: str = ""):  # noqa: ANN201 - FakeBackend's
        raise RuntimeError("metadata bug")


@pytest.fixture(scope="module")
def fake_app(tmp_path_factory):
    repository = tmp_path_factory.mktemp("log-hunt")
    return create_app(Settings(model_repository=repository, grpc_port=0), backend=_Broken())


def test_a_forwarded_for_header_cannot_forge_a_line_or_a_terminal_escape_in_the_access_log(fake_app):
    """uvicorn takes the client's address from ``X-Forwarded-For`` (a proxy on 127.0.0.1 is trusted by
    default) and wrote it raw into the access line: C1 controls (CSI, NEL) and all."""
    raw = b"GET /v2/health/live HTTP/1.1\r\nHost: k\r\nX-Forwarded-For: " + FORGED.encode("latin-1")
    with LiveServer(fake_app, log_level="info") as live, _formatted("uvicorn.access") as out:
        assert _head(live.port, raw + b"\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200")
        assert eventually(lambda: "/v2/health/live" in out.getvalue())
    (line,) = out.getvalue().splitlines()
    assert LINE.match(line), line
    assert not re.search("[\x00-\x1f\x7f-\x9f]", line), repr(line)
    assert "6.6.6.6\\x9b31mFAKE\\x85ERROR forged" in line


def test_an_ipv6_client_is_written_in_brackets_in_the_access_line(fake_app):
    """uvicorn's ``get_client_addr`` wrote ``2001:db8::7:0``: which part is the port?"""
    raw = b"GET /v2/health/live HTTP/1.1\r\nHost: k\r\nX-Forwarded-For: 2001:db8::7\r\nConnection: close\r\n\r\n"
    with LiveServer(fake_app, log_level="info") as live, _formatted("uvicorn.access") as out:
        assert _head(live.port, raw).startswith(b"HTTP/1.1 200")
        assert eventually(lambda: "/v2/health/live" in out.getvalue())
    assert re.search(
        r"uvicorn\.access: \[2001:db8::7\]:\d+ - \"GET /v2/health/live HTTP/1.1\" 200$",
        out.getvalue().strip(),
    )


def test_a_message_with_client_text_stays_one_printable_line_and_a_traceback_keeps_its_lines():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(LogLine(LOG_FORMAT))
    record = logging.LogRecord("serving.app", logging.INFO, __file__, 1, "refused %r: %s", None, None)
    record.args = ("a\nb", "c\r\n2026-01-01 00:00:00,000 ERROR [1] serving: forged\x1b[2J\u2028")
    handler.emit(record)
    try:
        raise ValueError("bad \x1b[31mred")
    except ValueError as exc:
        handler.emit(
            logging.LogRecord(
                "serving", logging.ERROR, __file__, 1, "failed", None, (ValueError, exc, exc.__traceback__)
            )
        )
    first, rest = out.getvalue().split("\n", 1)
    assert first.endswith(
        "serving.app: refused 'a\\nb': c\\r\\n2026-01-01 00:00:00,000 ERROR [1] serving: forged\\x1b[2J\\u2028"
    ), first
    assert rest.startswith("20") and "\nTraceback (most recent call last):\n" in rest
    assert "ValueError: bad \\x1b[31mred" in rest and "\x1b" not in rest


def test_a_server_error_on_a_route_logs_its_traceback_once(fake_app):
    """A 500 of a route FastAPI answers: the gateway's handler logged the traceback, then Starlette raised
    the exception again and uvicorn logged it a second time ("Exception in ASGI application")."""
    with LiveServer(fake_app, log_level="info") as live, _formatted("", "uvicorn") as out:
        for _ in range(2):
            answer = httpx.get(f"http://{live.url}/v2/models/double", timeout=10)
            assert answer.status_code == 500 and answer.json() == {"error": "internal error: RuntimeError"}
        assert eventually(lambda: out.getvalue().count("Exception in ASGI application") == 2)
    text = out.getvalue()
    assert text.count("Traceback (most recent call last)") == 2, text  # one a request
    assert text.count("RuntimeError: metadata bug: its traceback is above") == 2, text


def test_a_thread_that_dies_of_an_exception_is_logged_as_an_error_naming_the_thread(monkeypatch, caplog):
    """A batch or decode thread (named after its model) killed by an exception outside its guarded
    loop printed its traceback raw on stderr, without time, level or process."""
    monkeypatch.setattr(threading, "excepthook", _log_thread_death)

    def crash() -> None:
        raise RuntimeError("decode state broken")

    with caplog.at_level(logging.ERROR, logger="serving"):
        thread = threading.Thread(target=crash, name="kiln-decode-transformer")
        thread.start()
        thread.join()
    (record,) = [r for r in caplog.records if r.name == "serving"]
    assert record.levelno == logging.ERROR and "kiln-decode-transformer" in record.getMessage()
    assert record.exc_info is not None and str(record.exc_info[1]) == "decode state broken"


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return build_classifier_repository(tmp_path_factory.mktemp("log-hunt-repo") / "repo")


def test_every_line_of_two_workers_says_when_at_what_level_and_which_process_wrote_it(repository, tmp_path):
    """uvicorn's lines had no time and a format of their own ("INFO:     Started server process"),
    and no line of a worker said which worker wrote it."""
    log = tmp_path / "gateway.log"
    with _gateway(repository, "--workers", "2", log=log) as (proc, port):
        workers = _children(proc.pid)
        assert eventually(lambda: log.read_text().count("Uvicorn running on") == 2), log.read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/v2/models/no%0Asuch/ready", timeout=10).status_code == 404
        assert eventually(lambda: "/v2/models/no%0Asuch/ready" in log.read_text())
    lines = log.read_text().splitlines()
    assert all(LINE.match(line) for line in lines), "\n".join(lines)
    running = {int(LINE.match(line)[2]) for line in lines if "Uvicorn running on" in line}
    assert running == set(workers), (workers, lines)
    assert any(f"[{proc.pid}] serving.workers: started 2 gateway workers" in line for line in lines), lines


WIRED = """
import logging, threading, warnings
from serving.__main__ import _start_logging
_start_logging("info")
warnings.warn("a library's warning")
thread = threading.Thread(target=lambda: 1 / 0, name="kiln-batch-resnet18-0")
thread.start()
thread.join()
logging.getLogger("uvicorn.error").info("Started server process [1]")
logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/x", "1.1", 200)
logging.getLogger("serving").debug("not at info")
"""


def test_the_gateway_s_logging_writes_warnings_dying_threads_and_uvicorn_s_lines_in_its_format():
    """A Python warning and a thread's uncaught exception were printed raw on stderr (no time, level or
    process); uvicorn's lines had a format of their own; access lines stay on stdout."""
    done = subprocess.run([sys.executable, "-c", WIRED], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert LINE.match(done.stdout) and done.stdout.rstrip().endswith(
        'uvicorn.access: 127.0.0.1:1 - "GET /x HTTP/1.1" 200'
    )
    lines = done.stderr.splitlines()
    starts = [line for line in lines if LINE.match(line)]
    assert [line.split(": ", 1)[0].split()[-1] for line in starts] == [
        "py.warnings",
        "serving",
        "uvicorn.error",
    ], lines
    assert (
        "UserWarning: a library's warning" in starts[0] and "thread kiln-batch-resnet18-0 died" in starts[1]
    )
    assert lines[-2] == "ZeroDivisionError: division by zero"  # its traceback, under its line
    assert "not at info" not in done.stderr


class _Pool:
    """A translator pool whose start serves two translators (and one that failed, logged by the pool)."""

    def __init__(self) -> None:
        self.translators: dict[str, object] = {}
        self.failed = {"broken": "ValueError: no tokenizer"}

    async def start(self, runner_for: object) -> None:
        self.translators = {
            "transformer": SimpleNamespace(schedulers=[object(), object()]),
            "gru_attention": SimpleNamespace(schedulers=[object()]),
        }


class _Translating(FakeBackend):
    def runner(self, name: str) -> None: ...


def test_the_start_up_log_names_the_translators_the_gateway_serves(caplog):
    """The backend's line lists the encoder and decoder entries (``transformer_encoder``, ...): no line
    said the gateway served ``transformer``, the model a translate request names."""
    import asyncio

    from serving.gateway import Gateway

    gateway = Gateway(_Translating(), None)
    gateway.translators = _Pool()
    with caplog.at_level(logging.INFO, logger="serving.gateway"):
        asyncio.run(gateway.start())
    assert [r.getMessage() for r in caplog.records if r.name == "serving.gateway"] == [
        "translators serving gru_attention (1 decode worker), transformer (2 decode workers)"
    ]
