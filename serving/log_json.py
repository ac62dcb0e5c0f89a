"""``--log-format json``: each log record as one JSON object on one line, for collectors (Loki, ELK,
Cloud Logging) that read a container's stdout and stderr a line an entry."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

# Cloud Logging's LogSeverity names (its agents read ``severity``): uvicorn's TRACE is below DEBUG
SEVERITY = {5: "DEBUG", 10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}
# uvicorn's access record arguments (``'%s - "%s %s HTTP/%s" %d'``), as fields of their own
ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


class JsonLine(logging.Formatter):
    """One record as one line of JSON: ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``severity``
    (Cloud Logging's), ``logger``, ``message``, ``pid`` (which worker of ``--workers``) and, where there
    is one, ``exception`` (its traceback, once: :class:`serving.__main__.LogLine`'s rule) and ``stack``;
    an access record's arguments also as ``client``, ``method``, ``path``, ``http_version``, ``status``.
    ASCII only (``ensure_ascii``, DEL escaped too): a locale's encoding cannot refuse a line, and a
    client's control characters, C1 ones and line separators cannot end a line or reach a terminal."""

    def __init__(self, traceback: logging.Formatter) -> None:
        super().__init__()
        self._traceback = traceback  # the text format's: writes an exception's traceback once

    def format(self, record: logging.LogRecord) -> str:
        access = _access_fields(record) if record.name == "uvicorn.access" else None
        entry = {
            "time": _rfc3339(record),
            "level": record.levelname,
            "severity": SEVERITY.get(record.levelno) or _severity(record.levelno),
            "logger": record.name,
            "message": _message(record, access),
            "pid": record.process,
        }
        if access:
            entry.update(access)
        if record.exc_info and record.exc_info[0] is not None:  # exc_info=True outside an except: none
            entry["exception"] = self._traceback.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = record.stack_info
        line = json.dumps(entry, default=str)
        return line.replace("\x7f", "\\u007f") if "\x7f" in line else line


def _rfc3339(record: logging.LogRecord) -> str:
    """``2026-12-07T06:40:00.123Z``: the record's time in UTC, to the millisecond."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _severity(levelno: int) -> str:
    """A level of no standard name as the nearest standard severity below it (DEFAULT below DEBUG)."""
    below = [level for level in SEVERITY if level <= levelno]
    return SEVERITY[max(below)] if below else "DEFAULT"


def _message(record: logging.LogRecord, access: dict[str, Any] | None) -> str:
    """The record's message as the text format writes it: an access line's IPv6 client in brackets
    (``[::1]:59496``), no newline at its end."""
    try:
        if access:
            return str(record.msg) % tuple(access.values())
        return record.getMessage().rstrip("\n")
    except Exception as error:  # noqa: BLE001 - any record is still written as one line of JSON
        # arguments that do not fit (a %(key)s missing from a dict: KeyError) or whose str() fails:
        # logging's own report of a formatter's error was a raw traceback, a line a frame
        return f"{_shown(record.msg, str)} {_shown(record.args, repr)} (unformattable: {_shown(error, repr)})"


def _shown(value: object, show: Callable[[object], str]) -> str:
    """``show(value)``, or the type's name and id where that raises: a message of its own never fails."""
    try:
        return show(value)
    except Exception:  # noqa: BLE001 - an object's __str__ or __repr__ may raise anything
        return object.__repr__(value)


def _access_fields(record: logging.LogRecord) -> dict[str, Any] | None:
    """uvicorn's five access arguments by name, an IPv6 client in brackets as the text format writes it;
    None where the record has other arguments."""
    args = record.args
    if not isinstance(args, tuple) or len(args) != len(ACCESS_FIELDS):
        return None
    fields = dict(zip(ACCESS_FIELDS, args, strict=True))
    client = fields["client"]
    if isinstance(client, str) and client.count(":") >= 2 and not client.startswith("["):
        host, _, port = client.rpartition(":")
        fields["client"] = f"[{host}]:{port}"
    return fields


def log_uncaught(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    """``sys.excepthook`` under ``--log-format json``: an exception that ends the main thread as a
    critical record (its traceback in ``exception``), where Python printed it raw, a line each frame;
    a Ctrl-C as Python prints it."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, tb)
        return
    logging.getLogger("serving").critical("the gateway died of an exception", exc_info=(kind, error, tb))
