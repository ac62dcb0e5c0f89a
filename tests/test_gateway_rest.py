"""The friendly REST API classifies PNG/JPEG uploads, and concurrent requests batch without mixing rows."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import re
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from serving.app import create_app
from serving.protocol import limits
from serving.settings import Settings
from tests.repo_fixtures import LABELS, SIZE, LiveServer, build_classifier_repository


@pytest.fixture(scope="session")
def repository(tmp_path_factory):
    return build_classifier_repository(tmp_path_factory.mktemp("rest") / "repo")


@pytest.fixture(scope="module")
def server(repository):
    settings = Settings(model_repository=repository, grpc_port=0, max_queue_size=1000)
    with LiveServer(create_app(settings)) as live:
        yield live


def png(seed: int, size: int = SIZE, mode: str = "L", fmt: str = "PNG") -> bytes:
    channels = 1 if mode == "L" else 3
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, channels), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(buffer, fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_models_are_listed_with_task_inputs_and_label_count(server):
    models = httpx.get(f"http://{server.url}/v1/models").json()
    assert models == [
        {
            "name": "lenet",
            "task": "classify",
            "ready": True,
            "versions": ["1"],
            "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, SIZE, SIZE, 1]}],
            "labels": len(LABELS),
        }
    ]


def test_base64_and_multipart_uploads_get_the_same_ranked_labels(server):
    images = [png(1), png(2, size=20, mode="RGB", fmt="JPEG")]  # converted to grey and resized to the model
    url = f"http://{server.url}/v1/models/lenet/classify"
    by_json = httpx.post(url, json={"images": [b64(i) for i in images], "top_k": 2})
    files = [("files", (f"{i}.img", data)) for i, data in enumerate(images)]
    by_form = httpx.post(url, files=files, data={"top_k": "2"})
    assert by_json.status_code == by_form.status_code == 200, (by_json.text, by_form.text)
    predictions = by_json.json()["predictions"]
    assert predictions == by_form.json()["predictions"]
    assert len(predictions) == 2 and all(len(p) == 2 for p in predictions)
    for ranked in predictions:
        assert ranked[0]["score"] >= ranked[1]["score"]
        assert ranked[0]["label"] == LABELS[ranked[0]["index"]]
    assert sum(
        p["score"]
        for p in httpx.post(url, json={"images": [b64(images[0])], "top_k": 3}).json()["predictions"][0]
    ) == pytest.approx(1.0, abs=1e-5)


def test_a_whole_number_written_as_a_float_is_that_integer_and_a_fraction_is_refused(server):
    """JSON has one number type and the published schema's "integer" admits 2.0 (JSON Schema), as
    clients that write every number as a float send it; 2.5, true and "2" are still a 422."""
    url = f"http://{server.url}/v1/models/lenet/classify"
    image = b64(png(3))
    as_int = httpx.post(url, json={"images": [image], "top_k": 2})
    as_float = httpx.post(url, json={"images": [image], "top_k": 2.0})
    assert as_int.status_code == as_float.status_code == 200, (as_int.text, as_float.text)
    assert as_float.json() == as_int.json() and len(as_int.json()["predictions"][0]) == 2
    for refused in (2.5, True, "2"):
        response = httpx.post(url, json={"images": [image], "top_k": refused})
        assert response.status_code == 422 and "top_k" in response.json()["error"], response.text


def test_more_images_than_max_batch_size_are_split_and_answered_in_order(server):
    images = [png(seed) for seed in range(11)]
    url = f"http://{server.url}/v1/models/lenet/classify"
    together = httpx.post(url, json={"images": [b64(i) for i in images], "top_k": 1}).json()["predictions"]
    alone = [
        httpx.post(url, json={"images": [b64(i)], "top_k": 1}).json()["predictions"][0] for i in images[:3]
    ]
    assert len(together) == 11
    assert together[:3] == alone


def test_250_concurrent_requests_are_all_answered_with_their_own_result_and_batched(server):
    images = [png(seed) for seed in range(50)]
    url = f"http://{server.url}/v1/models/lenet/classify"
    single = [httpx.post(url, json={"images": [b64(i)], "top_k": 3}).json()["predictions"][0] for i in images]

    async def burst():
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(limits=limits, timeout=120) as client:
            tasks = [client.post(url, json={"images": [b64(images[k % 50])], "top_k": 3}) for k in range(250)]
            return await asyncio.gather(*tasks)

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 250
    for k, response in enumerate(responses):
        got, want = response.json()["predictions"][0], single[k % 50]
        assert [p["index"] for p in got] == [p["index"] for p in want]
        np.testing.assert_allclose(
            [p["score"] for p in got], [p["score"] for p in want], rtol=1e-5, atol=1e-6
        )
    metrics = httpx.get(f"http://{server.url}/metrics").text
    count = _sample(metrics, 'kiln_batch_size_count{model="lenet"}')
    total = _sample(metrics, 'kiln_batch_size_sum{model="lenet"}')
    assert total / count > 1.0, "concurrent requests should have been merged into batches > 1"
    assert _sample(metrics, 'kiln_requests_total{model="lenet",outcome="success",version="1"}') >= 300
    assert 'kiln_queue_latency_seconds_bucket{le="0.0005",model="lenet"}' in metrics
    assert 'kiln_in_flight_requests{model="lenet"} 0.0' in metrics
    assert re.search(r'^kiln_worker_info\{pid="\d+",worker="0"\} 1\.0$', metrics, re.MULTILINE)


def test_openapi_docs_describe_the_friendly_and_kserve_routes(server):
    schema = httpx.get(f"http://{server.url}/openapi.json").json()
    assert "/v1/models/{name}/classify" in schema["paths"]
    assert "/v2/models/{name}/infer" in schema["paths"]
    assert httpx.get(f"http://{server.url}/docs").status_code == 200


def _sample(text: str, key: str) -> float:
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{key} not in /metrics")


def test_objects_loaded_at_startup_are_frozen_out_of_the_collector_until_shutdown(repository):
    import gc

    from fastapi.testclient import TestClient

    gc.unfreeze()  # process-wide: another gateway of this module may be running
    with TestClient(create_app(Settings(model_repository=repository, grpc_port=0))) as client:
        assert client.get("/v2/health/ready").status_code == 200
        assert gc.get_freeze_count() > 1000  # the loaded gateway: modules, sessions, routes
    assert gc.get_freeze_count() == 0


def test_a_classify_request_over_max_batch_size_counts_as_one_request(server):
    """17 images take three max_batch_size (8) runs; the request metrics see one request."""

    def count() -> float:
        return server.app.state.metrics.sample("kiln_requests_total", model="lenet", outcome="success") or 0.0

    before = count()
    reply = httpx.post(
        f"http://{server.url}/v1/models/lenet/classify", json={"images": [b64(png(k)) for k in range(17)]}
    )
    assert reply.status_code == 200 and len(reply.json()["predictions"]) == 17
    assert count() == before + 1


# --- Content-Encoding: the friendly routes read gzip and deflate as KServe v2 infer does -------------


def _packed(body: bytes, encoding: str) -> bytes:
    return {"gzip": gzip.compress, "deflate": zlib.compress, "identity": bytes}[encoding](body)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "identity"])
def test_a_compressed_classify_body_json_or_multipart_gets_the_answer_its_plain_body_gets(server, encoding):
    url = f"http://{server.url}/v1/models/lenet/classify"
    images = [png(5), png(6)]
    by_json = httpx.Request("POST", url, json={"images": [b64(i) for i in images], "top_k": 3})
    files = [("files", (f"{i}.png", data)) for i, data in enumerate(images)]
    by_form = httpx.Request("POST", url, files=files, data={"top_k": "3"})
    for plain in (by_json, by_form):
        body, content_type = plain.read(), plain.headers["content-type"]
        want = httpx.post(url, content=body, headers={"content-type": content_type})
        got = httpx.post(
            url,
            content=_packed(body, encoding),
            headers={"content-type": content_type, "content-encoding": encoding},
        )
        assert want.status_code == got.status_code == 200, (want.text, got.text)
        assert got.json() == want.json()


def test_a_compressed_translate_body_is_parsed_as_its_plain_body(server):
    """The body is read before the model's task is checked: a classifier's 400 for translating says the
    gzip body was inflated and parsed (it was 'not valid UTF-8')."""
    url = f"http://{server.url}/v1/models/lenet/translate"
    body = json.dumps({"texts": ["un deux trois"]}).encode()
    plain = httpx.post(url, content=body)
    packed = httpx.post(url, content=gzip.compress(body), headers={"content-encoding": "GZip"})
    assert plain.status_code == packed.status_code == 400
    assert packed.json() == plain.json() and "cannot translate" in plain.json()["error"]


def test_a_classify_body_inflating_past_what_the_loop_takes_is_inflated_in_a_thread(
    server, inflation_threads
):
    """Inflated off the event loop (zlib lets go of the GIL), so the worker's other requests go on."""
    threads = inflation_threads
    url = f"http://{server.url}/v1/models/lenet/classify"
    body = json.dumps({"images": [b64(png(8))], "top_k": 2}).encode() + b" " * limits.LOOP_INFLATE_BYTES
    plain = httpx.post(url, content=body, timeout=60)
    packed = httpx.post(url, content=gzip.compress(body), headers={"content-encoding": "gzip"}, timeout=60)
    assert plain.status_code == packed.status_code == 200, (plain.text, packed.text)
    assert packed.json() == plain.json()
    assert threads and server.thread.ident not in threads


@pytest.mark.parametrize("route", ["classify", "translate"])
def test_a_content_encoding_the_gateway_does_not_read_is_refused_naming_those_it_reads(server, route):
    """'br' on a plain body was served as if plain; now the answer KServe v2 infer gives it."""
    url = f"http://{server.url}/v1/models/lenet/{route}"
    body = {"images": [b64(png(7))]} if route == "classify" else {"texts": ["un"]}
    reply = httpx.post(url, json=body, headers={"content-encoding": "br"})
    infer = httpx.post(
        f"http://{server.url}/v2/models/lenet/infer", content=b"{}", headers={"content-encoding": "br"}
    )
    assert reply.status_code == infer.status_code == 415, reply.text  # RFC 9110: with Accept-Encoding
    assert reply.headers["accept-encoding"] == infer.headers["accept-encoding"] == "gzip, deflate"
    assert reply.json() == infer.json()
    assert "'br'" in reply.json()["error"] and "gzip or deflate" in reply.json()["error"]
