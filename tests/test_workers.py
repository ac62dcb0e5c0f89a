"""Several gateway workers share one port: the sockets allow it and each worker gets the same flags."""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from serving.workers import claim_port, reuse_port_socket, worker_argv


def test_two_workers_can_listen_on_the_same_port():
    first = reuse_port_socket("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        second = reuse_port_socket("127.0.0.1", port)
        assert second.getsockname()[1] == port
        second.close()
    finally:
        first.close()


def test_a_worker_runs_the_same_flags_as_one_worker_sharing_its_ports():
    argv = ["--model-repository", "repo", "--workers", "2", "--http-port", "8000", "--workers=3"]
    assert worker_argv(argv) == [
        sys.executable,
        "-m",
        "serving",
        "--model-repository",
        "repo",
        "--http-port",
        "8000",
        "--workers",
        "1",
        "--reuse-port",
    ]


def test_each_worker_is_told_the_shared_board_and_its_place_on_it():
    argv = worker_argv(["--model-repository", "repo"], Path("/dev/shm/board"), 1)
    assert argv[-5:] == ["--reuse-port", "--worker-board", "/dev/shm/board", "--worker-index", "1"]
    argv = worker_argv(["--model-repository", "repo"], Path("/dev/shm/b"), 0, None, Path("/dev/shm/c"))
    assert argv[-2:] == ["--connection-board", "/dev/shm/c"]


def test_the_command_line_reaches_the_sessions_and_the_board(tmp_path):
    from serving.__main__ import parse_args
    from serving.execution.occupancy import create_board
    from serving.execution.repository import Repository
    from serving.lifespan import make_backend
    from serving.metrics import GatewayMetrics

    board = create_board(2)
    try:
        settings = parse_args(
            [
                "--model-repository",
                str(tmp_path),
                "--spin-us",
                "0",
                "--worker-board",
                str(board),
                "--worker-index",
                "1",
            ]
        )
        backend = make_backend(settings, Repository(tmp_path), GatewayMetrics())
        assert backend.options.spin_us == 0
        backend.occupancy.enter()
        assert board.read_bytes() == b"\x00\x01"  # this worker's run, published at its place
        backend.occupancy.leave()
        backend.occupancy.close()
    finally:
        board.unlink()


def _held_port(host: str = "127.0.0.1") -> socket.socket:
    """A port the test holds (bound with SO_REUSEPORT, not listening: no connection reaches it), which
    the workers bind as well: no other process can take it between here and their start."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux)."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _mapped_weights(pid: int) -> set[str]:
    """The shared weight files (serving/execution/shared_weights.py) process ``pid`` maps (Linux)."""
    from serving.execution.shared_weights import WEIGHTS

    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split(maxsplit=5)[5] for line in lines if line.endswith(f"/{WEIGHTS}")}


def _samples(text: str, name: str, **labels: str) -> list[float]:
    """The values of the samples ``name`` with ``labels`` in the exposition ``text``."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]


def _two_workers(tmp_path: Path) -> tuple[list[str], str, int, list[socket.socket]]:
    """The command of a two-worker gateway on a small classifier repository, on ports held here
    (close them when done), its HTTP URL and its gRPC port."""
    from tests.repo_fixtures import build_classifier_repository

    repository = build_classifier_repository(tmp_path / "repo")
    held = [_held_port(), _held_port()]
    port, grpc_port = (sock.getsockname()[1] for sock in held)
    cmd = [sys.executable, "-m", "serving", "--model-repository", str(repository), "--host", "127.0.0.1"]
    # --reuse-port: the ports are held here and meant to be shared (a gateway refuses busy ones)
    cmd += ["--http-port", str(port), "--grpc-port", str(grpc_port), "--workers", "2", "--reuse-port"]
    return cmd, f"http://127.0.0.1:{port}", grpc_port, held


def test_every_scrape_counts_the_requests_of_every_worker(tmp_path):
    """Two workers on one port: whichever one a scrape reaches, it lists both workers and counts every
    request answered by either (each request and each scrape on a new connection, which the kernel
    spreads over the workers). Each process used to answer with its own counters only, so a series
    jumped between two processes' values from one scrape to the next (a counter reset to Prometheus)."""
    import httpx

    from kiln.processes import running
    from tests.repo_fixtures import SIZE

    cmd, url, _, held = _two_workers(tmp_path)
    shape = [1, SIZE, SIZE, 1]
    image = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": shape, "data": [1] * SIZE * SIZE}]}
    fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection for every request
    try:
        with (
            running(cmd, f"{url}/v2/health/ready", log_path=tmp_path / "gateway.log") as gateway,
            httpx.Client(base_url=url, limits=fresh, timeout=30) as client,
        ):
            # ready means one worker is: wait until the page shows both with the model loaded
            deadline = time.monotonic() + 60
            while (
                len(_samples(text := client.get("/metrics").text, "kiln_model_placement", model="lenet")) < 2
            ):
                assert time.monotonic() < deadline, f"both workers should load the model:\n{text}"
                time.sleep(0.05)
            assert sorted(_samples(text, "kiln_worker_info")) == [1.0, 1.0]  # one series a worker
            # each worker's open connections, a series each once its servers have started (a worker
            # loads its models before it serves): this scrape's own connection is one of them
            while any(
                len(_samples(text := client.get("/metrics").text, "kiln_open_connections", protocol=p)) < 2
                for p in ("http", "grpc")
            ):
                assert time.monotonic() < deadline, f"both workers should count their connections:\n{text}"
                time.sleep(0.05)
            assert sum(_samples(text, "kiln_open_connections", protocol="http")) >= 1
            if sys.platform.startswith("linux"):  # both map one copy of the model's weights
                mapped = [_mapped_weights(pid) for pid in _children(gateway.pid)]
                assert len(mapped) == 2 and mapped[0] == mapped[1] and len(mapped[0]) == 1, mapped
            sent = 24
            for _ in range(sent):
                assert client.post("/v2/models/lenet/infer", json=image).status_code == 200
            pages = [client.get("/metrics").text for _ in range(8)]
            # the statistics extension reads the same shared series (a batch is recorded just after
            # its answer leaves: wait for the last one), whichever worker answers
            stats_url = "/v2/models/lenet/stats"
            while client.get(stats_url).json()["model_stats"][0]["inference_count"] < sent:
                assert time.monotonic() < deadline + 30, "every executed request should be counted"
                time.sleep(0.05)
            stats = [client.get(stats_url).json()["model_stats"][0] for _ in range(8)]
    finally:
        for sock in held:
            sock.close()
    memory = []
    for page in pages:
        if sys.platform.startswith("linux"):  # the parent's tree, whichever worker answered
            (processes,) = _samples(page, "kiln_processes")
            assert processes >= 3, page  # the parent and its two workers (and their helpers)
            (pss,) = _samples(page, "kiln_process_memory_bytes")
            memory.append(pss)
            assert _samples(page, "kiln_process_cpu_seconds_total")[0] > 0
        assert _samples(page, "kiln_requests_total", model="lenet", outcome="success") == [sent]
        assert _samples(page, "kiln_request_latency_seconds_count", model="lenet") == [sent]
        assert _samples(page, "kiln_queue_depth", model="lenet") == [0.0]  # summed over the live workers
        assert _samples(page, "kiln_in_flight_requests", model="lenet") == [0.0]
    if memory:  # one reading of one tree, not one worker's own (each worker alone is well under half)
        assert max(memory) < 1.5 * min(memory), memory
    for stat in stats:
        assert stat["inference_count"] == stat["execution_count"] == sent  # one at a time: one a batch
        assert (
            stat["inference_stats"]["success"]["count"] == stat["inference_stats"]["queue"]["count"] == sent
        )
        assert stat["last_inference"] > 0


def test_boards_metrics_and_weights_left_by_a_killed_gateway_are_swept_and_live_ones_kept(tmp_path):
    import subprocess

    from serving.execution.occupancy import BOARD_PREFIX
    from serving.execution.shared_weights import PREFIX as WEIGHTS_PREFIX
    from serving.handoff import BOARD_PREFIX as CONNECTIONS_PREFIX
    from serving.workers import METRICS_PREFIX, sweep_stale

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no process has now (reused only after the counter wraps)
    live = os.getpid()
    stale_board = tmp_path / f"{BOARD_PREFIX}{gone.pid}-abc"
    stale_connections = tmp_path / f"{CONNECTIONS_PREFIX}{gone.pid}-stu"
    stale_metrics = tmp_path / f"{METRICS_PREFIX}{gone.pid}-def"
    stale_weights = tmp_path / f"{WEIGHTS_PREFIX}{gone.pid}-mno"
    live_board = tmp_path / f"{BOARD_PREFIX}{live}-ghi"
    live_metrics = tmp_path / f"{METRICS_PREFIX}{live}-jkl"
    live_weights = tmp_path / f"{WEIGHTS_PREFIX}{live}-pqr"
    unrelated = [tmp_path / "kiln-occupancy-x1y2z3", tmp_path / f"other-{gone.pid}-x"]  # no pid: kept
    for path in (stale_board, stale_connections, live_board, *unrelated):
        path.write_bytes(b"\x00\x00")
    for path in (stale_metrics, live_metrics):
        path.mkdir()
        (path / "counter_1.db").write_bytes(b"\x00")
    for path in (stale_weights, live_weights):
        (path / "0123abcd").mkdir(parents=True)
        (path / "0123abcd" / "weights.bin").write_bytes(b"\x00" * 64)
    swept = sweep_stale((tmp_path, tmp_path / "absent"))
    assert sorted(swept) == sorted([stale_board, stale_connections, stale_metrics, stale_weights])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (live_board, live_metrics, live_weights, *unrelated)
    )


