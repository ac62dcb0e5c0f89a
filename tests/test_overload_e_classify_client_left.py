"""A friendly classify request whose client hangs up is dropped, as a translation's is: it leaves the
image-decode queue at once, none of its images is decoded and it never reaches the model's queue
(before, it was decoded, queued and run for nobody, and counted a success); one that leaves while an
image of its decodes keeps its decode slot until that decode's thread returns (the thread cannot be
stopped: the slot freed at the hang-up let the next request decode beside it, past --image-decodes)."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serving.app import create_app
from serving.settings import Settings
from tests.repo_fixtures import LiveServer, build_classifier_repository
from tests.test_decode_g_image_slots import CLASSIFY, GatedDecoder, body, decoder, png  # noqa: F401
from tests.waiting import DEADLINE_S, eventually

MODEL = "lenet"


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    return build_classifier_repository(tmp_path_factory.mktemp("overload_e") / "repo")


def _raw_request(payload: dict) -> bytes:
    raw = json.dumps(payload).encode()
    head = f"POST {CLASSIFY} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    return head.encode() + f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw


def _one_decode_slot(repository):  # noqa: ANN001, ANN202
    """The gateway's app on ``repository`` with one image-decode slot, and its metrics."""
    app = create_app(Settings(model_repository=repository, grpc_port=0, image_decodes=1))
    return app, app.state.metrics


def test_a_classify_request_whose_client_leaves_while_it_waits_to_decode_is_dropped(
    repository,
    decoder,  # noqa: F811 - the gated decoder fixture
) -> None:
    app, metrics = _one_decode_slot(repository)
    waiting = lambda: len(app.state.image_decodes.waiting)  # noqa: E731
    with LiveServer(app) as live, ThreadPoolExecutor(1) as pool:
        staying = pool.submit(
            httpx.post, f"http://{live.url}{CLASSIFY}", json=body(png(GatedDecoder.LARGE)), timeout=DEADLINE_S
        )
        assert eventually(lambda: decoder.large_waiting == 1), "the staying request holds the decode slot"
        with socket.create_connection(("127.0.0.1", live.port), timeout=DEADLINE_S) as leaving:
            leaving.sendall(_raw_request(body(*[png(7)] * 8)))
            assert eventually(lambda: waiting() == 1), "the leaving request queued for a decode slot"
        left = eventually(lambda: waiting() == 0, timeout_s=DEADLINE_S / 3)  # within the decoder's gate
        assert left, "its client gone, it left the decode queue at once"
        decoder.permits.release()
        assert staying.result().status_code == 200
        assert eventually(
            lambda: metrics.sample("kiln_request_failures_total", model=MODEL, status="499") == 1
        )
    assert decoder.calls == 1, "none of the leaving request's images was decoded"
    assert metrics.sample("kiln_requests_total", model=MODEL, outcome="success") == 1
    assert metrics.sample("kiln_executed_requests_total", model=MODEL) == 1, "it never reached the model"
    assert metrics.sample("kiln_in_flight_requests", model=MODEL) == 0


def test_a_client_leaving_mid_decode_keeps_the_slot_until_its_decode_returns(
    repository,
    decoder,  # noqa: F811 - the gated decoder fixture
) -> None:
    app, metrics = _one_decode_slot(repository)
    slots = app.state.image_decodes

    def left() -> bool:
        return metrics.sample("kiln_request_failures_total", model=MODEL, status="499") == 1

    with LiveServer(app) as live, ThreadPoolExecutor(1) as pool:
        with socket.create_connection(("127.0.0.1", live.port), timeout=DEADLINE_S) as leaving:
            leaving.sendall(_raw_request(body(png(GatedDecoder.LARGE))))
            assert eventually(lambda: decoder.large_waiting == 1), "its image is decoding"
        assert eventually(left), "its client gone, the request ended as a 499"
        staying = pool.submit(
            httpx.post, f"http://{live.url}{CLASSIFY}", json=body(png(7)), timeout=DEADLINE_S
        )
        assert eventually(lambda: len(slots.waiting) == 1 or staying.done()), "the next request arrived"
        assert not staying.done(), "it decoded beside the departed request's decode, past --image-decodes"
        decoder.permits.release()  # the departed request's decode returns: its slot passes on
        assert staying.result().status_code == 200, staying.result().text
    assert decoder.most == 1, "never more decodes at once than --image-decodes"
    assert slots.free == 1 and not slots.waiting
    assert metrics.sample("kiln_requests_total", model=MODEL, outcome="success") == 1
    assert metrics.sample("kiln_requests_total", model=MODEL, outcome="failure") == 1
