"""Where the gateway answered otherwise than Triton 2.51 (checked against the real server): the metadata,
config and readiness of a model whose load failed, version numbers with leading zeros or past int64;
ONNX Runtime's own stderr line for each run it refused; the python flavour's row places and cancelled
translations; and the KServe autoscaler's query reading other Tritons' queues."""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import sys
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2

from serving.errors import BadRequest
from serving.execution import placement
from serving.execution.model_versions import parse_version
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions
from serving.execution.ort_sessions import SessionOpener
from serving.execution.repository import Repository
from serving.protocol.grpc_servicer import InferenceServicer
from tests.repo_fixtures import repository_client, write_entry_without_model, write_onnx_entry
from tests.test_triton_translator_model import (
    _Error,
    _Request,
    model,  # noqa: F401 (the fixture)
    stand_in_pb_utils,
)

ROOT = Path(__file__).resolve().parent.parent


def _config(name: str, dims: str = "3") -> str:
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{{ name: "x" data_type: TYPE_FP32 dims: [ 3 ] }}]
output [{{ name: "y" data_type: TYPE_FP32 dims: [ {dims} ] }}]
"""


def _double(name: str) -> helper.GraphProto:
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    return helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [two],
    )


def _lookup() -> helper.GraphProto:
    """``lookup``: rows of a 3-row table by index; an index past it is ONNX Runtime's INVALID_ARGUMENT."""
    table = helper.make_tensor("table", TensorProto.FLOAT, [3, 2], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    return helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 1, 2])],
        [table],
    )


LOOKUP_CONFIG = """name: "lookup"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{ name: "ids" data_type: TYPE_INT64 dims: [ 1 ] }]
output [{ name: "rows" data_type: TYPE_FP32 dims: [ 1, 2 ] }]
"""

PICK_CONFIG = """name: "pick"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{ name: "store" data_type: TYPE_FP32 dims: [ 2 ] },
       { name: "row_place" data_type: TYPE_INT64 dims: [ 1 ] reshape { shape: [ ] } }]
output [{ name: "picked" data_type: TYPE_FP32 dims: [ 2 ] }]
"""


