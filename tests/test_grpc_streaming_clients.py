"""tritonclient's streaming and asyncio clients against both gRPC servers, as a Triton user drives them:
``start_stream`` / ``async_stream_infer`` / ``stop_stream``, ``grpc.aio``'s ``stream_infer`` and
``infer`` and ``http.aio``'s ``infer``, on a classifier and a translator, each answer compared with
ONNX Runtime's (the classifier) or the gateway's unary answer (the translator)."""

from __future__ import annotations

import asyncio
import logging
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http.aio as http_aio
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from serving.app import create_app
from serving.protocol import h2_wire as w
from serving.protocol.grpc_server import start_grpc_server
from serving.protocol.h2_streams import CUT_MESSAGE
from serving.settings import Settings
from tests.h2_client import (
    MODEL_STREAM_INFER,
    call_headers,
    connected,
    doubling_request,
    grpc_message,
    stream_parts,
)
from tests.repo_fixtures import CHANNELS, SIZE, LiveServer, build_classifier_repository, held_grpc_port
from tests.test_grpc import FakeBackend, LoopThread
from tests.test_translate_serving import exported_translators, texts_of_mixed_lengths
from tests.waiting import eventually, until

TRANSLATOR, CLASSIFIER = "transformer", "lenet"
LONG = {"texts": texts_of_mixed_lengths(64, seed=31), "beam_size": 16, "max_length": 60}
IMAGES = np.random.default_rng(3).integers(0, 256, (64, 2, SIZE, SIZE, CHANNELS), dtype=np.uint8)


@pytest.fixture(scope="module")
def repository(exported_translator_models, tmp_path_factory) -> Path:
    """The tiny transformer translator and a lenet classifier in one repository."""
    root = exported_translators(
        exported_translator_models, tmp_path_factory, "streaming-clients", (TRANSLATOR,)
    )
    return build_classifier_repository(root, (CLASSIFIER,))


