"""``/openapi.json`` requests that arrive while its first build runs on a thread wait for that build:
FastAPI caches the schema before the gateway writes its limits into it (serving.app), and a request
served from that cache meanwhile got the schema without them (or read it while the thread edited it)."""

from __future__ import annotations

import asyncio
import threading

import httpx

from serving import app as gateway_app
from serving.app import create_app
from serving.settings import Settings

YIELDS = 500  # loop turns a request served from the cache needs (~20) many times over: no clock read


def _top_k(schema: dict) -> list[dict]:
    body = schema["paths"]["/v1/models/{name}/classify"]["post"]["requestBody"]["content"]
    return [content["schema"]["properties"]["top_k"] for content in body.values()]


def test_a_request_during_the_first_build_gets_the_documented_schema(tmp_path, monkeypatch) -> None:
    entered, go = threading.Event(), threading.Event()
    document = gateway_app.v1.document_limits

    def held(schema, settings) -> None:  # the build's last edit, held until the second request came
        entered.set()
        assert go.wait(30)
        document(schema, settings)

    monkeypatch.setattr(gateway_app.v1, "document_limits", held)
    app = create_app(Settings(model_repository=tmp_path, grpc_port=0, max_top_k=7))

    async def both() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            first = asyncio.create_task(client.get("/openapi.json"))
            assert await asyncio.to_thread(entered.wait, 30)  # FastAPI's cache is set: the edits run
            second = asyncio.create_task(client.get("/openapi.json"))
            for _ in range(YIELDS):  # served from the cache, if it is, while the build is held
                if second.done():
                    break
                await asyncio.sleep(0)
            go.set()
            return await first, await second

    try:
        first, second = asyncio.run(both())
    finally:
        go.set()
    assert first.status_code == second.status_code == 200
    assert [limit.get("maximum") for limit in _top_k(first.json())] == [7, 7]
    assert second.json() == first.json()  # the limits in it too
