"""The gateway bound to IPv6 addresses, names and the dual-stack wildcard: what a Kubernetes dual-stack
pod (``--host ::``), an IPv6 loopback (``--host ::1``) or a name of several addresses binds, and the
start-up lines and refusals an operator reads."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from kiln.processes import child_options
from serving.__main__ import claim_ports, parse_args
from serving.protocol.grpc_server import start_grpc_server
from serving.settings import Settings, join_host_port
from tests.test_gateway_lifecycle import stop_gateway
from tests.waiting import DEADLINE_S


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")


@contextlib.contextmanager
def held_dual_stack_port() -> Iterator[int]:
    """A port free on every IPv4 and IPv6 address, held (SO_REUSEPORT, not listening) for a server that
    binds it with ``reuse_port`` as a gateway worker does."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        held.bind(("::", 0))
        yield held.getsockname()[1]


@contextlib.contextmanager
def fake_names(monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str]]) -> Iterator[None]:
    """``socket.getaddrinfo`` answering ``names`` with their addresses (a machine's /etc/hosts)."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, kind=0, proto=0, flags=0):  # noqa: ANN001, ANN202
        if host not in names:
            return real(host, port, family, kind, proto, flags)
        return [
            (
                socket.AF_INET6 if ":" in address else socket.AF_INET,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                "",
                (address, port, 0, 0) if ":" in address else (address, port),
            )
            for address in names[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield


class LiveOnly:
    """A backend that is only alive: enough for gRPC's ServerLive."""

    def is_live(self) -> bool:
        return True


async def _grpc_live(target: str) -> bool:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return (await stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10)).live


def _http_live(host: str, port: int) -> int:
    return httpx.get(f"http://{join_host_port(host, port)}/v2/health/live", timeout=10).status_code


# -- what --host takes --------------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["[::1]", " ::1 ", "::1"])
def test_an_ipv6_host_in_url_brackets_is_the_address_itself(given, monkeypatch):
    """``--host [::1]`` (as a URL writes it) stopped the gateway: "Name or service not known"."""
    assert Settings(host=given).host == "::1"
    monkeypatch.setenv("KILN_HOST", given)
    assert Settings().host == "::1"


def test_an_empty_host_is_refused_naming_the_flag_rather_than_binding_every_interface(capsys):
    """``KILN_HOST=`` (a template's unset value) bound 0.0.0.0 and :: (two ports with port 0) and
    printed ``http://:PORT``."""
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--host", ""])
    assert stopped.value.code == 2
    assert "--host (or KILN_HOST): is empty" in capsys.readouterr().err


def test_addresses_are_written_with_brackets_where_they_are_ipv6():
    assert join_host_port("::1", 8001) == "[::1]:8001"
    assert join_host_port("::", 8001) == "[::]:8001"
    assert join_host_port("127.0.0.1", 8001) == "127.0.0.1:8001"
    assert join_host_port("localhost", 8001) == "localhost:8001"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("::1:8101", "an IPv6 address is written in brackets before its port ([::1]:8001)"),
        ("[::1]", "is not host:port with a port of 1-65535"),
        ("localhost", "is not host:port with a port of 1-65535"),
        ("http://[::1]:8101", "is host:port, without a scheme"),
        ("ipv4:127.0.0.1:8101", "is host:port, without a scheme"),  # gRPC's target form, not tritonclient's
        ("dns:///triton:8101", "is host:port, without a scheme"),
    ],
)
def test_a_triton_url_no_client_can_reach_is_refused_before_the_gateway_starts(url, problem, capsys):
    """``::1:8101`` started a gateway that was never ready, logging "Misformatted domain name" at every
    probe; without a port gRPC dialled 443."""
    with pytest.raises(SystemExit):
        parse_args(["--backend", "triton", "--triton-url", url])
    assert f"--triton-url (or KILN_TRITON_URL) {url}: {problem}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "url", ["[::1]:8101", "localhost:8101", "127.0.0.1:8101", "triton.internal:8001", "dns:8001"]
)
def test_a_triton_url_of_host_and_port_is_taken_ipv6_in_brackets_included(url):
    assert Settings(backend="triton", triton_url=url).triton_url == url


