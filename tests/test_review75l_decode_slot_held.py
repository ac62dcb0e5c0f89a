"""A friendly classify request whose client leaves while one of its images decodes keeps its
image-decode slot until that decode's thread returns: the thread cannot be stopped, so the slot freed at
the hang-up let the next request decode beside it, and clients timing out under load (the case the
client-left watch was added for) ran more decodes at once than --image-decodes."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serving.app import create_app
from serving.settings import Settings
from tests.repo_fixtures import LiveServer, build_classifier_repository
from tests.test_decode_g_image_slots import CLASSIFY, GatedDecoder, body, decoder, png  # noqa: F401
from tests.test_overload_e_classify_client_left import _raw_request
from tests.waiting import DEADLINE_S, eventually

MODEL = "lenet"


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    return build_classifier_repository(tmp_path_factory.mktemp("review75l") / "repo")


def test_a_client_leaving_mid_decode_keeps_the_slot_until_its_decode_returns(
    repository,
    decoder,  # noqa: F811 - the gated decoder fixture
) -> None:
    app = create_app(Settings(model_repository=repository, grpc_port=0, image_decodes=1))
    metrics = app.state.metrics
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
