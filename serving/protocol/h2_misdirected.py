"""What the gRPC port tells a client that did not begin HTTP/2: a port or protocol mixed up.

Users swap the gateway's ports (Triton's 8000 HTTP / 8001 gRPC convention), curl the gRPC port, point
an HTTP/1.1 client or a TLS client at it, or put a balancer that sends a PROXY protocol header in front
of it. The server used to write its SETTINGS and close: curl said "Received HTTP/0.9 when not allowed",
tritonclient.http "Expected HTTP/, RTSP/ or ICE/", and nothing named the mistake. Now an HTTP/1.x
request gets an HTTP/1.1 505 whose JSON error (what the HTTP port's errors look like, and what
tritonclient.http shows) names the port to use; anything else gets the server's SETTINGS and a GOAWAY
whose debug data says what arrived (a TLS client still reports "wrong version number"), and the log
says the same. (The HTTP port answers HTTP/2 with a 505 naming --grpc-port, and names TLS and PROXY
headers in its refusal: http1_httptools.py, :func:`not_http1`.)
"""

from __future__ import annotations

import json
import re

HTTP1_ON_GRPC = (
    "this is the gateway's gRPC port, which speaks gRPC over HTTP/2 only: HTTP/1.1 requests "
    "(REST, KServe v2 over HTTP) belong on its HTTP port (--http-port, 8000 by default)"
)
TLS_ON_GRPC = (
    "a TLS handshake on the gateway's gRPC port, which serves plaintext HTTP/2: connect without TLS "
    "(grpc.insecure_channel, tritonclient ssl=False) or terminate TLS in front of the gateway"
)
PROXY_ON_GRPC = (
    "a PROXY protocol header on the gateway's gRPC port, which does not take PROXY protocol: "
    "turn it off in the balancer (haproxy: no send-proxy on this server)"
)
NO_PREFACE = "no HTTP/2 connection preface: the gateway's gRPC port speaks gRPC over HTTP/2 (prior knowledge)"

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# an HTTP/1.x request line's start: a method token, then a space (RFC 9112 3)
REQUEST_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32} ")


def misdirected(data: bytes) -> tuple[str, bytes | None]:
    """What ``data``, a connection's first bytes that are not the HTTP/2 preface, is (for the log and
    a GOAWAY's debug data), and the HTTP/1.1 answer to send where it is an HTTP/1.x request (None:
    answer with GOAWAY)."""
    if data.startswith((b"PROXY ", PROXY_V2_SIGNATURE)):
        return PROXY_ON_GRPC, None
    if data[:2] == b"\x16\x03":  # a TLS record of type handshake: a ClientHello
        return TLS_ON_GRPC, None
    if REQUEST_LINE.match(data):
        method = data.split(b" ", 1)[0].decode("ascii")
        return f"an HTTP/1.x request ({method}): {HTTP1_ON_GRPC}", http1_answer(method == "HEAD")
    return NO_PREFACE, None


TLS_ON_HTTP = (
    "a TLS handshake on the gateway's HTTP port, which serves plaintext HTTP/1.1: use http://, or "
    "terminate TLS in front of the gateway"
)
PROXY_ON_HTTP = (
    "a PROXY protocol header on the gateway's HTTP port, which does not take PROXY protocol: turn it "
    "off in the balancer (haproxy: no send-proxy on this server)"
)


def not_http1(data: bytes) -> str | None:
    """What the HTTP port's log and refusal say of a connection's first bytes that its parser refused:
    TLS or a PROXY header, named (llhttp said "Invalid method encountered"); None for anything else."""
    if data[:2] == b"\x16\x03":
        return TLS_ON_HTTP
    if data.startswith((b"PROXY ", PROXY_V2_SIGNATURE)):
        return PROXY_ON_HTTP
    return None


def http1_answer(head: bool = False) -> bytes:
    """The HTTP/1.1 505 naming the HTTP port, its body left out for a HEAD request."""
    body = json.dumps({"error": HTTP1_ON_GRPC}).encode()
    lines = [
        "HTTP/1.1 505 HTTP Version Not Supported",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else body)
