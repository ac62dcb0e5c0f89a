"""``python -m serving``: run the gateway (HTTP + gRPC) on a model repository."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import re
import shlex
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError

from serving.settings import Settings, is_dual_stack, join_host_port
from serving.threads import set_cpu_policy

# Set by serving.workers on each worker's command line, not by users.
INTERNAL = frozenset({"reuse_port", "worker_board", "worker_index", "weights_dir", "connection_board"})


def build_parser() -> argparse.ArgumentParser:
    """One flag per :class:`~serving.settings.Settings` field (``max_queue_size`` -> ``--max-queue-size``),
    typed and described by the field, so every setting is a flag and the help matches the code."""
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description=__doc__,
        epilog="Every flag is also an environment variable, KILN_<FLAG> (KILN_MAX_QUEUE_SIZE=256); "
        "flags win.",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if name in INTERNAL:
            help_text = argparse.SUPPRESS
        else:
            default = field.default.as_posix() if isinstance(field.default, Path) else field.default
            shown = "" if default is None else f" (default: {default})"
            help_text = f"{field.description or name.replace('_', ' ')}{shown}"
        kind = _base_type(field.annotation)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif get_origin(kind) is Literal:
            parser.add_argument(flag, choices=get_args(kind), type=str.lower, help=help_text)
        else:  # a path stays text, which Settings reads: Path("") would already be "."
            kind = str if kind is Path else kind
            parser.add_argument(flag, type=kind, metavar=name.upper(), help=help_text)
    return parser


def _base_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``; anything else as it is."""
    if get_origin(annotation) in (Union, UnionType):
        kinds = [a for a in get_args(annotation) if a is not type(None)]
        if len(kinds) == 1:
            return kinds[0]
    return annotation


def parse_args(argv: list[str] | None = None) -> Settings:
    """Flags override ``KILN_*`` environment variables, which override the defaults; a value out of
    range (from either) is a usage error naming the flag, not a traceback."""
    parser = build_parser()
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    problem = switch_problem(os.environ)
    if problem:
        parser.error(problem)
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(_problem(error) for error in exc.errors())
        parser.error(problems)


# The switches the decoding code reads where it runs (README, "Other variables"), each with the values
# it tells apart: KILN_NATIVE=false (or off, no) kept the compiled step, read as "not 0", and
# KILN_RESIDENT_DECODER=true left the resident decoder off, read as "not 1, on or force", silently.
SWITCHES = {
    "KILN_NATIVE": ("0", "1"),
    "KILN_NATIVE_DECODER": ("0", "1"),
    "KILN_FUSED_ATTENTION": ("0", "1"),
    "KILN_RESIDENT_DECODER": ("0", "1", "on", "force"),
}


def switch_problem(environ: Any) -> str | None:
    """Why a switch variable in ``environ`` holds a value its reader does not tell apart (one line
    naming it and what it takes), refused before anything loads; None when every one set is known.
    An empty one is unset, as its reader takes it."""
    for name, accepted in SWITCHES.items():
        value = environ.get(name)
        if not value:
            continue
        known = value.strip().lower() if name == "KILN_RESIDENT_DECODER" else value
        if known not in accepted:
            return f"{name}={value!r}: takes {', '.join(accepted[:-1])} or {accepted[-1]}"
    return None


def _problem(error: Any) -> str:
    """One pydantic error as the flag and variable it came from and what is wrong."""
    message = str(error["msg"]).removeprefix("Value error, ")  # a validator's own words, as written
    if not error["loc"]:
        return message
    name = str(error["loc"][0])
    return f"--{name.replace('_', '-')} (or KILN_{name.upper()}): {message}"