# -- hosts that cannot work, refused before any model loads ---------------------------------------------


def test_a_host_not_on_this_machine_is_blamed_rather_than_its_fixed_port():
    """With a fixed port the refusal said the port was in use and to choose another one."""
    with pytest.raises(SystemExit) as stopped:
        claim_ports(Settings(host="192.0.2.1", http_port=8000, grpc_port=0), hold=False)
    assert str(stopped.value.code).startswith("--host (or KILN_HOST) 192.0.2.1: cannot be bound")


@needs_ipv6
def test_an_ipv4_mapped_ipv6_host_is_refused_before_the_models_load():
    """The check bound it (a plain IPv6 socket takes IPv4-mapped addresses) and uvicorn, whose IPv6
    sockets are IPv6 only, failed with EINVAL once every model had loaded."""
    with pytest.raises(SystemExit) as stopped:
        claim_ports(Settings(host="::ffff:127.0.0.1", http_port=0, grpc_port=0), hold=False)
    assert str(stopped.value.code).startswith("--host (or KILN_HOST) ::ffff:127.0.0.1: cannot be bound")


@needs_ipv6
def test_a_name_of_ipv6_addresses_only_passes_the_check(monkeypatch):
    """Every name was looked up for IPv4 only: ``ip6-localhost`` (::1 in Debian's /etc/hosts) was
    refused as "Name or service not known" though the server binds it."""
    with fake_names(monkeypatch, {"ip6-only.test": ["::1"]}):
        assert claim_ports(Settings(host="ip6-only.test", http_port=0, grpc_port=0), hold=False) == []


@needs_ipv6
def test_a_port_taken_on_one_address_of_a_name_stops_the_gateway_before_it_loads(monkeypatch):
    """``localhost`` is 127.0.0.1 and ::1 on most machines and the server binds both; only IPv4 was
    checked, so a port taken on ::1 failed once every model had loaded."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as taken:
        taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        taken.bind(("::1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (
            fake_names(monkeypatch, {"both.test": ["127.0.0.1", "::1"]}),
            pytest.raises(SystemExit) as stopped,
        ):
            claim_ports(Settings(host="both.test", http_port=port, grpc_port=0), hold=False)
    assert str(stopped.value.code).startswith(
        f"--http-port (or KILN_HTTP_PORT) {port}: both.test:{port} is in use"
    )


# -- gRPC on IPv6 ---------------------------------------------------------------------------------------


@needs_ipv6
@pytest.mark.parametrize("server", ["kiln", "grpcio"])
def test_grpc_on_the_ipv6_wildcard_answers_ipv4_and_ipv6_clients(server, caplog):
    """Kiln's server bound ``::`` IPv6 only (asyncio's sockets), so IPv4 clients were refused; grpcio's
    could not bind an IPv6 host at all (``:::port``), and the start-up line wrote ``:::port``."""

    async def scenario(port: int) -> tuple[bool, bool]:
        handle = await start_grpc_server(LiveOnly(), "::", port, reuse_port=True, server=server)
        try:
            return await _grpc_live(f"127.0.0.1:{port}"), await _grpc_live(f"[::1]:{port}")
        finally:
            await handle.stop(0.5)

    with held_dual_stack_port() as port, caplog.at_level("INFO", logger="serving.protocol.grpc_server"):
        assert asyncio.run(scenario(port)) == (True, True)
    assert any(r.getMessage().startswith(f"KServe v2 gRPC listening on [::]:{port}") for r in caplog.records)


@needs_ipv6
def test_grpcios_server_binds_the_ipv6_loopback():
    """``--grpc-server grpcio --host ::1`` failed its start-up once every model loaded: "cannot bind the
    gRPC server to ::1:8001"."""

    async def scenario() -> bool:
        handle = await start_grpc_server(LiveOnly(), "::1", 0, server="grpcio")
        try:
            return await _grpc_live(f"ipv6:[::1]:{handle.port}")
        finally:
            await handle.stop(0.5)

    assert asyncio.run(scenario())


