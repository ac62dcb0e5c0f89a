"""A real load balancer (haproxy) in front of local gateway replicas, as a Kubernetes ingress would be.

HTTP/1.1 is balanced per request by least connections over keep-alive server connections; gRPC is
balanced per request too, because haproxy terminates HTTP/2 (``proto h2``) and dispatches each stream
on its own, so one client channel reaches every replica. A request a replica never answered (refused
connection, connection reset before any response) is retried on another replica; health checks on the
KServe v2 readiness route take a dead replica out after two failed checks (about a second); a
slow check under load does not. Only 127.0.0.1 is ever bound.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln.processes import running
from serving.triton.ports import held_port

HAPROXY_HINT = "haproxy is not installed: `make balancer` (apt-get install haproxy) installs it"

GLOBAL = """\
global
    maxconn 4096

defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout check 2s
    # Retry what a replica never answered, on another replica (inference requests are idempotent).
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
    option http-buffer-request

listen stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
    monitor-uri /ready

frontend http_in
    bind 127.0.0.1:{http_port}
    default_backend gateways_http

frontend grpc_in
    bind 127.0.0.1:{grpc_port} proto h2
    default_backend gateways_grpc
"""

BACKEND = """
backend gateways_{protocol}
    balance leastconn
    option httpchk
    http-check send meth GET uri /v2/health/ready
"""


@dataclass(frozen=True)
class Upstream:
    """One gateway replica as the balancer sees it."""

    name: str
    http_port: int
    grpc_port: int


@dataclass(frozen=True)
class Balancer:
    http_url: str  # http://127.0.0.1:port
    grpc_url: str  # 127.0.0.1:port
    stats_url: str


def find_haproxy() -> str | None:
    """The haproxy binary (Debian installs it in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def haproxy_config(upstreams: Sequence[Upstream], http_port: int, grpc_port: int, stats_port: int) -> str:
    """HTTP and gRPC frontends, each with a least-connections backend over ``upstreams``."""
    text = GLOBAL.format(stats_port=stats_port, http_port=http_port, grpc_port=grpc_port)
    for protocol in ("http", "grpc"):
        text += BACKEND.format(protocol=protocol)
        for up in upstreams:
            port = up.http_port if protocol == "http" else up.grpc_port
            h2 = " proto h2 check-proto h1" if protocol == "grpc" else ""
            text += f"    server {up.name} 127.0.0.1:{port}{h2} check port {up.http_port} inter 500 fall 2 rise 1\n"
    return text


@contextlib.contextmanager
def run_balancer(
    upstreams: Sequence[Upstream], workdir: Path, *, timeout_s: float = 30.0
) -> Iterator[Balancer]:
    """Run haproxy over ``upstreams`` until every one of them is up in its health checks; stop it on exit."""
    binary = find_haproxy()
    if binary is None:
        raise RuntimeError(HAPROXY_HINT)
    workdir.mkdir(parents=True, exist_ok=True)
    # held (SO_REUSEPORT, never listening) while haproxy runs: it binds its listeners with SO_REUSEPORT
    # too, so it takes them beside these and no other process can between the draw and its bind
    with contextlib.ExitStack() as held:
        ports = [held.enter_context(held_port(reuse_port=True)).getsockname()[1] for _ in range(3)]
        with _haproxy(binary, upstreams, workdir, ports, timeout_s) as balancer:
            yield balancer


@contextlib.contextmanager
def _haproxy(
    binary: str, upstreams: Sequence[Upstream], workdir: Path, ports: list[int], timeout_s: float
) -> Iterator[Balancer]:
    http_port, grpc_port, stats_port = ports
    config = workdir / "haproxy.cfg"
    config.write_text(haproxy_config(upstreams, http_port, grpc_port, stats_port), encoding="utf-8")
    stats = f"http://127.0.0.1:{stats_port}"
    cmd = [binary, "-db", "-f", str(config)]
    with running(cmd, f"{stats}/ready", timeout_s=timeout_s, log_path=workdir / "haproxy.log"):
        balancer = Balancer(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", f"{stats}/stats")
        wait_until(lambda: all(s["status"] == "UP" for s in server_stats(balancer).values()), timeout_s)
        yield balancer


def server_stats(balancer: Balancer) -> dict[tuple[str, str], dict[str, str]]:
    """haproxy's counters per (backend, server): status, hrsp_2xx, hrsp_5xx, wretr (retries), wredis."""
    import httpx

    text = httpx.get(f"{balancer.stats_url};csv", timeout=5).text.lstrip("# ")
    rows = csv.DictReader(io.StringIO(text))
    return {(r["pxname"], r["svname"]): r for r in rows if r["svname"] not in ("FRONTEND", "BACKEND")}


def wait_until(condition, timeout_s: float, interval_s: float = 0.1) -> None:
    """Poll ``condition`` until it holds; TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met after {timeout_s:.0f} s")
        time.sleep(interval_s)
