"""Free TCP ports on 127.0.0.1, none handed out twice in a process: Triton's three services draw theirs
here, as do the gateways, baselines and balancers the bench, the demo and the tests start beside it
(most of which never start Triton, hence a module apart from :mod:`serving.triton.server`)."""

from __future__ import annotations

import socket
import threading

_HANDED_OUT: set[int] = set()  # ports free_port returned in this process: never returned twice
_HANDED_OUT_LOCK = threading.Lock()


def held_port(reuse_port: bool = False) -> socket.socket:
    """A socket bound to a 127.0.0.1 port no earlier call here returned; the caller owns (and closes) it.

    The kernel may hand the same port to two successive bind-to-0-then-close calls, and a server
    given two equal ports cannot start. Remembering what was handed out keeps every port distinct;
    servers that accept a bound socket (uvicorn) take this one and leave no window at all. With
    ``reuse_port`` the socket is bound with SO_REUSEPORT, so a server that binds its own socket the
    same way (the gateway's gRPC server with ``reuse_port``) can take the port while this one, bound
    but never listening, keeps everyone else off it: no window either.
    """
    with _HANDED_OUT_LOCK:
        rejected: list[socket.socket] = []  # held open so the next bind cannot return them again
        try:
            while True:
                sock = socket.socket()
                try:
                    if reuse_port:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    sock.bind(("127.0.0.1", 0))
                except OSError:
                    sock.close()
                    raise
                port = sock.getsockname()[1]
                if port not in _HANDED_OUT:
                    _HANDED_OUT.add(port)
                    return sock
                rejected.append(sock)
        finally:
            for sock in rejected:
                sock.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that no earlier call here returned."""
    with held_port() as sock:
        return sock.getsockname()[1]
