"""What a ModelStreamInfer error answer carries in its ``infer_response``, as the real Triton 2.51 fills
it (its stream_infer_handler.cc, and seen on the wire): the request's ``id`` always; the ``model_name``
and ``model_version`` the request wrote only where the model answered the error, once it had taken the
request (its run failed, it timed out); a request the server refused before (an unknown model or
version, a tensor that does not fit the config, a full queue) gets its id alone. Both gRPC servers
answered the id alone every time. The gateway is held to the table below over both servers, and the
real Triton to the same table over the same repository."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.app import create_app
from serving.decoding.translator import Translator
from serving.errors import (
    BadRequest,
    DeadlineExceeded,
    Overloaded,
    Unavailable,
    UnprocessableInput,
    is_models_answer,
)
from serving.execution.base import InferRequest
from serving.execution.batcher import BatchPolicy, DynamicBatcher
from serving.settings import Settings
from tests.repo_fixtures import LiveServer, held_grpc_port, running_triton, write_onnx_entry
from tests.test_triton_leftovers import LOOKUP_CONFIG, _lookup

MODEL = "lookup"  # rows of a 3-row table by index: an index past it fails the model's run

# (id, model_name, model_version, ids, datatype) of each request on the stream, and the
# (model_name, model_version) its error answer carries: Triton 2.51's answers to this stream
STREAM = [
    (("past-the-table", MODEL, "", [[7]], "INT64"), (MODEL, "")),
    (("past-the-table-v1", MODEL, "1", [[7]], "INT64"), (MODEL, "1")),
    (("unknown-model", "no_such_model", "", [[1]], "INT64"), ("", "")),
    (("not-a-version", MODEL, "abc", [[1]], "INT64"), ("", "")),
    (("missing-version", MODEL, "7", [[1]], "INT64"), ("", "")),
    (("wrong-datatype", MODEL, "", [[1]], "INT32"), ("", "")),
    (("wrong-shape", MODEL, "", [[1, 2]], "INT64"), ("", "")),
]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_onnx_entry(tmp_path_factory.mktemp("stream-errors"), _lookup(), LOOKUP_CONFIG)


@pytest.fixture(scope="module", params=["kiln", "grpcio"])
def gateway_grpc(repository: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The gateway over ``repository``, its gRPC served by Kiln's own server or grpcio's: its address."""
    with held_grpc_port() as grpc_port:
        settings = Settings(
            model_repository=repository, grpc_port=grpc_port, reuse_port=True, grpc_server=request.param
        )
        with LiveServer(create_app(settings)):
            yield f"127.0.0.1:{grpc_port}"


