"""Identifiers a client chooses (model names and versions in paths, refused paths, ids) come back
escaped: an answer stays valid JSON, a log line stays one printable line, and no identifier grows
the gateway's metrics."""

from __future__ import annotations

import logging
import socket

import httpx
import pytest

from serving.protocol.v2 import SHOWN_PATH_CHARS, shown_path
from tests.repo_fixtures import classifier_gateway

CONTROL = {chr(c) for c in range(0x20)} | {"\x7f"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with classifier_gateway(tmp_path_factory.mktemp("identifiers")) as live:
        yield live


def raw_request(live, target: str, method: str = "POST") -> bytes:
    """One request written byte for byte (an HTTP client would normalise the target), its whole answer."""
    host, port = live.url.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        sock.sendall(head.encode() + b"{}")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_refused_extension_path_is_echoed_as_the_client_wrote_it_in_one_printable_line(gateway, caplog):
    hostile = "a%0D%0AX-Evil:%201%00%1B[31m%3Fnext%23frag"
    with caplog.at_level(logging.INFO, logger="serving.app"):
        reply = httpx.post(f"http://{gateway.url}/v2/repository/models/{hostile}/load", json={})
    assert reply.status_code == 501, reply.text
    message = reply.json()["error"]
    assert message.startswith("/v2/repository/models/a%0D%0AX-Evil:%201%00%1B%5B31m%3Fnext%23frag/load: ")
    logged = [r.getMessage() for r in caplog.records if "/v2/repository/models/" in r.getMessage()]
    assert logged and not any(CONTROL & set(line) for line in logged), logged
    assert all(r.levelno < logging.ERROR for r in caplog.records)  # the client's choice, not a fault


def test_a_refused_path_of_60_kb_is_answered_with_its_start_only(gateway):
    # (a request line past --max-header-bytes, 64 KiB by default, is refused before any route: 414)
    answer = raw_request(gateway, "/v2/systemsharedmemory/region/" + "x" * 60_000 + "/status", "GET")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 501"), head
    assert len(body) < 1000 and b"x..." in body, body[:300]


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("/v2/logging", "/v2/logging"),
        ("/v2/models/a\r\nb/trace/setting", "/v2/models/a%0D%0Ab/trace/setting"),
        ("/v2/models/a?b#c/trace/setting", "/v2/models/a%3Fb%23c/trace/setting"),
        ("/v2/models/é\ufffd/trace/setting", "/v2/models/%C3%A9%EF%BF%BD/trace/setting"),
        ('/v2/models/a%b\\c"/trace/setting', "/v2/models/a%25b%5Cc%22/trace/setting"),
        ("/" + "y" * 300, "/" + "y" * (SHOWN_PATH_CHARS - 1) + "..."),
        ("/" + "y" * (SHOWN_PATH_CHARS - 2) + "\n", "/" + "y" * (SHOWN_PATH_CHARS - 2) + "..."),
    ],
)
def test_a_shown_path_is_printable_ascii_however_it_was_decoded(path, shown):
    assert shown_path(path) == shown


@pytest.mark.parametrize("path", ["/v2/models/resnet\t18/infer", "/v1/models/resnet\r18/classify"])
def test_a_refusal_for_a_name_with_a_control_character_is_not_counted_for_another_model(path) -> None:
    """``request.url.path`` drops a tab, CR or LF: a 413 for ``resnet%0918`` (no such model) was
    counted in ``kiln_request_failures_total{model="resnet18"}``."""
    from types import SimpleNamespace

    from starlette.requests import Request

    from serving.app import count_refusal

    refused: list[str] = []
    state = SimpleNamespace(
        repository=SimpleNamespace(names=lambda: ["resnet18"]),
        metrics=SimpleNamespace(refused=lambda name, exc, status, version="": refused.append(name)),
    )
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "app": SimpleNamespace(state=state),
        "headers": [],
    }
    count_refusal(Request(scope), ValueError("too large"), 413)
    assert refused == []
    count_refusal(Request({**scope, "path": path.replace("\t", "").replace("\r", "")}), ValueError("x"), 413)
    assert refused == ["resnet18"]  # the model's own refusal is still counted