def claim_ports(settings: Settings, *, hold: bool) -> list[socket.socket]:
    """Stop with a message naming the flag when the HTTP or gRPC port is taken, or naming ``--host`` when
    it cannot be bound (ports 0 included); the sockets to keep while the gateway serves: the ports'
    guards, and with ``hold`` the ports themselves for this gateway's workers
    (:func:`serving.workers.claim_port`). Nothing is checked under ``--reuse-port``: whoever passes it
    holds the ports and means them to be shared."""
    from serving.workers import claim_port

    if settings.reuse_port:
        return []
    held = []
    for name in ("http_port", "grpc_port"):
        port = getattr(settings, name)
        if not port:
            continue
        try:
            held += claim_port(settings.host, port, hold=hold)
        except OSError as exc:
            if _host_at_fault(exc):
                raise SystemExit(_host_problem(settings.host, exc)) from None
            raise SystemExit(
                f"--{name.replace('_', '-')} (or KILN_{name.upper()}) {port}: "
                f"{join_host_port(settings.host, port)} is in use or cannot be bound "
                f"({exc.strerror or exc}): stop what listens there or choose another port"
            ) from None
    if not settings.http_port and not settings.grpc_port:
        _check_host(settings.host)
    return held


def _check_host(host: str) -> None:
    """Stop with a message naming ``--host`` when it does not resolve or is no address of this machine:
    with both ports 0 no port check tried it, and uvicorn would say so only once every model loaded."""
    from serving.workers import claim_port

    try:
        claim_port(host, 0, hold=False)
    except OSError as exc:
        raise SystemExit(_host_problem(host, exc)) from None


def _host_at_fault(exc: OSError) -> bool:
    """Whether a bind failed for its address, whatever the port: a name that does not resolve, or an
    address that is not this machine's (or, IPv6, that needs an interface or maps an IPv4 one)."""
    return isinstance(exc, socket.gaierror) or exc.errno in (
        errno.EADDRNOTAVAIL,
        errno.EINVAL,
        errno.EAFNOSUPPORT,
    )