def _request(
    request_id: str, model: str, version: str, ids: list, datatype: str
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    values = np.array(ids, np.int64 if datatype == "INT64" else np.int32)
    request.inputs.add(name="ids", datatype=datatype, shape=list(values.shape))
    request.raw_input_contents.append(values.tobytes())
    return request


def _answers(address: str) -> list[tuple[str, str, str, bool, bool]]:
    """(id, model_name, model_version, failed, final) of each answer to a fine request then ``STREAM``;
    ``final``: it carries ``triton_final_response: true``, which Triton leaves off a refusal."""
    requests = [_request("fine", MODEL, "", [[1]], "INT64")] + [_request(*sent) for sent, _ in STREAM]
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        replies = list(stub.ModelStreamInfer(iter(requests), timeout=60))
    answers = [r.infer_response for r in replies]
    return [
        (a.id, a.model_name, a.model_version, bool(r.error_message), _final(a))
        for a, r in zip(answers, replies, strict=True)
    ]


def _final(answer: service_pb2.ModelInferResponse) -> bool:
    return FINAL in answer.parameters and answer.parameters[FINAL].bool_param


FINAL = "triton_final_response"
# a model's answer, error or not, is marked final; a refusal (no model name in it) is not
EXPECTED = [("fine", MODEL, "1", False, True)] + [
    (sent[0], *fields, True, bool(fields[0])) for sent, fields in STREAM
]


def test_a_streams_error_names_the_model_only_where_the_model_answered_it_as_triton_does(
    gateway_grpc,
) -> None:
    """Both servers answered every error with the id alone: an index past the table (the model's own
    INVALID_ARGUMENT) now carries the model and the version as the request wrote them, an empty one
    empty; the server's refusals still carry the id alone, as Triton's do."""
    assert _answers(gateway_grpc) == EXPECTED


@pytest.mark.triton
def test_the_real_triton_answers_the_same_stream_with_the_same_fields(repository, tmp_path) -> None:
    """The table the gateway is held to is Triton's: the same stream on the same repository."""
    with running_triton(repository, tmp_path / "triton") as triton:
        assert _answers(triton.grpc_url) == EXPECTED


# -- which errors of the dynamic batcher are the model's answer ---------------------------------------

X = {"x": np.ones((1, 1), np.float32)}


def _refusing(instance: int, inputs: dict) -> dict:
    raise BadRequest("the model refuses this input")


class _Held:
    """A model that runs once ``gate`` is set; ``entered`` once a batch reached it."""

    def __init__(self) -> None:
        self.gate, self.entered = threading.Event(), threading.Event()

    def __call__(self, instance: int, inputs: dict) -> dict:
        self.entered.set()
        self.gate.wait(10)
        return {"y": inputs["x"]}


async def _failure(batcher: DynamicBatcher, **options) -> BaseException:
    try:
        await batcher.submit(X, **options)
    except Exception as error:  # noqa: BLE001 - the test reads it
        return error
    raise AssertionError("submit did not fail")


@pytest.mark.parametrize("inline", [False, True], ids=["queued", "run on the loop"])
def test_a_failed_run_is_the_models_answer_queued_or_inline(inline: bool) -> None:
    batcher = DynamicBatcher(
        "m", _refusing, BatchPolicy(max_batch_size=4), inline=(lambda backlogged: True) if inline else None
    )

    async def scenario() -> BaseException:
        batcher.start()
        try:
            return await _failure(batcher)
        finally:
            await batcher.stop(grace_s=5)

    error = asyncio.run(scenario())
    assert isinstance(error, BadRequest) and is_models_answer(error)


def test_a_request_past_its_timeout_is_the_models_answer() -> None:
    """Triton answers a request past its timeout through the model's response (its fields filled)."""
    model = _Held()
    batcher = DynamicBatcher("m", model, BatchPolicy(max_batch_size=1))

    async def scenario() -> BaseException:
        batcher.start()
        try:
            return await _failure(batcher, timeout_s=0.01)
        finally:
            model.gate.set()
            await batcher.stop(grace_s=5)

    error = asyncio.run(scenario())
    assert isinstance(error, DeadlineExceeded) and is_models_answer(error)


def test_a_full_queue_or_a_stopped_model_is_the_servers_refusal() -> None:
    """Triton refuses these before the request is enqueued: its answer carries the id alone."""
    model = _Held()
    batcher = DynamicBatcher("m", model, BatchPolicy(max_batch_size=1, max_queue_size=1))

    async def full() -> BaseException:
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(X))
        try:
            await asyncio.to_thread(model.entered.wait, 10)  # the first is out of the queue, running
            queued = asyncio.ensure_future(batcher.submit(X))
            await asyncio.sleep(0)  # its first step queues it: the queue's one place is taken
            error = await _failure(batcher)
            model.gate.set()
            await asyncio.gather(running, queued)
            return error
        finally:
            model.gate.set()
            await batcher.stop(grace_s=5)

    refused = asyncio.run(full())
    assert isinstance(refused, Overloaded) and not is_models_answer(refused)
    stopped = asyncio.run(_failure(DynamicBatcher("m", _refusing, BatchPolicy(max_batch_size=1))))
    assert isinstance(stopped, Unavailable) and not is_models_answer(stopped)


# -- which errors of a translator are the model's answer -----------------------------------------------


@pytest.mark.parametrize(
    ("error", "models_answer"),
    [
        (UnprocessableInput("invalid decoding options: beam_size"), True),  # Triton's <name> model refuses
        (DeadlineExceeded("timed out"), True),
        (Overloaded("requests already waiting"), False),  # its queue full: Triton's server refuses
        (Unavailable("translator 't' is not running"), False),
    ],
    ids=["options", "timeout", "queue full", "stopped"],
)
def test_a_translators_refusal_is_its_models_answer_but_a_full_or_stopped_queue_is_not(
    error, models_answer
) -> None:
    translator = Translator.__new__(Translator)  # what infer reads of it: its name, and translate below
    translator.name = "t"

    async def translate(*_: object) -> None:
        raise error

    translator.translate = translate
    request = InferRequest("t", {"text": np.array([[b"twelve"]], np.object_)})
    with pytest.raises(type(error)):
        asyncio.run(translator.infer(request))
    assert is_models_answer(error) == models_answer