def test_connections_are_placed_on_the_worker_holding_fewest(tmp_path):
    """Two workers: keep-alive HTTP connections and gRPC channels opened one after another end up
    evenly split whichever worker the kernel hands each one to (a worker holding more passes a new one
    on), and every connection is served wherever it ended up."""
    import grpc
    import httpx
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from kiln.processes import running

    cmd, url, grpc_port, held = _two_workers(tmp_path)
    clients: list[httpx.Client] = []
    channels: list[grpc.Channel] = []

    def counts(client: httpx.Client, protocol: str) -> list[float]:
        return sorted(_samples(client.get("/metrics").text, "kiln_open_connections", protocol=protocol))

    def settled(client: httpx.Client, protocol: str, total: int) -> list[float]:
        """The two workers' counts once both publish and they add up to ``total`` (a closed
        connection leaves its worker's count as soon as that worker reads the close)."""
        deadline = time.monotonic() + 60
        while len(seen := counts(client, protocol)) < 2 or sum(seen) != total:
            assert time.monotonic() < deadline, f"{protocol} connections should add up to {total}: {seen}"
            time.sleep(0.05)
        return seen

    try:
        with running(cmd, f"{url}/v2/health/ready", log_path=tmp_path / "gateway.log"):
            for n in range(1, 5):  # one keep-alive connection a client, each new one placed by counts
                clients.append(httpx.Client(base_url=url, limits=httpx.Limits(max_connections=1), timeout=30))
                assert clients[-1].get("/v2/health/ready").status_code == 200
                settled(clients[-1], "http", n)
            assert counts(clients[0], "http") == [2, 2]
            for n in range(1, 3):  # channels of their own (gRPC shares one connection between equal ones)
                option = [("grpc.use_local_subchannel_pool", 1)]
                channels.append(grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=option))
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channels[-1])
                assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=30).live
                settled(clients[0], "grpc", n)
            assert counts(clients[0], "grpc") == [1, 1]
            for client in clients:  # each connection still served where it was placed
                assert client.get("/v2/health/live").status_code == 200
    finally:
        for client in clients:
            client.close()
        for channel in channels:
            channel.close()
        for sock in held:
            sock.close()


