"""A request's deadline (--request-timeout-s, from its body read) bounds every wait it makes before the
model, not only the model's queue: a friendly classify request waiting for an image-decode slot, or for
its images to decode, and a large JSON body waiting for the JSON parse process, are a 504 at their
deadline naming what they waited for, their place in the queue given up at once (a decode already
running finishes on its thread, its slot held till then); the model is given what the deadline left.
Before, the deadline started only at the model's queue: a request waited for a slot as long as the
requests before it took, then had the whole --request-timeout-s again."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from serving.app import create_app
from serving.errors import Deadline, DeadlineExceeded
from serving.protocol.json_offload import JsonOffload
from serving.settings import Settings
from tests.repo_fixtures import SIZE, LiveServer, build_classifier_repository
from tests.test_decode_g_image_slots import CLASSIFY, GatedDecoder, body, decoder, png  # noqa: F401
from tests.test_loopblock_r_classification import _body as v2_body
from tests.waiting import DEADLINE_S, eventually

MODEL = "lenet"


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    return build_classifier_repository(tmp_path_factory.mktemp("hc2") / "repo")


def _post(live: LiveServer, payload: dict) -> httpx.Response:
    return httpx.post(f"http://{live.url}{CLASSIFY}", json=payload, timeout=DEADLINE_S)


def test_a_request_whose_deadline_passes_while_it_waits_for_a_decode_slot_is_a_504_naming_that_wait(
    repository,
    decoder,  # noqa: F811 - the gated decoder fixture
) -> None:
    app = create_app(Settings(model_repository=repository, grpc_port=0, image_decodes=1))
    slots, metrics = app.state.image_decodes, app.state.metrics
    with LiveServer(app) as live, ThreadPoolExecutor(1) as pool:
        first = pool.submit(_post, live, body(png(GatedDecoder.LARGE)))
        assert eventually(lambda: decoder.large_waiting == 1), "the first request holds the decode slot"
        app.state.settings.request_timeout_s = 0.2  # the second request's deadline (the first has 30 s)
        late = _post(live, body(png(7)))
        assert late.status_code == 504, late.text
        error = late.json()["error"]
        assert "image decoding: the request's 0.2 s deadline (--request-timeout-s)" in error
        assert "waited for an image-decode slot (0 requests queued before it" in error
        assert not slots.waiting, "it left the slot queue at its deadline"
        assert not first.done(), "the first request still decodes"
        decoder.permits.release()
        assert first.result().status_code == 200, first.result().text
    assert decoder.calls == 1, "the late request's image was never decoded"
    assert slots.free == 1 and not slots.waiting
    assert metrics.sample("kiln_request_failures_total", model=MODEL, status="504") == 1
    assert metrics.sample("kiln_requests_total", model=MODEL, outcome="failure") == 1
    assert metrics.sample("kiln_requests_total", model=MODEL, outcome="success") == 1


def test_a_request_whose_deadline_passes_while_its_image_decodes_keeps_its_slot_till_the_decode_returns(
    repository,
    decoder,  # noqa: F811 - the gated decoder fixture
) -> None:
    settings = Settings(model_repository=repository, grpc_port=0, image_decodes=1, request_timeout_s=0.2)
    app = create_app(settings)
    slots = app.state.image_decodes
    with LiveServer(app) as live:
        late = _post(live, body(png(GatedDecoder.LARGE), png(7)))
        assert late.status_code == 504, late.text
        assert "while it waited for its images to decode (0 of 2 decoded)" in late.json()["error"]
        # its thread may reach the decoder after the 504 (a loaded machine): the slot is held till then
        assert eventually(lambda: decoder.large_waiting == 1), "its decode runs on"
        assert slots.free == 0, "its decode runs on, holding the slot"
        decoder.permits.release()
        assert eventually(lambda: slots.free == 1), "the slot came back when the decode returned"
        settings.request_timeout_s = DEADLINE_S  # the next request's: answered, however loaded the machine
        assert _post(live, body(png(7))).status_code == 200
    assert not slots.waiting


def test_the_model_is_given_what_the_deadline_left_after_the_decode_slot_wait(
    repository,
    decoder,  # noqa: F811 - the gated decoder fixture
) -> None:
    app = create_app(Settings(model_repository=repository, grpc_port=0, image_decodes=1, request_timeout_s=5))
    given: list[float | None] = []
    with LiveServer(app) as live, ThreadPoolExecutor(2) as pool:
        backend = app.state.backend
        real = backend.infer

        def infer(request):  # noqa: ANN001, ANN202
            given.append(request.deadline_s)
            return real(request)

        backend.infer = infer
        first = pool.submit(_post, live, body(png(GatedDecoder.LARGE)))
        assert eventually(lambda: decoder.large_waiting == 1)
        second = pool.submit(_post, live, body(png(7)))
        assert eventually(lambda: len(app.state.image_decodes.waiting) == 1), "the second request queued"
        queued = time.monotonic()
        while time.monotonic() - queued < 0.3:  # the slot wait the model's deadline must not get back
            assert not second.done()
            time.sleep(0.02)
        decoder.permits.release()
        assert first.result().status_code == 200 and second.result().status_code == 200
    assert len(given) == 2 and all(left is not None and left <= 5 for left in given)
    assert given[1] <= 5 - 0.3, f"the model was given {given[1]} s of a 5 s deadline after a 0.3 s wait"


class _StuckPool:
    """A JSON helper pool whose parses never finish: each body stays queued there."""

    def __init__(self) -> None:
        self.works: list[Future] = []

    def submit(self, fn, *args) -> Future:  # noqa: ANN001
        self.works.append(Future())
        return self.works[-1]

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        for work in self.works:
            work.cancel()


def test_a_large_json_body_past_its_deadline_in_the_parse_process_queue_is_a_504_and_dropped_there():
    async def scenario() -> tuple[DeadlineExceeded, JsonOffload, _StuckPool]:
        offload, pool = JsonOffload(offload_bytes=1), _StuckPool()
        offload._pool = pool  # a helper busy with bodies before it
        with pytest.raises(DeadlineExceeded) as refused:  # (wait_for: a test that fails, never hangs)
            await asyncio.wait_for(offload.call(1000, len, b"{}", deadline=Deadline.from_now(0.05)), 2.0)
        await asyncio.sleep(0)  # the cancelled parse's callbacks
        return refused.value, offload, pool

    error, offload, pool = asyncio.run(scenario())
    assert error.status == 504
    assert error.message.startswith("JSON parsing: the request's 0.05 s deadline (--request-timeout-s)")
    assert "waited for the JSON parse process (1000 bytes of JSON, 0 bodies before it there)" in error.message
    assert pool.works[0].cancelled(), "its body was dropped from the helper's queue"
    assert not offload._waiting


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v2/models/lenet/infer", lambda: {"inputs": v2_body(1, 1)["inputs"]}),
        ("/v2/models/lenet/generate", lambda: {"images": np.zeros(SIZE * SIZE, dtype=np.uint8).tolist()}),
        (CLASSIFY, lambda: body(*[png(7)] * 8)),
    ],
    ids=["infer", "generate", "classify"],
)
def test_a_route_s_large_json_body_past_its_deadline_waiting_for_the_parse_process_is_a_504(
    repository, path, payload
) -> None:
    settings = Settings(
        model_repository=repository, grpc_port=0, json_offload_bytes=100, request_timeout_s=0.2
    )
    app = create_app(settings)
    stuck = app.state.json_offload._pool = _StuckPool()  # the helper busy with the bodies before it
    with LiveServer(app) as live:
        late = httpx.post(f"http://{live.url}{path}", json=payload(), timeout=DEADLINE_S)
        assert late.status_code == 504, late.text
        assert "JSON parsing: the request's 0.2 s deadline (--request-timeout-s)" in late.json()["error"]
        assert eventually(lambda: stuck.works[0].cancelled()), "its body was dropped from the helper's queue"
        assert not app.state.json_offload._waiting
    assert app.state.metrics.sample("kiln_request_failures_total", model=MODEL, status="504") == 1