# -- the gateway process ----------------------------------------------------------------------------


@contextlib.contextmanager
def gateway(repository: Path, log_path: Path, *flags: str) -> Iterator[subprocess.Popen]:
    cmd = [sys.executable, "-m", "serving", "--model-repository", str(repository), *flags]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, **child_options())
    try:
        yield proc
    finally:
        stop_gateway(proc)


def wait_for_line(proc: subprocess.Popen, log_path: Path, pattern: str) -> re.Match:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        found = re.search(pattern, log_path.read_text())
        if found:
            return found
        assert proc.poll() is None, f"the gateway exited {proc.returncode}:\n{log_path.read_text()}"
        time.sleep(0.05)
    raise AssertionError(f"no line matching {pattern!r} within {DEADLINE_S:g} s:\n{log_path.read_text()}")


@needs_ipv6
def test_a_gateway_on_the_ipv6_wildcard_serves_http_to_ipv4_and_ipv6_clients(tmp_path):
    """``--host ::`` (a dual-stack pod's) served HTTP to IPv6 clients only: a kubelet probing the pod's
    IPv4 address was refused."""
    log_path = tmp_path / "gateway.log"
    with gateway(tmp_path, log_path, "--host", "::", "--http-port", "0", "--grpc-port", "0") as proc:
        port = int(wait_for_line(proc, log_path, r"Uvicorn running on http://\[::\]:(\d+)")[1])
        assert (_http_live("127.0.0.1", port), _http_live("::1", port)) == (200, 200)


@needs_ipv6
def test_a_worker_on_the_ipv6_wildcard_says_where_http_listens_and_serves_both_families(tmp_path):
    """A worker of ``--workers`` (its ports shared, ``--reuse-port``) wrote no HTTP start-up line at
    all, and its gRPC server was IPv6 only while its HTTP socket took both families."""
    log_path = tmp_path / "worker.log"
    with held_dual_stack_port() as http_port, held_dual_stack_port() as grpc_port:
        flags = ["--host", "::", "--reuse-port", "--http-port", str(http_port), "--grpc-port", str(grpc_port)]
        with gateway(tmp_path, log_path, *flags) as proc:
            wait_for_line(proc, log_path, rf"Uvicorn running on http://\[::\]:{http_port} ")
            assert f"KServe v2 gRPC listening on [::]:{grpc_port} " in log_path.read_text()
            assert (_http_live("127.0.0.1", http_port), _http_live("::1", http_port)) == (200, 200)
            grpc_live = (
                asyncio.run(_grpc_live(f"127.0.0.1:{grpc_port}")),
                asyncio.run(_grpc_live(f"[::1]:{grpc_port}")),
            )
            assert grpc_live == (True, True)


def test_a_names_address_of_a_family_the_kernel_lacks_is_skipped_as_asyncio_skips_it(monkeypatch):
    """``localhost`` still resolves to ::1 (from /etc/hosts) on a kernel booted with ipv6.disable=1:
    creating that socket fails with EAFNOSUPPORT, and the gateway refused a host uvicorn serves."""
    import errno

    from serving import workers

    both = [(socket.AF_INET, ("127.0.0.1", 0)), (socket.AF_INET6, ("::1", 0, 0, 0))]
    monkeypatch.setattr(workers, "bind_addresses", lambda host, port: both)
    real = workers.server_socket

    def no_ipv6(family, address, **options):
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, address, **options)

    monkeypatch.setattr(workers, "server_socket", no_ipv6)
    (held,) = workers.server_sockets("localhost", 0, reuse_port=False)
    try:
        assert held.family == socket.AF_INET
    finally:
        held.close()
    monkeypatch.setattr(workers, "bind_addresses", lambda host, port: both[1:])
    with pytest.raises(OSError, match="not supported"):
        workers.server_sockets("ip6-localhost", 0, reuse_port=False)
