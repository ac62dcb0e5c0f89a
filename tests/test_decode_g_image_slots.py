"""Friendly classify's image decoding is bounded: at most --image-decodes images decode at once in a
process, requests take turns (a small request is answered while large ones decode), and a request's
images over --max-request-pixels in all are refused from their headers before any is decoded."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from serving.app import create_app
from serving.protocol import image_decodes, images, v1
from serving.protocol.image_decodes import DecodeSlots, run_ends
from serving.settings import Settings
from tests.repo_fixtures import SIZE, LiveServer, build_classifier_repository
from tests.waiting import DEADLINE_S, eventually

CLASSIFY = "/v1/models/lenet/classify"


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    return build_classifier_repository(tmp_path_factory.mktemp("decode_g") / "repo")


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((SIZE, SIZE), value, dtype=np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


def body(*blobs: bytes) -> dict:
    return {"images": [base64.b64encode(b).decode() for b in blobs]}


class GatedDecoder:
    """The real decoder, but each image of value LARGE waits for a permit the test hands out; counts the
    decodes running at once."""

    LARGE = 200

    def __init__(self) -> None:
        self.real = images.decode_image
        self.large = png(self.LARGE)
        self.permits = threading.Semaphore(0)
        self.lock = threading.Lock()
        self.running = self.most = self.calls = 0
        self.large_waiting = 0

    def __call__(self, data: bytes, preprocessing: dict, *, index: int, max_pixels: int) -> np.ndarray:
        large = data == self.large
        with self.lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
            self.large_waiting += large
        try:
            if large:
                assert self.permits.acquire(timeout=DEADLINE_S), "the test never let this decode finish"
            return self.real(data, preprocessing, index=index, max_pixels=max_pixels)
        finally:
            with self.lock:
                self.running -= 1
                self.large_waiting -= large


@pytest.fixture
def decoder(monkeypatch: pytest.MonkeyPatch) -> GatedDecoder:
    gated = GatedDecoder()
    monkeypatch.setattr(images, "decode_image", gated)
    monkeypatch.setattr(v1, "decode_image", gated, raising=False)  # where a route calls it by name
    monkeypatch.setattr(image_decodes, "RUN_PIXELS", 1)  # one image a run, as 4096x4096 images are
    return gated


def test_a_small_request_is_answered_while_large_requests_hold_every_decode_slot(repository, decoder):
    app = create_app(Settings(model_repository=repository, grpc_port=0, image_decodes=2))
    large = body(*[png(GatedDecoder.LARGE)] * 6)
    with LiveServer(app) as live, ThreadPoolExecutor(3) as pool:

        def post(json: dict) -> httpx.Response:
            return httpx.post(f"http://{live.url}{CLASSIFY}", json=json, timeout=DEADLINE_S)

        big = [pool.submit(post, large) for _ in range(2)]
        assert eventually(lambda: decoder.large_waiting == 2), "both large requests decoding"
        small = pool.submit(post, body(png(7)))
        assert eventually(lambda: len(app.state.image_decodes.waiting) == 1), "the small request queued"
        decoder.permits.release()  # one large image done: its slot goes to the small request
        assert small.result().status_code == 200, small.result().text
        assert not any(f.done() for f in big), "the large requests are still decoding"
        assert decoder.most == 2
        decoder.permits.release(11)  # the other large images
        assert [f.result().status_code for f in big] == [200, 200]
    assert decoder.most == 2, "never more decodes at once than --image-decodes"
    assert decoder.calls == 6 + 6 + 1


def test_images_over_the_request_pixel_budget_are_a_413_naming_it_before_any_is_decoded(repository, decoder):
    settings = Settings(model_repository=repository, grpc_port=0, max_request_pixels=3 * SIZE * SIZE)
    with (
        LiveServer(create_app(settings)) as live,
        httpx.Client(base_url=f"http://{live.url}", timeout=DEADLINE_S) as client,
    ):
        refused = client.post(CLASSIFY, json=body(*[png(7)] * 4))
        assert decoder.calls == 0, "refused from the headers, not after decoding"
        served = client.post(CLASSIFY, json=body(*[png(7)] * 3))
    assert refused.status_code == 413
    error = refused.json()["error"]
    assert f"4 images declaring {4 * SIZE * SIZE} pixels in all" in error
    assert f"the {3 * SIZE * SIZE} pixels one request may decode" in error
    assert "--max-request-pixels" in error and "KILN_MAX_REQUEST_PIXELS" in error
    assert served.status_code == 200, served.text


def test_the_request_pixel_budget_is_sixteen_images_at_the_image_limit_where_unset():
    limits = v1.image_limits(Settings(max_image_pixels=1000))
    assert (limits.max_pixels, limits.budget) == (1000, 16_000)
    assert v1.image_limits(Settings(max_request_pixels=5)).budget == 5


def test_a_released_slot_goes_to_the_longest_waiter_not_to_a_task_asking_again():
    async def scenario() -> list[str]:
        slots, order = DecodeSlots(1), []

        async def run(name: str, runs: int) -> None:
            for i in range(runs):
                await slots.acquire()
                order.append(f"{name}{i}")
                await asyncio.sleep(0)  # let the others queue while this run holds the slot
                slots.release()

        await asyncio.gather(run("big", 3), run("small", 1))
        return order

    assert asyncio.run(scenario()) == ["big0", "small0", "big1", "big2"]


def test_a_cancelled_waiter_neither_keeps_nor_loses_a_slot():
    async def scenario() -> int:
        slots = DecodeSlots(1)
        await slots.acquire()
        waiter = asyncio.ensure_future(slots.acquire())
        await asyncio.sleep(0)
        slots.release()  # handed to the waiter, which is cancelled before it runs
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.wait_for(slots.acquire(), DEADLINE_S)  # the slot was passed on, not lost
        return slots.free

    assert asyncio.run(scenario()) == 0


@pytest.mark.parametrize(
    ("pixels", "ends"),
    [([5], [1]), ([1, 1, 1, 1], [2, 4]), ([3, 1, 1], [1, 3]), ([1, 5, 1], [1, 2, 3]), ([2, 2], [1, 2])],
)
def test_a_requests_images_are_decoded_in_runs_of_at_most_the_run_pixels_or_one_image(pixels, ends):
    assert run_ends(pixels, 2) == ends