def _host_problem(host: str, exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"--host (or KILN_HOST) {host}: {exc.strerror or exc}"
    return f"--host (or KILN_HOST) {host}: cannot be bound ({exc.strerror or exc})"


def _check_entries(repository: Path) -> None:
    """A repository without one model entry would start a gateway that answers every request 404:
    a directory of checkpoints (the usual slip: ``--model-repository checkpoints``) stops here with the
    command that exports it; an empty one is served, with a warning saying what it lacks."""
    if any((d / "config.pbtxt").is_file() for d in repository.iterdir() if not d.name.startswith(".")):
        return
    checkpoints = sorted(p.name for p in repository.glob("*.pt"))
    if checkpoints:
        raise SystemExit(
            f"model repository {repository} holds checkpoints ({', '.join(checkpoints[:3])}"
            f"{', ...' if len(checkpoints) > 3 else ''}), not exported model entries: export them with "
            f"`python -m export {shlex.quote(str(repository))} --repository model_repository` (or `make export`) and serve "
            "that repository"
        )
    logging.getLogger("serving").warning(
        "model repository %s holds no model entry (<model>/config.pbtxt): the gateway serves nothing; "
        "run `make export` (python -m export CHECKPOINTS --repository %s) to write some",
        repository,
        shlex.quote(str(repository)),
    )


LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
# C0 and C1 controls, DEL and the Unicode line separators: what could end a log line early or reach
# the operator's terminal as an escape sequence, escaped as Python writes them in a repr
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_TRACEBACK_CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # its lines kept
_LOGGED = "_kiln_traceback_logged"  # set on an exception once its traceback is written


def _escaped(text: str, controls: re.Pattern[str] = _CONTROLS) -> str:
    """``text`` with each control character as its escape (``\\n``, ``\\x1b``)."""
    if controls.search(text) is None:
        return text
    return controls.sub(lambda match: repr(match.group())[1:-1], text)


class LogLine(logging.Formatter):
    """One record, one line of printable text, whoever wrote it: text a client sent (a model name in a
    URL, an ``X-Forwarded-For`` in uvicorn's access line, an exception's message) could forge log lines
    with a newline or drive the operator's terminal with escape sequences. An exception's traceback
    keeps its lines but is written once: an exception logged again (uvicorn's "Exception in ASGI
    application" after the gateway's own line for the same 500, a decode thread's after its encoder's)
    is named in one line."""

    def format(self, record: logging.LogRecord) -> str:
        cached, record.exc_text = record.exc_text, None  # another handler's traceback text: written here
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = _escaped(_bracketed_client(record) or record.message.rstrip("\n"))
        if message is record.message:  # the usual line: nothing to escape, nothing copied
            return super().formatMessage(record)
        shown = logging.makeLogRecord(record.__dict__)
        shown.message = message
        return super().formatMessage(shown)

    def formatException(self, ei: Any) -> str:
        error = ei[1]
        if getattr(error, _LOGGED, False):
            return _escaped(f"({type(error).__name__}: {_error_text(error)}: its traceback is above)")
        with contextlib.suppress(AttributeError, TypeError):  # an exception that takes no attribute
            setattr(error, _LOGGED, True)
        return _escaped(super().formatException(ei), _TRACEBACK_CONTROLS)


def _error_text(error: BaseException) -> str:
    """``str(error)``, or what a traceback says where that raises: an exception's ``__str__`` that
    fails made the record logged again a "--- Logging error ---" of dozens of raw lines, not one."""
    try:
        return str(error)
    except Exception:  # noqa: BLE001 - an exception's __str__ may raise anything
        return "<exception str() failed>"


def _bracketed_client(record: logging.LogRecord) -> str | None:
    """An access line whose client is an IPv6 address, with the address in brackets (``[::1]:59496``):
    uvicorn writes ``host:port`` as it is, and ``2001:db8::7:0`` does not say which part is the port.
    None for any other record."""
    if record.name != "uvicorn.access" or not isinstance(record.args, tuple) or not record.args:
        return None
    client = record.args[0]
    if not isinstance(client, str) or client.count(":") < 2 or client.startswith("["):
        return None
    host, _, port = client.rpartition(":")
    return str(record.msg) % (f"[{host}]:{port}", *record.args[1:])


def _start_logging(level: str, log_format: str = "text") -> None:
    """The gateway process's logging at ``level``: its own lines and uvicorn's (log_config=None in
    :func:`_uvicorn_config`: uvicorn's went out in a format of its own, without a time) in
    :data:`LOG_FORMAT` (``log_format`` json: one JSON object a line, :mod:`serving.log_json`), whose
    process id tells the workers of ``--workers`` apart; the access lines on stdout as uvicorn writes
    them, the rest on stderr; Python warnings, a thread that dies of an exception (a batch or decode
    thread, named after its model) and an exception Python ignores (a finalizer's, "Exception ignored
    in"), logged as any record is (each was printed raw on stderr). Nothing
    changes where the root logger has handlers already."""
    from uvicorn.config import LOG_LEVELS

    logging.addLevelName(LOG_LEVELS["trace"], "TRACE")  # uvicorn's level below DEBUG, named as it names it
    if logging.getLogger().handlers:  # logging set up by whoever runs main() (pytest, an embedding program)
        return
    formatter: logging.Formatter = LogLine(LOG_FORMAT)
    if log_format == "json":
        from serving.log_json import JsonLine, log_uncaught

        formatter = JsonLine(traceback=formatter)
        sys.excepthook = log_uncaught  # a crash's traceback one JSON line too, not dozens of raw ones
    errors = logging.StreamHandler(sys.stderr)
    errors.setFormatter(formatter)
    logging.basicConfig(level=LOG_LEVELS[level], handlers=[errors])
    access = logging.StreamHandler(sys.stdout)
    access.setFormatter(formatter)
    access_log = logging.getLogger("uvicorn.access")
    access_log.handlers, access_log.propagate = [access], False
    logging.captureWarnings(True)  # a library's warning (numpy's, ONNX Runtime's) as a line of the log
    threading.excepthook = _log_thread_death
    sys.unraisablehook = _log_unraisable


def _onnxruntime_log_level(settings: Settings) -> None:
    """ONNX Runtime's own logger at ``--log-level`` (``ORT_LOG_SEVERITY``), before the embedded backend
    opens a session: its lines are its own, on stderr, and were written at its default whatever the
    level. Nothing for the triton backend, which opens no ONNX Runtime session in this process."""
    if settings.backend != "onnxruntime":
        return
    import onnxruntime

    from serving.execution.ort_options import ORT_LOG_SEVERITY

    onnxruntime.set_default_logger_severity(ORT_LOG_SEVERITY[settings.log_level])


def _log_thread_death(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook``: a thread's uncaught exception as an error record, not printed raw."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "a thread"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    logging.getLogger("serving").error("thread %s died of an exception", name, exc_info=exc_info)


def _log_unraisable(unraisable: Any) -> None:
    """``sys.unraisablehook``: an exception Python cannot raise (a ``__del__``'s, a finalizer's, a
    coroutine's closed by the garbage collector) as an error record, where Python printed "Exception
    ignored in" and its traceback raw, a line each frame (none of them JSON under ``--log-format json``)."""
    found = unraisable.object
    try:
        shown = "" if found is None else f": {found!r}"
    except Exception:  # noqa: BLE001 - an object's __repr__ may raise anything
        shown = f": {object.__repr__(found)}"
    error, kind = unraisable.exc_value, unraisable.exc_type
    exc_info = (kind, error, unraisable.exc_traceback) if error is not None else None
    named = f" ({kind.__name__})" if error is None and kind is not None else ""
    said = unraisable.err_msg or "Exception ignored in"
    logging.getLogger("serving").error("%s%s%s", said, shown, named, exc_info=exc_info)


def _uvicorn_config(settings: Settings) -> Any:
    """uvicorn's configuration of the gateway's app and HTTP server from the gateway's ``settings``."""
    import uvicorn

    from serving.app import create_app
    from serving.protocol.http1 import http_protocol

    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's lines in the gateway's format (_start_logging), not its own
        # Access lines are INFO: above that level they are never printed, so do not build them at all.
        access_log=settings.log_level.lower() in {"trace", "debug", "info"},
        # uvicorn takes the seconds as they are (asyncio.timeout); ``int(grace) or None`` made any grace
        # under a second no limit at all
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
        timeout_keep_alive=settings.keep_alive_s,
        # one write a response, bounded request heads and reads (serving/protocol/http1.py)
        http=http_protocol(settings.read_timeout_s, settings.max_header_bytes, settings.send_timeout_s),
    )


def main(argv: list[str] | None = None) -> None:
    from serving.protocol import grpc_io

    settings = parse_args(argv)
    # before anything imports grpc: its core reads GRPC_EXPERIMENTS once, when it starts
    grpc_io.choose(settings.grpc_io)  # the gRPC server's start-up line shows what grpc read
    _start_logging(settings.log_level, settings.log_format)
    if not settings.reuse_port:  # the parent raises it, and says so, for its workers too
        from serving.open_files import check_open_file_limit

        check_open_file_limit()
    if not settings.model_repository.is_dir():
        raise SystemExit(
            f"model repository {settings.model_repository} is not a directory: run `make export` "
            f"(python -m export CHECKPOINTS --repository {shlex.quote(str(settings.model_repository))}) to "
            "write one, or pass --model-repository"
        )
    if not settings.reuse_port:  # the parent says it once, not each of its workers
        _check_entries(settings.model_repository)
    _check_temporary_directory()
    _check_metrics_directory()
    if settings.workers > 1:  # with a fixed --http-port (Settings); --grpc-port 0 is no gRPC server
        from serving.workers import run_workers

        with holding(claim_ports(settings, hold=True)):  # until the workers are gone
            raise SystemExit(run_workers(sys.argv[1:] if argv is None else argv, settings.workers))
    # a busy port fails now, before the app's imports (seconds on a busy machine) and the models' load;
    # the guards keep other Kiln gateways off while this gateway serves
    with holding(claim_ports(settings, hold=False)):
        serve(settings)


@contextlib.contextmanager
def holding(sockets: list[socket.socket]) -> Iterator[None]:
    """Keep ``sockets`` (port guards, held ports) open for the block and close them when it ends, however
    it ends: left to the interpreter's exit, each printed a ResourceWarning under ``python -X dev``."""
    with contextlib.ExitStack() as stack:
        for sock in sockets:
            stack.enter_context(sock)
        yield


def serve(settings: Settings) -> None:
    """Run one gateway process (uvicorn and the gRPC server) until it is stopped."""
    server_class = _server_class()  # imports the app, and with it grpc: after grpc_io.choose
    _onnxruntime_log_level(settings)
    if not settings.reuse_port:  # a gateway of one process: what killed ones left (its workers': theirs)
        from serving.workers import sweep_stale

        sweep_stale()
    # before the gateway starts a thread (they inherit it); each worker process sets its own. auto:
    # SCHED_OTHER here, the event loop under SCHED_BATCH only while a decode thread is busy
    fixed = "normal" if settings.cpu_policy == "auto" else settings.cpu_policy
    if set_cpu_policy(fixed) is None:
        logging.getLogger("serving").warning(
            "cpu policy %s is not available here: the gateway's threads keep the system's",
            settings.cpu_policy,
        )
    config = _uvicorn_config(settings)
    try:
        sockets = _http_sockets(settings)
    except OSError as exc:  # taken since claim_ports looked (uvicorn's own bind says so in one line too)
        where = join_host_port(settings.host, settings.http_port)
        raise SystemExit(
            f"--http-port (or KILN_HTTP_PORT): {where} cannot be bound ({exc.strerror or exc})"
        ) from None
    # uvicorn raises the SIGINT it caught again once drained: the stop was asked for, not a failure;
    # and the SIGTERM, which ends the process once its exit handlers have run (end_by_sigterm)
    from serving.app import end_by_sigterm

    signal.signal(signal.SIGTERM, end_by_sigterm)
    server = server_class(config)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            server.run(sockets=sockets)
        except SystemExit:
            if server.stopped_loading_by is None:
                raise
            server.exit_as_signalled()  # a stop asked while the models loaded: not a failed start
    if server.exit_status:  # the stop cut work in flight (README, "Serving")
        raise SystemExit(server.exit_status)


def _http_sockets(settings: Settings) -> list[socket.socket] | None:
    """The HTTP server's sockets where uvicorn must not bind them itself: a worker's, shared with the
    others (SO_REUSEPORT), and ``--host ::``'s, which takes IPv4 clients too (uvicorn binds it IPv6 only);
    None: uvicorn binds ``--host`` as it does."""
    from serving.workers import reuse_port_sockets, server_sockets

    if settings.reuse_port:
        return reuse_port_sockets(settings.host, settings.http_port)
    if is_dual_stack(settings.host):
        return server_sockets(settings.host, settings.http_port, reuse_port=False)
    return None


def _server_class() -> type:
    """:class:`~serving.app.GatewayServer` that says where HTTP listens when it is handed its sockets:
    uvicorn writes its "Uvicorn running on" line only for those it binds, so a worker of ``--workers``
    (and ``--host ::``) said nowhere where HTTP was served."""
    from serving.app import GatewayServer

    class Server(GatewayServer):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if sockets is not None and self.started:
                self._log_started_message(sockets)

    return Server


def _check_temporary_directory() -> None:
    """Stop in one line where no temporary directory can be written (a read-only root filesystem
    without a volume on /tmp): the gateway keeps its shared weights, its compiled beam step and its
    JSON helper's socket there, and the sweep of killed gateways' leftovers died in a traceback."""
    import tempfile

    try:
        tempfile.gettempdir()
    except FileNotFoundError as exc:
        raise SystemExit(
            f"no writable temporary directory ({exc}): mount a writable volume on /tmp (a Kubernetes "
            "emptyDir, as deploy/base/gateway/deployment.yaml does) or set TMPDIR to a writable directory"
        ) from None


def _check_metrics_directory() -> None:
    """Stop in one line where ``PROMETHEUS_MULTIPROC_DIR`` is set to no directory this process may
    write: prometheus_client opens its files there as the app is made, and a missing one (a typo, a
    volume not mounted) ended in a FileNotFoundError traceback, in each worker of ``--workers``."""
    from serving.metrics import MULTIPROCESS_ENV

    given = os.environ.get(MULTIPROCESS_ENV)
    if not given:
        return
    if not os.path.isdir(given):
        problem = "is not a directory" if os.path.exists(given) else "does not exist"
    elif not os.access(given, os.W_OK | os.X_OK):
        problem = "is not writable"
    else:
        return
    raise SystemExit(
        f"{MULTIPROCESS_ENV} {given} {problem}: the gateway's processes share their metrics there; "
        "make it a writable directory, or unset it (--workers then makes one of its own)"
    )


def run() -> None:
    """:func:`main` as ``python -m serving`` runs it: a Ctrl-C before the server handles signals (the
    app's imports, a second or more, the port checks) ends it with status 0, as a Ctrl-C while the
    models load does, not in a KeyboardInterrupt traceback (one a worker, with ``--workers``)."""
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit(0) from None


if __name__ == "__main__":
    run()
