"""Free TCP ports, none handed out twice in a process: Triton's three services draw theirs here (on the
address its ``--host`` binds), as do the gateways, baselines and balancers the bench, the demo and the
tests start beside it on 127.0.0.1 (most of which never start Triton, hence a module apart from
:mod:`serving.triton.server`). Addresses are read and bound as the gateway reads its ``--host``
(:mod:`serving.workers`)."""

from __future__ import annotations

import ipaddress
import socket
import threading

from serving.settings import is_dual_stack
from serving.workers import bind_addresses, server_socket

LOOPBACK = "127.0.0.1"
_HANDED_OUT: set[int] = set()  # ports free_port returned in this process: never returned twice
_HANDED_OUT_LOCK = threading.Lock()


def held_port(reuse_port: bool = False, host: str = LOOPBACK) -> socket.socket:
    """A socket bound to a port of ``host`` (its first address) that no earlier call here returned; the
    caller owns (and closes) it. On ``::`` the port is free on both families (the socket takes IPv4
    too), as Triton's gRPC server binds it.

    The kernel may hand the same port to two successive bind-to-0-then-close calls, and a server
    given two equal ports cannot start. Remembering what was handed out keeps every port distinct;
    servers that accept a bound socket (uvicorn) take this one and leave no window at all. With
    ``reuse_port`` the socket is bound with SO_REUSEPORT, so a server that binds its own socket the
    same way (the gateway's gRPC server with ``reuse_port``) can take the port while this one, bound
    but never listening, keeps everyone else off it: no window either.
    """
    family, address = bind_addresses(host, 0)[0]
    options = {"reuse_port": reuse_port, "dual_stack": is_dual_stack(host), "reuse_addr": False}
    with _HANDED_OUT_LOCK:
        rejected: list[socket.socket] = []  # held open so the next bind cannot return them again
        try:
            while True:
                sock = server_socket(family, address, **options)
                port = sock.getsockname()[1]
                if port not in _HANDED_OUT:
                    _HANDED_OUT.add(port)
                    return sock
                rejected.append(sock)
        finally:
            for sock in rejected:
                sock.close()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on now and that no earlier call here returned."""
    with held_port(host=host) as sock:
        return sock.getsockname()[1]


def bind_address(host: str) -> str:
    """The one address a server given ``host`` binds: an IP address itself (``[::1]`` read as ``::1``),
    a name the first address it resolves to. OSError where it cannot be bound here (a name that does
    not resolve: ``socket.gaierror``; an address of another machine: EADDRNOTAVAIL)."""
    name = host.strip()
    name = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    if not name:
        raise OSError("is empty: name the interface to bind (127.0.0.1, 0.0.0.0, or :: for every one)")
    family, address = bind_addresses(name, 0)[0]
    server_socket(family, address, reuse_port=False, dual_stack=is_dual_stack(name)).close()
    return address[0]


def client_host(address: str) -> str:
    """Where a client on this machine reaches a server bound to ``address``: the loopback address of
    its family for a wildcard (0.0.0.0: 127.0.0.1, ``::``: ::1), else the address itself."""
    ip = ipaddress.ip_address(address)
    if not ip.is_unspecified:
        return address
    return "::1" if ip.version == 6 else LOOPBACK
