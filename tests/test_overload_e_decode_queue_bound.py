"""Friendly classify's queue for an image-decode slot is bounded by --max-queue-size: past it a request
is a 429 with Retry-After before any of its images is decoded. It was unbounded: under open-loop load
past what the decodes and the model served, ~1 600 requests queued there for seconds, each decoded only
to be refused by the model's full queue (or answered late)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serving.app import create_app
from serving.errors import Overloaded
from serving.protocol.image_decodes import DecodeSlots
from serving.settings import Settings
from tests.repo_fixtures import LiveServer, build_classifier_repository
from tests.test_decode_g_image_slots import CLASSIFY, GatedDecoder, body, decoder, png  # noqa: F401
from tests.waiting import DEADLINE_S, eventually

MODEL = "lenet"


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    return build_classifier_repository(tmp_path_factory.mktemp("overload_e_bound") / "repo")


def test_a_first_run_finding_the_decode_queue_full_is_a_429_while_a_later_run_still_queues() -> None:
    async def scenario() -> tuple[float, int]:
        slots = DecodeSlots(1, max_waiting=1, retry_after_s=2.5)
        await slots.acquire(first=True)  # a free slot: taken
        queued = asyncio.ensure_future(slots.acquire(first=True))
        await asyncio.sleep(0)  # it queues
        with pytest.raises(Overloaded) as refused:
            await slots.acquire(first=True)
        later_run = asyncio.ensure_future(slots.acquire())  # a request already decoding: never refused
        await asyncio.sleep(0)
        waiting = len(slots.waiting)
        for _ in range(2):
            slots.release()
        await asyncio.gather(queued, later_run)
        return refused.value.retry_after, waiting

    assert asyncio.run(scenario()) == (2.5, 2)


def test_an_unbounded_decode_queue_is_the_default_of_a_bare_slots_object() -> None:
    async def scenario() -> int:
        slots = DecodeSlots(1)
        await slots.acquire(first=True)
        waiters = [asyncio.ensure_future(slots.acquire(first=True)) for _ in range(5)]
        await asyncio.sleep(0)
        count = len(slots.waiting)
        for _ in waiters:
            slots.release()
        await asyncio.gather(*waiters)
        return count

    assert asyncio.run(scenario()) == 5


def test_a_classify_request_past_max_queue_size_waiting_to_decode_is_a_429_before_decoding(
    repository,
    decoder,  # noqa: F811 - the gated decoder fixture
) -> None:
    settings = Settings(model_repository=repository, grpc_port=0, image_decodes=1, max_queue_size=8)
    app = create_app(settings)
    assert app.state.image_decodes.max_waiting == 8, "the decode queue is bounded by --max-queue-size"
    # one waiting request fills it: set here, not through --max-queue-size 1, which would also bound the
    # model's queue, where the two admitted requests may meet (a 429 of its own for the second, by race)
    app.state.image_decodes.max_waiting = 1
    metrics = app.state.metrics
    with LiveServer(app) as live, ThreadPoolExecutor(2) as pool:

        def post(payload: dict) -> httpx.Response:
            return httpx.post(f"http://{live.url}{CLASSIFY}", json=payload, timeout=DEADLINE_S)

        holding = pool.submit(post, body(png(GatedDecoder.LARGE)))
        assert eventually(lambda: decoder.large_waiting == 1), "the first request holds the decode slot"
        queued = pool.submit(post, body(png(7)))
        assert eventually(lambda: len(app.state.image_decodes.waiting) == 1), "the second waits to decode"
        refused = post(body(*[png(9)] * 4))
        decoder.permits.release()
        assert [holding.result().status_code, queued.result().status_code] == [200, 200]
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == "1"
    assert "waiting to decode" in refused.json()["error"]
    assert decoder.calls == 2, "none of the refused request's images was decoded"
    assert metrics.sample("kiln_request_failures_total", model=MODEL, status="429") == 1
    assert metrics.sample("kiln_requests_total", model=MODEL, outcome="failure") == 1
    assert metrics.sample("kiln_requests_total", model=MODEL, outcome="success") == 2