def _pick() -> helper.GraphProto:
    """``pick``: a decoder step's shape of a row store, row ``r`` reading the store at ``row_place[r]``."""
    return helper.make_graph(
        [helper.make_node("Gather", ["store", "row_place"], ["picked"], axis=0)],
        "pick",
        [
            helper.make_tensor_value_info("store", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("row_place", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("picked", TensorProto.FLOAT, ["batch", 2])],
    )


PICK_KILN = {
    "task": "translate_decoder",
    "step_spec": {
        "decoder": {
            "inputs": [{"name": "store", "role": "encoder"}, {"name": "row_place", "role": "row_place"}]
        }
    },
}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``double`` (serves), ``nofile`` (a version directory without its model.onnx: fails in the
    backend), ``zerodims`` (an output of dims [0]: refused when the repository is read), ``lookup``
    and ``pick``."""
    root = tmp_path_factory.mktemp("leftovers")
    write_onnx_entry(root, _double("double"), _config("double"))
    write_onnx_entry(root, _double("zerodims"), _config("zerodims", "0"))
    write_onnx_entry(root, _lookup(), LOOKUP_CONFIG)
    write_onnx_entry(root, _pick(), PICK_CONFIG)
    (root / "pick" / "kiln.json").write_text(json.dumps(PICK_KILN))
    write_entry_without_model(root, "nofile", _config("nofile"))
    return root


@pytest.fixture(scope="module")
def client(repository: Path):
    with repository_client(repository) as client:
        yield client


def _double_body() -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]}


# (a) a model whose load failed


def test_metadata_and_config_of_a_model_whose_load_failed_are_refused_as_triton_refuses_them(client) -> None:
    """Both answered 200 describing a model no request can reach; Triton 2.51 answers 404 ("has no
    available versions") without a version and 503 ("version 1 is not at ready state") with one."""
    for path in ("/v2/models/nofile", "/v2/models/nofile/config"):
        answer = client.get(path)
        assert answer.status_code == 404, answer.text
        assert (
            "has no available versions" in answer.json()["error"] and "model.onnx" in answer.json()["error"]
        )
    for path in ("/v2/models/nofile/versions/1", "/v2/models/nofile/versions/1/config"):
        answer = client.get(path)
        assert answer.status_code == 503, answer.text
        assert "version 1 is not ready" in answer.json()["error"]
    assert client.get("/v2/models/nofile/versions/2").status_code == 404  # no such version: as before
    assert client.get("/v2/models/double").status_code == 200
    assert client.get("/v2/models/double/config").status_code == 200


def test_the_readiness_of_an_entry_the_repository_could_not_read_is_not_ready_with_its_reason(client) -> None:
    """It was a 404 (unknown model), where Triton answers 400 (not ready) for a model whose load failed;
    the 400 now names why, as the one of a model that failed in the backend does."""
    for name, reason in (("zerodims", "dims [0]"), ("nofile", "model.onnx does not exist")):
        answer = client.get(f"/v2/models/{name}/ready")
        assert answer.status_code == 400, answer.text
        assert f"model {name!r} is not ready" in answer.json()["error"] and reason in answer.json()["error"]
    assert client.get("/v2/models/no_such_model/ready").status_code == 404


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class _Context:
    """The servicer's side of a call: ``abort`` raises, as grpc.aio's does."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)

    def set_trailing_metadata(self, metadata: object) -> None:
        pass


def _grpc_answers(repository: Path, calls: list[tuple[str, object]]) -> list[object]:
    """Each ``(rpc, request)`` on the servicer over a started backend: its reply, or the status code."""

    async def run() -> list[object]:
        backend = OnnxRuntimeBackend(Repository(repository), OrtOptions(lone_request_threads=0))
        await backend.start()
        servicer, answers = InferenceServicer(backend), []
        try:
            for rpc, request in calls:
                try:
                    answers.append(await getattr(servicer, rpc)(request, _Context()))
                except _Aborted as aborted:
                    answers.append(aborted.code)
        finally:
            await backend.stop()
        return answers

    return asyncio.run(run())


def test_grpc_metadata_and_config_of_a_model_whose_load_failed_carry_tritons_codes(repository) -> None:
    meta, config = service_pb2.ModelMetadataRequest, service_pb2.ModelConfigRequest
    answers = _grpc_answers(
        repository,
        [
            ("ModelMetadata", meta(name="nofile")),
            ("ModelConfig", config(name="nofile")),
            ("ModelMetadata", meta(name="nofile", version="1")),
            ("ModelConfig", config(name="nofile", version="1")),
            ("ModelReady", service_pb2.ModelReadyRequest(name="zerodims")),
            ("ModelMetadata", meta(name="double", version="01")),
        ],
    )
    not_found, unavailable = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE
    assert answers[:4] == [not_found, not_found, unavailable, unavailable]
    assert answers[4].ready is False
    assert answers[5].name == "double" and list(answers[5].versions) == ["1"]


# (b) version numbers


@pytest.mark.parametrize(
    ("asked", "read"),
    [
        ("1", "1"),
        ("01", "1"),
        ("0001", "1"),
        ("00", "0"),
        ("0", "0"),
        ("", ""),
        (str(2**63 - 1), str(2**63 - 1)),
    ],
)
def test_a_version_is_read_as_the_number_triton_reads(asked: str, read: str) -> None:
    assert parse_version(asked) == read


@pytest.mark.parametrize("asked", [str(2**63), "9" * 20, "9" * 5000, "-1", "+1", "1.0", " 1", "x"])
def test_a_version_past_int64_or_not_digits_is_a_bad_request(asked: str) -> None:
    """Triton refuses a version past int64 with a 400; 5 000 digits made ``int()`` raise ValueError."""
    with pytest.raises(BadRequest, match="positive integer"):
        parse_version(asked)


def test_a_version_with_leading_zeros_is_that_version_on_every_route(client) -> None:
    """``versions/01`` was a 404 (no version '01'); Triton answers as for version 1."""
    assert client.get("/v2/models/double/versions/01").json()["versions"] == ["1"]
    assert client.get("/v2/models/double/versions/01/ready").status_code == 200
    assert client.get("/v2/models/double/versions/01/config").status_code == 200
    answered = client.post("/v2/models/double/versions/001/infer", json=_double_body())
    assert answered.status_code == 200, answered.text
    assert answered.json()["model_version"] == "1"
    assert client.get("/v2/models/double/versions/00").status_code == 404
    assert client.get("/v2/models/double/versions/99999999999999999999").status_code == 400


# (c) ONNX Runtime's stderr


def test_a_run_onnx_runtime_refuses_writes_nothing_on_stderr(repository, capfd) -> None:
    """ONNX Runtime wrote its own error line on stderr for each refused run, a line any client could
    add to the gateway's log at will; the client's answer and the gateway's own log line remain."""
    ids = {"ids": np.array([[7]], np.int64)}
    plain = ort.InferenceSession(str(repository / "lookup" / "1" / "model.onnx"))
    with pytest.raises(Exception, match="out of data bounds"):
        plain.run(None, ids)
    assert "onnxruntime" in capfd.readouterr().err  # what the gateway's sessions wrote: seen here
    opener = SessionOpener(OrtOptions())
    session, _ = opener.open_session(
        repository / "lookup" / "1" / "model.onnx", placement.Placement(placement.CPU, "cpu")
    )
    with pytest.raises(Exception, match="out of data bounds"):
        session.run(None, ids)
    assert session.run(None, {"ids": np.array([[2]], np.int64)})[0].tolist() == [[[4.0, 5.0]]]
    assert "onnxruntime" not in capfd.readouterr().err


def test_the_gateway_answers_a_refused_run_without_onnx_runtimes_line(client, capfd) -> None:
    body = {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": [7]}]}
    answer = client.post("/v2/models/lookup/infer", json=body)
    assert answer.status_code == 400 and "out of data bounds" in answer.json()["error"]
    assert "onnxruntime" not in capfd.readouterr().err


# (d) the python flavour


@pytest.fixture
def onnx_model(monkeypatch: pytest.MonkeyPatch):
    """serving/triton/onnx_model.py (the model the flavour copies) bound to a stand-in pb_utils."""
    utils = stand_in_pb_utils(monkeypatch, lambda request, name: request.arrays[name])
    dtypes = {"TYPE_INT64": np.int64, "TYPE_FP32": np.float32}
    utils.triton_string_to_numpy = dtypes.__getitem__
    monkeypatch.delitem(sys.modules, "serving.triton.onnx_model", raising=False)
    yield importlib.import_module("serving.triton.onnx_model")
    sys.modules.pop("serving.triton.onnx_model", None)


class _TensorRequest:
    def __init__(self, **arrays: np.ndarray) -> None:
        self.arrays = arrays

    def requested_output_names(self) -> list[str]:
        return []


def _flavoured(module, entry: Path):  # noqa: ANN001, ANN202
    from tests.test_triton_flavour_hunt import initialized_model

    return initialized_model(module, entry)


def test_the_flavour_refuses_a_negative_row_place_as_the_gateway_does(onnx_model, repository, client) -> None:
    """ONNX Runtime's Gather reads a negative index from the end: row 0 at place -1 was answered with
    the last sentence's encoder output (a 200, and a wrong one) where the gateway answers 400."""
    instance = _flavoured(onnx_model, repository / "pick")
    store = np.array([[1.0, 1.0], [2.0, 2.0]], np.float32)
    refused, answered = instance.execute(
        [
            _TensorRequest(store=store, row_place=np.array([-1, 0], np.int64)),
            _TensorRequest(store=store, row_place=np.array([1, 0], np.int64)),
        ]
    )
    assert refused.error is not None and refused.error.code == _Error.INVALID_ARG
    assert dict(answered.outputs)["picked"].tolist() == [[2.0, 2.0], [1.0, 1.0]]
    tensors = [
        {"name": "store", "datatype": "FP32", "shape": [2, 2], "data": store.ravel().tolist()},
        {"name": "row_place", "datatype": "INT64", "shape": [2, 1], "data": [-1, 0]},
    ]
    gateway = client.post("/v2/models/pick/infer", json={"inputs": tensors})
    assert gateway.status_code == 400
    assert refused.error.message == gateway.json()["error"]
    assert "place -1 is outside the 2 places of input 'store'" in refused.error.message


def test_the_flavour_runs_requests_with_row_places_each_alone(onnx_model, repository) -> None:
    """Merged, the second request's place 0 read the first request's row 0."""
    instance = _flavoured(onnx_model, repository / "pick")
    first, second = instance.execute(
        [
            _TensorRequest(store=np.array([[1.0, 1.0]], np.float32), row_place=np.array([0], np.int64)),
            _TensorRequest(store=np.array([[2.0, 2.0]], np.float32), row_place=np.array([0], np.int64)),
        ]
    )
    assert dict(first.outputs)["picked"].tolist() == [[1.0, 1.0]]
    assert dict(second.outputs)["picked"].tolist() == [[2.0, 2.0]]


def test_the_flavour_answers_a_refused_run_without_onnx_runtimes_line(onnx_model, repository, capfd) -> None:
    instance = _flavoured(onnx_model, repository / "lookup")
    (refused,) = instance.execute([_TensorRequest(ids=np.array([[7]], np.int64))])
    assert refused.error.code == _Error.INVALID_ARG and "out of data bounds" in refused.error.message
    assert "onnxruntime" not in capfd.readouterr().err


class _Cancellable(_Request):
    def __init__(self, texts: list[str], cancelled: list[bool], **options: object) -> None:
        super().__init__(texts, **options)
        self.cancelled = cancelled  # read at each is_cancelled(): the test flips it mid-execute

    def is_cancelled(self) -> bool:
        return self.cancelled[0]


def test_the_translator_model_skips_the_beam_search_of_a_cancelled_request(model, monkeypatch) -> None:  # noqa: F811
    """A request its client cancelled was still decoded in full (the python backend's is_cancelled was
    never asked); it is answered CANCELLED, and one cancelled while another group decodes too."""
    monkeypatch.setattr(_Error, "CANCELLED", "CANCELLED", raising=False)
    decoded: list[list[str]] = []
    translate = model._translate
    later: list[bool] = [False]

    def recorded(texts, config):  # noqa: ANN001, ANN202
        decoded.append(texts)
        later[0] = True  # the second group's client cancels while the first group decodes
        return translate(texts, config)

    model._translate = recorded
    responses = model.execute(
        [
            _Cancellable(["gone"], [True]),
            _Cancellable(["kept"], [False]),
            _Cancellable(["late"], later, beam_size=2),
        ]
    )
    assert decoded == [["kept"]]
    assert [r.error.code if r.error else None for r in responses] == ["CANCELLED", None, "CANCELLED"]


# (e) the KServe autoscaler


def test_the_autoscalers_query_reads_only_the_inference_services_own_pods() -> None:
    """The query summed every Triton of the namespace: the gpu overlay's kiln-triton Deployment there
    too, and KEDA scaled this service on that one's queue. Each selector now names the predictor's pods
    (KServe's RawDeployment: <service>-predictor-<replicaset>-<pod>)."""
    (isvc,) = [d for d in yaml.safe_load_all((ROOT / "deploy/kserve/inferenceservice.yaml").read_text()) if d]
    name = isvc["metadata"]["name"]
    (metric,) = isvc["spec"]["predictor"]["autoScaling"]["metrics"]
    selectors = re.findall(r"\w+\{([^}]*)\}", metric["external"]["metric"]["query"])
    assert len(selectors) == 2
    for selector in selectors:
        labels = dict(re.findall(r'(\w+)=~?"([^"]*)"', selector))
        assert set(labels) == {"namespace", "pod"}, selector
        assert re.fullmatch(labels["pod"], f"{name}-predictor-7d9f8c6b5-x2x9k")
        assert not re.fullmatch(labels["pod"], f"{name}-6c8d7f9b4-abcde")  # the Deployment's Triton
