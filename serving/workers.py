"""Several gateway processes on the same ports (SO_REUSEPORT), chosen by measurement on a small machine.

One Python process spends its one core on protocol work (gRPC/HTTP parsing, the event loop) while ONNX
Runtime waits; measured with perf_analyzer on 2 cores, two processes with one ONNX Runtime thread each
served 1.6x the requests of one process at concurrency 64 (README, "Front-end workers"). Each worker
is a whole gateway: its own sessions (one model instance) and its own dynamic batcher per model, so a
batch never waits on another process. The kernel spreads connections over the workers, and a worker
that accepts one while another holds fewer hands it on (``serving.handoff``).

``/metrics`` counts every worker whichever one a scrape reaches (their values are shared through
files, ``serving.metrics``). Limit: the HTTP port must be fixed (port 0 would give each worker a different
port); ``--grpc-port 0`` is no gRPC server, in every worker.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client import multiprocess

from serving import process_tree
from serving.execution.occupancy import BOARD_PREFIX, create_board
from serving.execution.shared_weights import PREFIX as WEIGHTS_PREFIX
from serving.execution.shared_weights import create_store_dir
from serving.handoff import BOARD_PREFIX as CONNECTIONS_PREFIX
from serving.handoff import create_board as create_connection_board
from serving.metrics import MULTIPROCESS_ENV, forget_gone_processes
from serving.settings import is_dual_stack

log = logging.getLogger(__name__)


def bind_addresses(host: str, port: int) -> list[tuple[int, Any]]:
    """``(family, address)`` of every address ``host`` names, as asyncio's ``create_server`` binds them
    (``localhost`` is 127.0.0.1 and ::1 on most machines; ``ip6-localhost`` only ::1). Raises
    ``socket.gaierror`` for a name that does not resolve."""
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    return list(dict.fromkeys((family, address) for family, _, _, _, address in infos))


def server_socket(
    family: int, address: Any, *, reuse_port: bool, dual_stack: bool, reuse_addr: bool = True
) -> socket.socket:
    """A TCP socket bound to ``address`` as a server binds it, not listening: an IPv6 one takes IPv6
    only (asyncio's choice, so ``::ffff:127.0.0.1`` fails here as it would there), unless
    ``dual_stack`` (``::``: IPv4 clients too, whatever the system's ``bindv6only``)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if reuse_addr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def server_sockets(host: str, port: int, *, reuse_port: bool, reuse_addr: bool = True) -> list[socket.socket]:
    """One bound socket per address of ``host`` (:func:`bind_addresses`, :func:`server_socket`); a
    failure closes those already bound."""
    options = {"reuse_port": reuse_port, "reuse_addr": reuse_addr, "dual_stack": is_dual_stack(host)}
    bound: list[socket.socket] = []
    addresses = bind_addresses(host, port)
    try:
        for family, address in addresses:
            try:
                bound.append(server_socket(family, address, **options))
            except OSError as exc:  # a name's IPv6 address on a kernel without IPv6: skipped, as asyncio does
                if exc.errno != errno.EAFNOSUPPORT or len(addresses) == 1:
                    raise
        if not bound:
            raise OSError(errno.EAFNOSUPPORT, f"no address of {host} has a family this machine supports")
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return bound


def reuse_port_sockets(host: str, port: int) -> list[socket.socket]:
    """TCP sockets bound to ``port`` on every address of ``host`` that other workers may bind to as
    well, not listening yet: the server listens once its models are loaded (uvicorn's
    ``create_server``). Listening from the start, a worker still loading took the kernel's share of new
    connections into its backlog, where they hung unanswered, a readiness probe's included, for as long
    as the load took (a lone gateway refuses them then, and its worker siblings that are up take them)."""
    sockets = server_sockets(host, port, reuse_port=True)
    for sock in sockets:
        sock.set_inheritable(True)
    return sockets


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """The socket of :func:`reuse_port_sockets` for a ``host`` of one address (an IP address)."""
    first, *others = reuse_port_sockets(host, port)
    for sock in others:
        sock.close()
    return first


def claim_port(host: str, port: int, *, hold: bool) -> list[socket.socket]:
    """Fail (OSError) when anything is bound to ``port`` on an address of ``host``, a gateway's workers
    sharing it with SO_REUSEPORT included, or another Kiln gateway holds it; else its :func:`port_guards`
    for the caller to keep while it serves, and with ``hold`` sockets that keep the port for this gateway
    (SO_REUSEPORT, never listening: its workers bind beside them, nobody else can)."""
    guards = port_guards(host, port)  # first: a gateway holding the port while its workers load is named
    try:
        for sock in server_sockets(host, port, reuse_port=False):  # what a server without SO_REUSEPORT does
            sock.close()
        return guards + (_held_sockets(host, port, guarded=bool(guards)) if hold else [])
    except OSError:
        for guard in guards:
            guard.close()
        raise


def _held_sockets(host: str, port: int, *, guarded: bool) -> list[socket.socket]:
    """The sockets holding ``port``. Without SO_REUSEADDR where that binds: another gateway's check
    (with it) could bind beside a socket not listening, and both would serve the port. A port whose
    connections sit in TIME_WAIT, closed by a server whose sockets took no SO_REUSEPORT (a gateway of
    one process stopped less than a minute ago), binds only with it; nothing listens there (the check
    just bound beside no listener), so it is held with it where :func:`port_guards` keeps other Kiln
    gateways off the port (``make serve WORKERS=2`` right after ``make serve`` was refused "in use")."""
    try:
        return server_sockets(host, port, reuse_port=True, reuse_addr=False)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or not guarded:
            raise
    return server_sockets(host, port, reuse_port=True, reuse_addr=True)


def port_guards(host: str, port: int) -> list[socket.socket]:
    """A socket named for ``port`` in Linux's abstract Unix namespace, which a second Kiln gateway on the
    same port cannot bind (OSError EADDRINUSE naming it): the namespace is the network namespace's, as
    the port is, and a name goes with the process that bound it, killed or not. Named by the port alone,
    whatever the address (``127.0.0.1``, ``0.0.0.0`` and ``::`` overlap: a gateway on one could share
    the port of another, held with SO_REUSEADDR, on the other), so one Kiln gateway serves a port on a
    machine. None for port 0, and none off Linux (the port is then held without SO_REUSEADDR only)."""
    if not port or not sys.platform.startswith("linux"):
        return []
    guard = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        guard.bind(f"\0kiln-gateway-port {port}")
    except OSError as exc:
        guard.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        raise OSError(errno.EADDRINUSE, f"another Kiln gateway holds port {port}") from None
    return [guard]


def worker_argv(
    argv: list[str],
    board: Path | None = None,
    index: int = 0,
    weights: Path | None = None,
    connections: Path | None = None,
) -> list[str]:
    """The command of one worker: the same flags, one worker, sharing its ports (and the occupancy
    ``board``, where this worker is ``index``, the directory of optimized models, ``weights``, and the
    board of the workers' open ``connections``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        kept.append(arg)
    shared = ["--worker-board", str(board), "--worker-index", str(index)] if board is not None else []
    shared += ["--weights-dir", str(weights)] if weights is not None else []
    shared += ["--connection-board", str(connections)] if connections is not None else []
    return [sys.executable, "-m", "serving", *kept, "--workers", "1", "--reuse-port", *shared]


def run_workers(argv: list[str], workers: int) -> int:
    """Start ``workers`` gateway processes and wait; SIGTERM/SIGINT stop them all; one dying stops all;
    the parent dying (even by SIGKILL) stops them too.

    The workers share an occupancy board (``serving.execution.occupancy``) and a directory for their
    metrics (``serving.metrics``: a scrape reaching any of them counts them all); a
    ``PROMETHEUS_MULTIPROC_DIR`` already set is used as it is (and left in place, less the live gauges
    of processes gone: :func:`serving.metrics.forget_gone_processes`); and a directory
    of optimized models, whose weights their sessions all map (``serving.execution.shared_weights``);
    and a board of their open connections, by which they hand new ones to the least loaded
    (``serving.handoff``)."""
    sweep_stale()
    given = os.environ.get(MULTIPROCESS_ENV)
    made: list[Path] = []  # removed when the workers are gone, or when making the next one failed
    try:
        try:
            board = _made(made, create_board(workers))  # where each worker publishes its runs in flight
            weights = _made(made, _store_dir())
            connections = _made(made, create_connection_board(workers))
            shared = Path(given) if given else _made(made, _metrics_dir(workers))
        except OSError as exc:  # a full or read-only /dev/shm and temporary directory: one line
            raise SystemExit(f"--workers {workers}: cannot make the files the workers share: {exc}") from None
        if given:  # what a previous gateway left live there (own: this parent writes no metrics)
            forget_gone_processes(shared, own=True)
        env = {**os.environ, MULTIPROCESS_ENV: str(shared)}
        arm = _stop_with_parent(os.getpid())
        procs = [
            subprocess.Popen(worker_argv(argv, board, i, weights, connections), env=env, preexec_fn=arm)
            for i in range(workers)
        ]
        return _supervise(procs, shared)
    finally:
        for path in made:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            process_tree.release(path)


def _made(made: list[Path], path: Path | None) -> Any:
    """``path``, noted in ``made`` to be removed when the workers stop."""
    if path is not None:
        made.append(path)
    return path


def _store_dir() -> Path | None:
    """The workers' directory of optimized models; None where the temporary directory takes none
    (each worker then tries its own, and its sessions load their own copies where that fails too)."""
    try:
        return create_store_dir()
    except OSError as exc:
        log.warning("no directory for the workers' shared weights (%s): each worker makes its own", exc)
        return None


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop_with_parent(parent: int) -> Callable[[], None] | None:
    """For ``Popen(preexec_fn=...)``: the worker gets SIGTERM (and drains) when its parent dies, even
    by SIGKILL, instead of serving the port on as an orphan (Linux; elsewhere nothing). And SIGINT
    stops it from its first instruction: a disposition inherited as ignored (a shell's background job)
    dropped a SIGINT that came before uvicorn handles signals, and that worker served on."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it

    def arm() -> None:  # in the child, between fork and exec: no locks, no allocation to speak of
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # after exec: Python's KeyboardInterrupt
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the prctl: no signal will come
            os._exit(1)

    return arm


METRICS_PREFIX = "kiln-metrics-"  # then the pid of the parent that made the directory


# Room each worker's metric files may take (prometheus_client's multiprocess mode: a few files a
# process, each 64 KiB, doubled as label sets come). They are sparse and memory-mapped, so a
# filesystem without room for them answers a write to a new page with SIGBUS, which kills the worker.
METRICS_ROOM_PER_WORKER = 4 << 20


def _metrics_dir(workers: int) -> Path:
    """A new directory for the workers' metrics, in shared memory where the system lets us write it
    (their values are memory-mapped files: nothing to write back to a disk), else the temporary one;
    only where ``METRICS_ROOM_PER_WORKER`` is free for each worker: on a full /dev/shm every worker
    ended by SIGBUS at its first request, mkdir having worked there."""
    need, tried = workers * METRICS_ROOM_PER_WORKER, []
    for where in ("/dev/shm", tempfile.gettempdir()):
        free = _free_bytes(where)
        if free is None or free < need:
            tried.append(f"{where} {'not writable' if free is None else f'{free >> 20} MiB free'}")
            continue
        try:
            return Path(tempfile.mkdtemp(prefix=process_tree.maker_prefix(METRICS_PREFIX), dir=where))
        except OSError as exc:  # no /dev/shm, or not writable here
            tried.append(f"{where} {exc.strerror or exc}")
    raise OSError(f"no room for the workers' metrics ({need >> 20} MiB): {'; '.join(tried)}")


def _free_bytes(where: str) -> int | None:
    """Bytes this process may still write in directory ``where``, or None where it may write none."""
    try:
        if not os.access(where, os.W_OK | os.X_OK):
            return None
        stat = os.statvfs(where)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def sweep_stale(places: tuple[Path, ...] | None = None) -> list[Path]:
    """Remove the occupancy and connections boards, metrics directories and optimized models that
    gateways killed before they could clean up (SIGKILL) left in ``places`` (default: /dev/shm and the temporary
    directory): each name carries the pid of the process that made it, and those whose maker no longer
    runs go; a directory of optimized models is held locked by its maker (``process_tree.HELD``), so
    it goes once unlocked, though made in another pid namespace (a container since restarted). Returns
    what was removed; never fails (a gateway starts whatever it finds)."""
    places = places or (Path("/dev/shm"), Path(tempfile.gettempdir()))
    removed = []
    for place in places:
        try:
            entries = list(place.iterdir())
        except OSError:
            continue
        for entry in entries:
            prefixes = (BOARD_PREFIX, METRICS_PREFIX, WEIGHTS_PREFIX, CONNECTIONS_PREFIX)
            prefix = next((p for p in prefixes if entry.name.startswith(p)), None)
            if prefix is None or not process_tree.maker_gone(entry.name[len(prefix) :], entry):
                continue
            try:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            except OSError:
                continue
            removed.append(entry)
    if removed:
        log.info("removed %d boards and directories of gateways that are gone", len(removed))
    return removed


def _supervise(procs: list[subprocess.Popen], metrics_dir: Path | None = None) -> int:
    """Wait on the workers; SIGTERM or SIGINT drains them all (each gets SIGTERM), and one ending
    unasked stops the others (its live gauges leave the shared metrics at once). Returns 0 when the
    stop was asked for and went cleanly, else the first failed worker's status as a shell shows it."""
    log.info("started %d gateway workers: %s", len(procs), [p.pid for p in procs])
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        # SIGTERM whatever the parent got: a terminal's Ctrl-C has already sent every worker SIGINT,
        # and a second SIGINT is uvicorn's force quit, which drops the requests still in flight
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = 0
        while procs:
            for proc in list(procs):
                try:
                    rc = proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    continue
                procs.remove(proc)
                if metrics_dir is not None:
                    multiprocess.mark_process_dead(proc.pid, str(metrics_dir))
                if not stopping:  # the gateway ends whole: its supervisor restarts it at full strength
                    log.error("gateway worker %d %s: stopping the others", proc.pid, _ended(rc))
                    code = _exit_status(rc) or 1
                    stop(signal.SIGTERM, None)
                elif rc not in (0, -signal.SIGTERM, -signal.SIGINT):  # uvicorn re-raises the signal
                    log.error("gateway worker %d %s while stopping", proc.pid, _ended(rc))
                    code = code or _exit_status(rc)
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ended(rc: int) -> str:
    """How a worker ended, from its Popen return code (a signal's number negated)."""
    if rc >= 0:
        return f"exited with status {rc}"
    try:
        return f"ended by {signal.Signals(-rc).name}"
    except ValueError:  # a signal Python has no name for (real-time ones)
        return f"ended by signal {-rc}"


def _exit_status(rc: int) -> int:
    """A Popen return code as a shell's status (128 + the signal), not sys.exit(-9)'s 247."""
    return 128 - rc if rc < 0 else rc