@pytest.fixture(scope="module", params=["kiln", "grpcio"])
def gateway(repository: Path, request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    """The gateway over ``repository``, its gRPC served by Kiln's own server or grpcio's."""
    with held_grpc_port() as grpc_port:
        settings = Settings(
            model_repository=repository,
            grpc_port=grpc_port,
            reuse_port=True,
            grpc_server=request.param,
            request_timeout_s=120.0,
        )
        app = create_app(settings)
        with LiveServer(app) as server:
            server.app_state, server.grpc_url = app.state, f"127.0.0.1:{grpc_port}"
            yield server


def _text(module: Any, texts: list[str]) -> Any:
    tensor = module.InferInput("text", [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    return tensor


def _images(module: Any, images: np.ndarray, datatype: str = "UINT8") -> Any:
    tensor = module.InferInput("images", list(images.shape), datatype)
    tensor.set_data_from_numpy(images)
    return tensor


def _onnx_runtime(repository: Path, images: np.ndarray) -> np.ndarray:
    """The classifier's probabilities straight from its ONNX graph."""
    session = ort.InferenceSession(str(repository / CLASSIFIER / "1" / "model.onnx"))
    return session.run(["probabilities"], {"images": images})[0]


def _unary_translation(gateway: LiveServer, texts: list[str], **options: Any) -> list[bytes]:
    with grpcclient.InferenceServerClient(gateway.grpc_url) as client:
        answer = client.infer(TRANSLATOR, [_text(grpcclient, texts)], parameters=options)
    return answer.as_numpy("translation").reshape(-1).tolist()


def _gauge(gateway: LiveServer, name: str, model: str = TRANSLATOR) -> float:
    return gateway.app_state.metrics.sample(name, model=model) or 0.0


def _nothing_left_running(gateway: LiveServer) -> bool:
    """No request in flight, none queued, and the translator's schedulers hold no rows."""
    schedulers = gateway.app_state.backend.translators.get(TRANSLATOR).schedulers
    return (
        _gauge(gateway, "kiln_in_flight_requests") == 0
        and _gauge(gateway, "kiln_queue_depth", CLASSIFIER) == 0
        and all(s.active_rows == 0 and s.queued == 0 for s in schedulers)
    )


class _LaterFirst(FakeBackend):
    """``double``, where a request of zeros waits until another request has run: on a stream, the
    first request sent finishes last."""

    def __init__(self) -> None:
        super().__init__()
        self.other_ran = asyncio.Event()

    async def infer(self, request: Any) -> Any:
        if not request.inputs["x"].any():
            await self.other_ran.wait()
            return await super().infer(request)
        answer = await super().infer(request)
        self.other_ran.set()
        return answer


@pytest.mark.parametrize("server", ["kiln", "grpcio"])
def test_a_streams_answers_come_in_the_order_of_its_requests_as_tritons_do(server: str) -> None:
    """Triton answers a model that is not decoupled in the order of the stream's requests, so a client
    may pair them by order (ids are optional): the gateway answered each as it finished, and a client
    without ids took the second request's answer for the first's."""
    loop = LoopThread()
    answers: queue.Queue = queue.Queue()
    try:
        handle = loop.run(start_grpc_server(_LaterFirst(), "127.0.0.1", 0, server=server))
        with grpcclient.InferenceServerClient(f"127.0.0.1:{handle.port}") as client:
            client.start_stream(callback=lambda result, error: answers.put((result, error)))
            for value in (0.0, 1.0):  # the first waits for the second to have run
                x = grpcclient.InferInput("x", [1, 3], "FP32")
                x.set_data_from_numpy(np.full((1, 3), value, np.float32))
                client.async_stream_infer("double", [x])
            got = [answers.get(timeout=30) for _ in range(2)]
            client.stop_stream()
        loop.run(handle.stop(1.0))
    finally:
        loop.close()
    assert [error for _, error in got] == [None, None]
    assert [float(result.as_numpy("y")[0, 0]) for result, _ in got] == [0.0, 2.0]


def test_a_mixed_stream_is_answered_in_order_each_bad_request_alone_and_as_unary_calls_are(
    gateway: LiveServer, repository: Path
) -> None:
    """One stream through ``start_stream``: translations and classifications, with an unknown model,
    a wrong shape, a wrong datatype and a translator's bad option among them. Each bad request gets
    its error in its turn, naming what is wrong; the others the answers ONNX Runtime and unary calls
    give, each marked final, as Triton marks them."""
    texts = texts_of_mixed_lengths(6, seed=5)
    decoding = {"beam_size": 4, "max_length": 24}
    stream = [  # (model, input, what its answer must be: the answer, or words of its error; options)
        (TRANSLATOR, _text(grpcclient, texts), _unary_translation(gateway, texts, **decoding), decoding),
        (CLASSIFIER, _images(grpcclient, IMAGES[0]), _onnx_runtime(repository, IMAGES[0]), None),
        ("no_such_model", _images(grpcclient, IMAGES[1]), "no_such_model", None),
        (CLASSIFIER, _images(grpcclient, IMAGES[1][:, :8]), "shape", None),
        (CLASSIFIER, _images(grpcclient, IMAGES[1].astype(np.float32), "FP32"), "datatype", None),
        (TRANSLATOR, _text(grpcclient, texts[:1]), "beam_size", {"beam_size": 99}),
        (TRANSLATOR, _text(grpcclient, texts[:1]), _unary_translation(gateway, texts[:1]), None),
        (CLASSIFIER, _images(grpcclient, IMAGES[2]), _onnx_runtime(repository, IMAGES[2]), None),
    ]
    answers: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(gateway.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i, (model, tensor, _, options) in enumerate(stream):  # the empty final answer asked for too
            client.async_stream_infer(
                model, [tensor], request_id=f"r{i}", parameters=options, enable_empty_final_response=True
            )
        got = [answers.get(timeout=60) for _ in stream]
        client.stop_stream()
    sent = [(expected, f"r{i}") for i, (_, _, expected, _) in enumerate(stream)]
    assert answers.empty()  # one answer a request: no empty final one for a model that is not decoupled
    for (expected, request_id), (result, error) in zip(sent, got, strict=True):
        if isinstance(expected, str):
            assert result is None and expected in error.message(), (request_id, error)
            continue
        assert error is None, (request_id, error)
        response = result.get_response()
        assert response.id == request_id and response.parameters["triton_final_response"].bool_param
        if response.model_name == CLASSIFIER:
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-5, atol=1e-6)
        else:
            assert result.as_numpy("translation").reshape(-1).tolist() == expected


def test_a_translators_own_refusal_on_a_stream_names_it_and_the_servers_does_not(gateway) -> None:
    """A stream's error answers for a translator, as Triton 2.51 answered this same stream over the
    python flavour of this repository: an option or a text the ``<name>`` model refuses is the model's
    answer, naming it and the version the request wrote; a shape or an output Triton's server checks
    is refused with the request's id alone (tests/test_grpc_stream_error_fields.py has the rule)."""

    def request(request_id: str, texts: list[bytes], version: str = "", **options: int) -> Any:
        sent = service_pb2.ModelInferRequest(model_name=TRANSLATOR, model_version=version, id=request_id)
        sent.inputs.add(name="text", datatype="BYTES", shape=[len(texts), 1])
        sent.raw_input_contents.append(b"".join(len(t).to_bytes(4, "little") + t for t in texts))
        for key, value in options.items():
            sent.parameters[key].int64_param = value
        return sent

    unknown_output = request("unknown-output", [b"twelve"])
    unknown_output.outputs.add(name="no_such_output")
    wrong_shape = request("wrong-shape", [b"twelve"])
    wrong_shape.inputs[0].shape[:] = [1, 1, 1]
    stream = [
        request("beam-too-wide", [b"twelve"], beam_size=99),
        request("not-utf-8", [b"\xff\xfe"], "1"),
        unknown_output,
        wrong_shape,
    ]
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        replies = list(stub.ModelStreamInfer(iter(stream), timeout=60))
    assert all(reply.error_message for reply in replies)
    assert [
        (r.infer_response.id, r.infer_response.model_name, r.infer_response.model_version) for r in replies
    ] == [
        ("beam-too-wide", TRANSLATOR, ""),
        ("not-utf-8", TRANSLATOR, "1"),
        ("unknown-output", "", ""),
        ("wrong-shape", "", ""),
    ]


@pytest.mark.parametrize("cancel_requests", [False, True], ids=["drained", "cancelled"])
def test_stop_stream_with_translations_in_flight_answers_them_or_drops_them(gateway, cancel_requests) -> None:
    """``stop_stream()`` ends the client's half and waits: every request in flight is answered;
    ``stop_stream(cancel_requests=True)`` cancels the call: the gateway drops their work."""
    answers: queue.Queue = queue.Queue()
    steps = _gauge(gateway, "kiln_decoder_steps_total")
    with grpcclient.InferenceServerClient(gateway.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i in range(3):
            client.async_stream_infer(
                TRANSLATOR,
                [_text(grpcclient, LONG["texts"][:16])],
                request_id=f"t{i}",
                parameters={"beam_size": 8},
            )
        assert eventually(lambda: _gauge(gateway, "kiln_decoder_steps_total") > steps)  # decoding
        client.stop_stream(cancel_requests=cancel_requests)
    got = [answers.get_nowait() for _ in range(answers.qsize())]
    if cancel_requests:
        assert any(error is not None and "CANCELLED" in str(error) for _, error in got)
    else:
        assert [(result.get_response().id, error) for result, error in got] == [
            ("t0", None),
            ("t1", None),
            ("t2", None),
        ]
    assert eventually(lambda: _nothing_left_running(gateway))


@pytest.mark.parametrize("how", ["task cancelled", "stream deadline"])
def test_an_aio_stream_ended_by_its_client_mid_translation_leaves_nothing_running(
    gateway, how, caplog
) -> None:
    """``grpc.aio``'s ``stream_infer`` with long translations in flight, its task cancelled or its
    ``stream_timeout`` passed: nothing stays in flight or in the decoder, and no server fault is logged."""
    steps = _gauge(gateway, "kiln_decoder_steps_total")

    async def requests():  # noqa: ANN202 - stream_infer's async iterator of request dicts
        for i in range(3):
            yield {
                "model_name": TRANSLATOR,
                "inputs": [_text(grpc_aio, LONG["texts"])],
                "request_id": str(i),
                "parameters": {"beam_size": LONG["beam_size"], "max_length": LONG["max_length"]},
            }
        await asyncio.Event().wait()  # the stream stays open

    async def scenario() -> BaseException | None:
        async with grpc_aio.InferenceServerClient(gateway.grpc_url) as client:
            timeout = 0.05 if how == "stream deadline" else None
            reading = asyncio.ensure_future(_drain(client.stream_infer(requests(), stream_timeout=timeout)))
            if how == "task cancelled":
                await until(lambda: _gauge(gateway, "kiln_decoder_steps_total") > steps)  # decoding
                reading.cancel()
            return (await asyncio.gather(reading, return_exceptions=True))[0]

    with caplog.at_level(logging.WARNING, logger="serving"):
        ended = asyncio.run(scenario())
        assert eventually(lambda: _nothing_left_running(gateway))
    if how == "stream deadline":
        assert "DEADLINE_EXCEEDED" in str(ended), ended
    assert [r.getMessage() for r in caplog.records if r.name.startswith("serving")] == []
    assert _unary_translation(gateway, ["twelve"])  # serving on


async def _drain(responses: Any) -> None:
    async for _, error in responses:
        assert error is None, error


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_64_concurrent_aio_calls_answer_as_onnx_runtime_and_unary_calls_do(
    gateway, repository, compression
) -> None:
    """``asyncio.gather`` of 64 calls, classifications and translations, through ``grpc.aio``
    (``compression_algorithm``) and ``http.aio`` (``request_compression_algorithm``)."""
    texts = texts_of_mixed_lengths(32, seed=9)
    expected = {i: _onnx_runtime(repository, IMAGES[i]) for i in range(1, 64, 2)}
    expected.update({i: _unary_translation(gateway, [texts[i // 2]], beam_size=3) for i in range(0, 64, 2)})

    async def one(module: Any, client: Any, i: int, **options: Any) -> Any:
        if i % 2:
            answer = await client.infer(CLASSIFIER, [_images(module, IMAGES[i])], **options)
            return answer.as_numpy("probabilities")
        answer = await client.infer(
            TRANSLATOR, [_text(module, [texts[i // 2]])], parameters={"beam_size": 3}, **options
        )
        return answer.as_numpy("translation").reshape(-1).tolist()

    async def scenario() -> list[list[Any]]:
        async with grpc_aio.InferenceServerClient(gateway.grpc_url) as grpc_client:
            over_grpc = await asyncio.gather(
                *(one(grpc_aio, grpc_client, i, compression_algorithm=compression) for i in range(64))
            )
        async with http_aio.InferenceServerClient(gateway.url) as http_client:
            options = {
                "request_compression_algorithm": compression,
                "response_compression_algorithm": compression,
            }
            over_http = await asyncio.gather(*(one(http_aio, http_client, i, **options) for i in range(64)))
        return [over_grpc, over_http]

    for answers in asyncio.run(scenario()):
        for i, answer in enumerate(answers):
            if i % 2:
                np.testing.assert_allclose(answer, expected[i], rtol=1e-5, atol=1e-6)
            else:
                assert answer == expected[i], i


def test_a_client_timeout_that_expires_mid_translation_is_the_clients_and_the_work_is_dropped(
    gateway,
) -> None:
    """``client_timeout`` (grpc.aio) and ``conn_timeout`` (http.aio) shorter than the translation: the
    client gets DEADLINE_EXCEEDED or its timeout, and the gateway stops decoding for it."""
    body = {"parameters": {"beam_size": LONG["beam_size"], "max_length": LONG["max_length"]}}

    async def over_grpc() -> None:
        async with grpc_aio.InferenceServerClient(gateway.grpc_url) as client:
            with pytest.raises(InferenceServerException) as raised:
                await client.infer(TRANSLATOR, [_text(grpc_aio, LONG["texts"])], client_timeout=0.02, **body)
            assert raised.value.status() == "StatusCode.DEADLINE_EXCEEDED"

    async def over_http() -> None:
        async with http_aio.InferenceServerClient(gateway.url, conn_timeout=0.02) as client:
            with pytest.raises(asyncio.TimeoutError):
                await client.infer(TRANSLATOR, [_text(http_aio, LONG["texts"])], **body)

    for scenario in (over_grpc, over_http):
        asyncio.run(scenario())
        assert eventually(lambda: _nothing_left_running(gateway)), scenario.__name__
    assert _unary_translation(gateway, ["twelve"])  # serving on


def test_a_stream_that_breaks_behind_a_request_still_running_ends_at_once() -> None:
    """Answers wait for their turn, but a stream whose client cut a message ends then (INTERNAL, as
    grpc core ends it), not once the request before it, which never finishes here, is answered."""
    x = np.ones((1, 3), np.float32)
    with connected() as h2:
        h2.send(h2.headers(1, call_headers(MODEL_STREAM_INFER)))
        h2.send(w.frame(w.DATA, 0, 1, grpc_message(doubling_request(x, model="hang").SerializeToString())))
        cut = grpc_message(doubling_request(x).SerializeToString())[:9]
        h2.send(w.frame(w.DATA, w.END_STREAM, 1, cut))
        blocks, _ = stream_parts(h2.frames(), 1)
        assert blocks[-1]["grpc-status"] == "13" and blocks[-1]["grpc-message"] == CUT_MESSAGE
        assert 1 not in h2.connection.calls
