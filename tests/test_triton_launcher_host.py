"""``python -m serving.triton --host``: Triton bound to 127.0.0.1 only was out of reach of other machines
and of a container's published ports. Each service now binds ``--host`` (its first address for a name),
written as tritonserver 2.51 reads it, ports are drawn on that address and family, and every URL it
prints or connects to reaches it from this machine (a wildcard's loopback)."""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from serving.triton import TritonServer, find_triton
from serving.triton.__main__ import main
from serving.triton.ports import held_port
from serving.triton.server import TritonInstall
from tests.test_ipv6_hosts import fake_names, needs_ipv6
from tests.test_triton_backend_faults import DOUBLE
from tests.test_triton_backend_faults import repository as python_repository
from tests.waiting import DEADLINE_S

ROOT = Path(__file__).resolve().parent.parent
PORTS = {"http_port": 8100, "grpc_port": 8101, "metrics_port": 8102}


def _flags(server: TritonServer) -> dict[str, str]:
    command = server.command(TritonInstall(Path("/opt/triton")), Path("/repo"), Path("/backends"))
    return dict(arg.removeprefix("--").split("=", 1) for arg in command[1:])


@pytest.mark.parametrize(
    ("host", "http", "grpc", "reached"),
    [
        ("127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.1"),
        ("0.0.0.0", "0.0.0.0", "0.0.0.0", "127.0.0.1"),
        pytest.param("::", "ipv6:[::]", "[::]", "[::1]", marks=needs_ipv6),
        pytest.param("[::1]", "ipv6:[::1]", "[::1]", "[::1]", marks=needs_ipv6),
    ],
)
def test_each_service_binds_the_host_as_triton_reads_it_and_the_urls_reach_it(
    tmp_path, host, http, grpc, reached
) -> None:
    """Triton's HTTP and metrics servers read an IPv6 address as ``ipv6:[::1]`` (a bare ``::`` is logged
    as started and listens nowhere), its gRPC server as ``[::1]`` (a bare ``::1`` fails "already in
    use"); a wildcard is reached at the loopback of its family (HTTP on ``::`` is IPv6 only)."""
    server = TritonServer(tmp_path, tmp_path / "work", host=host, **PORTS)
    flags = _flags(server)
    assert (flags["http-address"], flags["grpc-address"], flags["metrics-address"]) == (http, grpc, http)
    assert (server.http_url, server.grpc_url) == (f"{reached}:8100", f"{reached}:8101")
    assert server.metrics_url == f"http://{reached}:8102/metrics"


def test_a_name_binds_its_first_address_which_triton_reads_where_it_reads_no_name(
    tmp_path, monkeypatch
) -> None:
    """Given a name, Triton 2.51's HTTP server logged "Started HTTPService at localhost" and listened
    nowhere: the launcher resolves it."""
    with fake_names(monkeypatch, {"triton-box": ["127.0.0.1", "::1"]}):
        server = TritonServer(tmp_path, tmp_path / "work", host="triton-box", **PORTS)
    assert _flags(server)["http-address"] == "127.0.0.1" and server.http_url == "127.0.0.1:8100"


@pytest.mark.parametrize(
    ("host", "family", "address"),
    [
        ("0.0.0.0", socket.AF_INET, "0.0.0.0"),
        pytest.param("::", socket.AF_INET6, "::", marks=needs_ipv6),
        pytest.param("::1", socket.AF_INET6, "::1", marks=needs_ipv6),
    ],
)
def test_ports_are_drawn_on_the_address_and_family_triton_binds(host, family, address) -> None:
    """A port drawn free on 127.0.0.1 could be taken on the host's address or family, and Triton then
    failed to bind it; on ``::`` the port is drawn free on both families, as Triton's gRPC binds it."""
    with held_port(host=host) as sock:
        assert sock.family == family and sock.getsockname()[0] == address
        if host == "::":
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("no-such-host.invalid", ""),
        ("192.0.2.1", "cannot be bound (Cannot assign requested address)"),  # TEST-NET: no one's address
        ("", "is empty: name the interface to bind"),
    ],
)
def test_a_host_that_cannot_be_bound_is_refused_in_one_line_before_triton_starts(
    tmp_path, capsys, host, reason
) -> None:
    assert main(["--host", host, "--model-repository", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    lines = (out + err).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"--host {host or repr(host)}: ") and reason in lines[0]


def _listening(port: int) -> set[str]:
    """The local addresses sockets listen on at ``port`` (/proc/net), as hex: 8 zeros is 0.0.0.0."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def _ready_line(launcher: subprocess.Popen) -> str:
    """The launcher's "Triton ready" line (its output read on a thread, waited for with a deadline)."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in launcher.stdout], daemon=True).start()
    while True:
        line = lines.get(timeout=DEADLINE_S)
        if line.startswith("Triton ready"):
            return line


@pytest.mark.triton
@pytest.mark.skipif(
    find_triton() is None, reason="the tritonserver binary from nvidia-pytriton is not installed"
)
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from Linux's /proc")
def test_triton_on_every_interface_listens_there_and_prints_urls_this_machine_reaches(tmp_path) -> None:
    repository = python_repository(tmp_path / "repo", {"double": DOUBLE})
    command = [
        sys.executable,
        "-m",
        "serving.triton",
        "--host",
        "0.0.0.0",
        "--model-repository",
        str(repository),
    ]
    command += [
        "--workdir",
        str(tmp_path / "work"),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
    ]
    launcher = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        ready = _ready_line(launcher).split()
        assert "(bound to 0.0.0.0):" in " ".join(ready)
        http, grpc, metrics = (ready[ready.index(word) + 1] for word in ("http", "grpc", "metrics"))
        assert http.startswith("127.0.0.1:") and grpc.startswith("127.0.0.1:")
        for port in (int(http.rsplit(":", 1)[1]), int(metrics.split(":")[2].split("/")[0])):
            assert _listening(port) == {"00000000"}  # 0.0.0.0: every IPv4 interface, not 127.0.0.1 alone
        with urllib.request.urlopen(f"http://{http}/v2/health/ready", timeout=10) as answer:
            assert answer.status == 200
        with urllib.request.urlopen(metrics, timeout=10) as answer:
            assert answer.status == 200
        with grpcclient.InferenceServerClient(grpc) as client:
            assert client.is_server_live()
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=DEADLINE_S) == 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
