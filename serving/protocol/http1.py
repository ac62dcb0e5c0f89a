"""The gateway's HTTP/1.1 protocol: uvicorn's httptools protocol with each response written to the
socket once (:mod:`serving.protocol.http1_writes`), a request's head, reads and a client's unread answers
bounded, and the app's lean routes answered without uvicorn's ASGI cycle where the protocol can take a
request whole: ~0.06-0.1 ms less of event loop a translate request. The protocol itself is
:mod:`serving.protocol.http1_httptools`; :func:`http_protocol` configures it for one server, or picks
uvicorn's own protocol where httptools is not installed.
"""

from __future__ import annotations

from typing import Any

from serving.protocol.http1_heads import MAX_HEAD_BYTES, READ_TIMEOUT_S
from serving.protocol.send_watch import SEND_TIMEOUT_S


def http_protocol(
    read_timeout_s: float = READ_TIMEOUT_S,
    max_head_bytes: int = MAX_HEAD_BYTES,
    send_timeout_s: float = SEND_TIMEOUT_S,
) -> Any:
    """The ``http`` argument of ``uvicorn.Config``: httptools' protocol with coalesced writes where
    httptools is installed (``uvicorn[standard]``), else uvicorn's own choice (``"auto"``, h11). Each
    call gives its own subclass of :class:`~serving.protocol.http1_httptools.CoalescingHttpToolsProtocol`
    that sets only these limits (class attributes, read per request as the base's defaults would be).

    It bounds what one connection's request may take before the app sees it, which uvicorn does not
    with httptools (its h11 protocol caps a head at 16 KiB, and neither has a read timeout): a request
    line longer than ``max_head_bytes`` is answered 414 and a head longer than that 431, counted from its
    first byte, whether it arrives at once or not (its body never counts), where uvicorn buffered a
    header without end (600 MB of headers on one connection grew the gateway by 700 MB); a head that has
    not arrived ``read_timeout_s`` after its first byte, or a body that pauses longer than that between
    two reads while the gateway is reading it, is answered 408 (slowloris: each such connection was held
    for as long as its client liked). Each closes the connection (a head refused while requests before it
    are answered: once they are). A client that reads none of its answers for ``send_timeout_s`` while
    they wait on it has its connection aborted (:mod:`serving.protocol.send_watch`). A head that
    httptools' parser takes but RFC 9112 does not is refused the same way
    (:func:`~serving.protocol.http1_heads.framing_refusal`: 505, 400 for the Host, 501 for a transfer
    coding besides chunked), and an ``Upgrade`` the gateway does not take leaves the connection in
    HTTP/1.1, the request's body its own.

    It also answers the app's lean routes (:mod:`serving.protocol.lean`) without uvicorn's ASGI cycle:
    a ``POST`` to one of them, with a Content-Length within the body limit, no ``Expect`` and no
    request of the connection still being answered, has its body gathered by the protocol and is
    answered by :meth:`~serving.protocol.lean.LeanRoutes.respond` (the same endpoint and error
    handlers), its response written with uvicorn's default headers in one write; then the protocol
    goes on as after any response (keep-alive timer, the next pipelined request). Skipped that way:
    the ASGI task's receive/send messages, the cycle's header checks and Starlette's entry (uvicorn's
    proxy-headers layer still gives the scope the client the access line names); everything else, and
    every request while the app has no lean layer (FastAPI's telemetry on), goes through uvicorn."""
    try:
        import httptools  # noqa: F401 - only whether it is there
    except ImportError:  # httptools missing: h11, as uvicorn would pick
        return "auto"
    from serving.protocol.http1_httptools import CoalescingHttpToolsProtocol  # any other failure: raised

    limits = {"read_timeout": read_timeout_s, "max_head": max_head_bytes, "send_timeout": send_timeout_s}
    return type(CoalescingHttpToolsProtocol.__name__, (CoalescingHttpToolsProtocol,), limits)
