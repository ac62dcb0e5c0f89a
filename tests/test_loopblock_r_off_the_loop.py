"""Work a legal request asks for that held the gateway's event loop, every other request waiting: the
JSON helper process's start (on the first large body) and the OpenAPI schema's first build (``/docs``)
run on a thread. Each test records where the work ran: with no running event loop in its thread."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ProcessPoolExecutor

from fastapi.testclient import TestClient

from serving import app as gateway_app
from serving.app import create_app
from serving.protocol import json_offload
from serving.protocol.json_offload import JsonOffload
from serving.settings import Settings


def on_a_running_loop() -> bool:
    """Whether the caller runs on a thread with a running event loop (the gateway's, in these tests)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def test_the_json_helper_process_is_started_off_the_event_loop(monkeypatch) -> None:
    """The pool starts its process at its first call: that call, made on the loop, held it 150-230 ms."""
    first_calls: list[bool] = []

    class Recording(ProcessPoolExecutor):
        def submit(self, *args, **kwargs):
            if not first_calls:
                first_calls.append(on_a_running_loop())
            return super().submit(*args, **kwargs)

    monkeypatch.setattr(json_offload, "ProcessPoolExecutor", Recording)
    offload = JsonOffload(offload_bytes=1)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}]})
    try:
        parsed = asyncio.run(offload.parse_infer(body.encode(), None, "m", ""))
    finally:
        offload.close()
    assert parsed.request.inputs["x"].tolist() == [1.0, 2.0]  # parsed by the helper all the same
    assert first_calls == [False]


def test_two_first_large_bodies_at_once_share_one_helper() -> None:
    offload = JsonOffload(offload_bytes=1)

    async def both() -> list[int]:
        return await asyncio.gather(offload.call(10, len, b"ab"), offload.call(10, len, b"abc"))

    try:
        assert asyncio.run(both()) == [2, 3]
        assert len(offload._pool._processes) == 1
    finally:
        offload.close()


def test_the_openapi_schema_is_built_off_the_event_loop_on_first_call(tmp_path, monkeypatch) -> None:
    """``/docs`` loads ``/openapi.json``: its first build, 50-380 ms here, ran on the loop."""
    builds: list[bool] = []
    document = gateway_app.v1.document_limits

    def recording(schema, settings) -> None:
        builds.append(on_a_running_loop())
        document(schema, settings)

    monkeypatch.setattr(gateway_app.v1, "document_limits", recording)
    app = create_app(Settings(model_repository=tmp_path, grpc_port=0))
    client = TestClient(app)  # no lifespan: the schema needs no model
    first, again = client.get("/openapi.json"), client.get("/openapi.json")
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() and "/v1/models/{name}/classify" in first.json()["paths"]
    assert builds == [False]  # built once, on a thread
