"""How ``python -m serving`` starts and stops as a process: busy ports, signals, the shutdown grace,
and its workers (never left behind, never two gateways on one port)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.repo_fixtures import SIZE, build_classifier_repository
from tests.waiting import eventually

BODY = json.dumps(
    {
        "inputs": [
            {"name": "images", "datatype": "UINT8", "shape": [1, SIZE, SIZE, 1], "data": [1] * SIZE * SIZE}
        ]
    }
).encode()


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return build_classifier_repository(tmp_path_factory.mktemp("lifecycle") / "repo")


def _free_ports(count: int = 2) -> list[int]:
    """Ports nothing listens on now (the gateway must bind them itself: that is what is tested)."""
    from serving.triton.ports import free_port

    return [free_port() for _ in range(count)]


def _start(
    repository: Path,
    flags: tuple[str, ...],
    log: Path,
    started: Callable[[subprocess.Popen, int], bool] | None = None,
    **popen: Any,
) -> tuple[subprocess.Popen, int]:
    """``python -m serving`` on two ports drawn free, once ``started(proc, http_port)`` holds (by default:
    it is ready) or it has exited (killed if neither)."""
    started = started or (lambda proc, http: _ready(http))
    http, grpc = _free_ports()
    cmd = [sys.executable, "-m", "serving", "--model-repository", str(repository), "--host", "127.0.0.1"]
    cmd += ["--http-port", str(http), "--grpc-port", str(grpc), *flags]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    if not eventually(lambda: proc.poll() is not None or started(proc, http), 60):
        stop_gateway(proc)
        pytest.fail(f"the gateway neither started nor exited within 60 s:\n{log.read_text()}")
    return proc, http


def _start_on_free_ports(
    repository: Path, flags: tuple[str, ...], log: Path, **start: Any
) -> tuple[subprocess.Popen, int]:
    """:func:`_start`, on ports drawn again (three tries) while the gateway stops because one is in use:
    a port drawn free may be taken by another process (another test's server or client) before the
    gateway binds it, seconds of imports later."""
    for _ in range(2):
        proc, http = _start(repository, flags, log, **start)
        if proc.poll() is None or "is in use" not in log.read_text():
            return proc, http
    return _start(repository, flags, log, **start)


@contextmanager
def _gateway(
    repository: Path, *flags: str, log: Path, **popen: Any
) -> Iterator[tuple[subprocess.Popen, int]]:
    """``python -m serving`` in a session of its own (a terminal's Ctrl-C reaches its whole group),
    ready; stopped with all it started on the way out whatever the test did (:func:`stop_gateway`)."""
    proc, http = _start_on_free_ports(repository, flags, log, **popen)
    try:
        assert proc.poll() is None, log.read_text()
        yield proc, http
    finally:
        stop_gateway(proc)


def stop_gateway(proc: subprocess.Popen, deadline_s: float = 10.0) -> None:
    """End a gateway started in a session of its own, and all it started, leaving nothing in /dev/shm:
    SIGTERM (it drains and removes its boards and its JSON helper's semaphores), SIGKILL to it alone
    past ``deadline_s`` (its workers then get SIGTERM from the kernel, its JSON helper ends with it and
    multiprocessing's resource tracker unlinks the semaphores it holds), and only what of its group
    outlives that is killed. Killing the whole group at once killed that tracker too: a gateway that had
    started its JSON helper left five ``sem.mp-*`` files in /dev/shm for good."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(deadline_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()
    if not eventually(lambda: not group_members(proc.pid), deadline_s):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (a zombie has ended, only not been reaped yet)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(stat.parent.name))
    return members


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _request_in_flight(port: int) -> socket.socket:
    """A KServe infer request the gateway has started (it answered ``Expect: 100-continue``) and whose
    body is only partly sent: in flight until the test sends the rest."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = "POST /v2/models/lenet/infer HTTP/1.1\r\nhost: kiln\r\ncontent-type: application/json\r\n"
    head += f"content-length: {len(BODY)}\r\nexpect: 100-continue\r\n\r\n"
    conn.sendall(head.encode())
    assert conn.recv(1024).startswith(b"HTTP/1.1 100 Continue")
    conn.sendall(BODY[:10])
    return conn


def _finish(conn: socket.socket) -> bytes:
    """Send the rest of the request's body; the status line of its answer (b"" when none came)."""
    conn.sendall(BODY[10:])
    answer = b""
    while b"\r\n" not in answer:
        chunk = conn.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer.partition(b"\r\n")[0]


def test_a_shutdown_grace_under_a_second_still_bounds_the_drain(repository, tmp_path):
    """``--shutdown-grace-s 0`` (or 0.5) reached uvicorn as ``int(grace) or None``: no limit at all, so
    a request left unfinished held the stopping gateway until its read timeout (here 60 s)."""
    flags = ("--shutdown-grace-s", "0.5", "--read-timeout-s", "60")
    with _gateway(repository, *flags, log=tmp_path / "gateway.log") as (proc, port):
        conn = _request_in_flight(port)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("the gateway was still draining 20 s after SIGTERM with a 0.5 s grace")
        conn.close()


def test_sigterm_stops_grpc_taking_calls_at_once_while_http_requests_drain(repository, tmp_path):
    """The gRPC server went on accepting connections and calls for as long as HTTP requests drained (up
    to the grace), and only then drained for a grace of its own: both stop taking work at SIGTERM now."""
    flags = ("--shutdown-grace-s", "120", "--read-timeout-s", "120")
    with _gateway(repository, *flags, log=tmp_path / "gateway.log") as (proc, port):
        grpc_port = int(proc.args[proc.args.index("--grpc-port") + 1])
        assert _accepts(grpc_port)
        conn = _request_in_flight(port)
        proc.send_signal(signal.SIGTERM)
        assert eventually(lambda: not _accepts(grpc_port), timeout_s=20), "gRPC still accepts"
        assert proc.poll() is None  # the HTTP request is still being waited for
        assert _finish(conn) == b"HTTP/1.1 200 OK"
        proc.wait(timeout=30)


def test_ctrl_c_drains_the_gateway_and_exits_cleanly_without_a_traceback(repository, tmp_path):
    """uvicorn raises the SIGINT it caught again once it has drained; its own command line swallows
    the KeyboardInterrupt, Kiln's printed it as a traceback after a clean shutdown."""
    log = tmp_path / "gateway.log"
    with _gateway(repository, log=log) as (proc, port):
        conn = _request_in_flight(port)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole process group
        assert _finish(conn) == b"HTTP/1.1 200 OK"
        assert proc.wait(timeout=30) == 0
    assert "Traceback" not in log.read_text()


def test_ctrl_c_drains_every_worker(repository, tmp_path):
    """A terminal's Ctrl-C reaches the workers as well as their parent, and the parent passed on the
    same SIGINT: a second SIGINT is uvicorn's force quit, so in-flight requests were dropped."""
    with _gateway(repository, "--workers", "2", log=tmp_path / "gateway.log") as (proc, port):
        # ready means one worker is: the other may still be starting, before uvicorn handles signals
        # (a SIGINT there is the process's default: lost where the test runner's shell ignores it)
        assert eventually(lambda: _loaded_workers(port) == 2), "both workers should load the model"
        conn = _request_in_flight(port)
        for worker in _children(proc.pid):  # the terminal's SIGINT, as the workers get it ...
            os.kill(worker, signal.SIGINT)
        assert eventually(lambda: not _accepts(port))  # both workers are draining
        proc.send_signal(signal.SIGINT)  # ... and as their parent gets it
        # a forced quit ends the workers, then the parent, within a tick (0.1 s): give it ample time to
        # show, then the request must still be answered and the gateway stop once it is
        assert not eventually(lambda: proc.poll() is not None, timeout_s=2)
        assert _finish(conn) == b"HTTP/1.1 200 OK"
        proc.wait(timeout=30)


def test_a_worker_signalled_while_it_starts_stops_even_where_sigint_was_ignored(repository, tmp_path):
    """Started from a shell's background job, SIGINT comes ignored and the workers inherited that: one
    signalled before uvicorn handles signals went on serving. Now it stops, and the gateway with it."""
    log = tmp_path / "gateway.log"
    ignored = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731 - as such a shell starts it
    two_workers = lambda proc, _: len(_children(proc.pid)) == 2  # noqa: E731 - before they serve
    proc, http = _start_on_free_ports(
        repository, ("--workers", "2"), log, started=two_workers, preexec_fn=ignored
    )
    try:
        assert proc.poll() is None, f"the gateway should start two workers:\n{log.read_text()}"
        for worker in _children(proc.pid):  # still importing: seconds before uvicorn serves
            os.kill(worker, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the gateway still runs with its workers signalled:\n{log.read_text()}")
        assert not _accepts(http)
    finally:
        stop_gateway(proc)


def _loaded_workers(port: int) -> int:
    """Workers that have loaded lenet (inside uvicorn's serve, so signals are its), from the metrics page
    every worker's values are on."""
    page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(
        line.startswith("kiln_model_placement{") and 'model="lenet"' in line for line in page.splitlines()
    )


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return False
    return True


def test_workers_stop_when_their_parent_is_killed(repository, tmp_path):
    """SIGKILL leaves the parent no time to stop its workers: they kept serving the port (with the
    models of that start) beside whatever gateway came next. The kernel now sends them SIGTERM."""
    with _gateway(repository, "--workers", "2", log=tmp_path / "gateway.log") as (proc, port):
        assert eventually(lambda: len(_children(proc.pid)) == 2)
        workers = _children(proc.pid)
        proc.kill()
        proc.wait()
        assert eventually(lambda: not any(_alive(pid) for pid in workers), timeout_s=15)
        assert not _accepts(port)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie does not: the process has ended, nobody reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _listening(reuse_port: bool) -> socket.socket:
    sock = socket.socket()
    if reuse_port:  # as a gateway's workers bind: any other process of this user could join them
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize(
    "busy, workers",
    [
        # workers bind with SO_REUSEPORT: a second `--workers 2` gateway on the ports of a running one
        # started and shared them silently (the kernel spreading connections over old and new)
        pytest.param("http", "2", id="workers-beside-another-gateway's-workers"),
        pytest.param("grpc", "2", id="workers-grpc-port"),
        # one process: the gRPC port is bound while the app starts, and a busy one was a traceback
        pytest.param("grpc", "1", id="one-process-grpc-port"),
    ],
)
def test_a_busy_port_stops_the_gateway_at_once_naming_its_flag(tmp_path, busy, workers):
    holder = _listening(reuse_port=workers != "1")
    other = "grpc" if busy == "http" else "http"
    try:
        for _ in range(3):  # the other port is drawn free: drawn again should another process take it first
            ports = {other: _free_ports(1)[0], busy: holder.getsockname()[1]}
            returncode, err = _refused_start(tmp_path, ports, workers)
            if f"--{other}-port (or KILN_{other.upper()}_PORT) {ports[other]}: " not in err:
                break
    finally:
        holder.close()
    assert returncode == 1, err
    flag = f"--{busy}-port (or KILN_{busy.upper()}_PORT) {ports[busy]}"
    assert f"{flag}: 127.0.0.1:{ports[busy]} is in use" in err
    assert "Traceback" not in err


def _refused_start(repository: Path, ports: dict[str, int], workers: str) -> tuple[int, str]:
    """The exit status and the stderr of ``python -m serving`` on ``ports``, one of them busy; the test
    fails if it starts instead of stopping within 30 s."""
    cmd = [sys.executable, "-m", "serving", "--model-repository", str(repository), "--host", "127.0.0.1"]
    cmd += ["--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]), "--workers", workers]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        stop_gateway(proc)
        proc.communicate()
        pytest.fail(f"the gateway started on the busy port among {ports}")
    return proc.returncode, err


def test_a_worker_that_dies_stops_the_gateway_which_says_so_and_exits_as_it_did(repository, tmp_path):
    """One worker killed (the OOM killer's SIGKILL): the others are stopped and the gateway ends, so its
    supervisor restarts it whole rather than it serving on at part strength. The exit status was
    sys.exit(-9), 247 to a shell, and nothing said which worker ended or how."""
    log = tmp_path / "gateway.log"
    with _gateway(repository, "--workers", "2", log=log) as (proc, _):
        assert eventually(lambda: len(_children(proc.pid)) == 2)
        victim, other = _children(proc.pid)
        os.kill(victim, signal.SIGKILL)
        assert proc.wait(timeout=30) == 128 + signal.SIGKILL
        assert not _alive(other)
    assert f"gateway worker {victim} ended by SIGKILL: stopping the others" in log.read_text()


def test_a_stopped_gateway_of_workers_exits_zero(repository, tmp_path):
    """SIGTERM drains the workers, each of which ends by the SIGTERM uvicorn raises again: the parent
    passed that on as sys.exit(-15), 241 to a shell, for a stop that went as asked."""
    with _gateway(repository, "--workers", "2", log=tmp_path / "gateway.log") as (proc, _):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_a_host_that_does_not_resolve_is_named_as_the_host(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving",
            "--model-repository",
            str(tmp_path),
            "--host",
            "no-such-host.invalid",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "--host (or KILN_HOST) no-such-host.invalid: " in done.stderr
    assert "--http-port" not in done.stderr and "Traceback" not in done.stderr