def _port_in_time_wait() -> int:
    """A free port whose one connection sits in TIME_WAIT on the server's side, as a gateway of one
    process (no SO_REUSEPORT) stopped a moment ago leaves the connections it closed."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server's side closes first: it is the one left in TIME_WAIT
    assert client.recv(1) == b""
    client.close()
    listener.close()
    plain = socket.socket()
    try:
        plain.bind(("127.0.0.1", port))  # a bind without SO_REUSEADDR meets the TIME_WAIT connection
    except OSError as exc:
        assert exc.errno == errno.EADDRINUSE
    else:
        pytest.skip("this kernel let a socket without SO_REUSEADDR bind beside a TIME_WAIT connection")
    finally:
        plain.close()
    return port


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the port guards are Linux's abstract sockets"
)
def test_a_workers_gateway_restarted_at_once_holds_its_port_and_a_second_gateway_is_refused():
    """A ``--workers`` gateway started within a minute of a gateway of one process on its port (``make
    serve``, then ``make serve WORKERS=2``) was refused "in use": its held sockets took no SO_REUSEADDR,
    which a port with TIME_WAIT connections not SO_REUSEPORT needs, so that a second gateway could not
    bind beside them. The guard keeps the second gateway off now."""
    port = _port_in_time_wait()
    held = claim_port("127.0.0.1", port, hold=True)
    try:
        for host in ("127.0.0.1", "0.0.0.0", "localhost"):  # addresses that overlap, spelled apart
            for hold in (True, False):  # another --workers gateway, a gateway of one process
                with pytest.raises(OSError, match=f"another Kiln gateway holds port {port}"):
                    claim_port(host, port, hold=hold)
        listening = socket.socket()
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listening.bind(("127.0.0.1", port))  # a worker binds beside the held socket and serves
        listening.listen()
        listening.close()
    finally:
        for sock in held:
            sock.close()
    for sock in claim_port("127.0.0.1", port, hold=True):  # given back with the gateway's end
        sock.close()
    guards = claim_port("127.0.0.1", port, hold=False)  # a gateway of one process keeps its guard
    try:
        with pytest.raises(OSError, match=f"another Kiln gateway holds port {port}"):
            claim_port("0.0.0.0", port, hold=True)
    finally:
        for sock in guards:
            sock.close()
