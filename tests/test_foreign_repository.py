"""A Triton user's own repository, served unchanged: ONNX models Kiln never exported (no kiln.json),
with hand-written config.pbtxt files or none, answer tritonclient as Triton's onnxruntime backend
would (ONNX Runtime run directly on the same inputs is the reference), and a model the gateway cannot
serve is listed as failed with the reason, in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from serving.execution.placement import zero_inputs
from tests.repo_fixtures import write_onnx_entry
from tests.test_grpc import LoopThread, run_gateway

MIXED_CONFIG = """name: "mixed"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "ids" data_type: TYPE_INT64 dims: [ -1 ] },
  { name: "counts" data_type: TYPE_INT32 dims: [ 3 ] },
  { name: "half" data_type: TYPE_FP16 dims: [ -1 ] },
  { name: "flags" data_type: TYPE_BOOL dims: [ 2 ] },
  { name: "words" data_type: TYPE_STRING dims: [ -1 ] }
]
output [
  { name: "ids_out" data_type: TYPE_INT64 dims: [ -1 ] },
  { name: "counts_out" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "half_out" data_type: TYPE_FP16 dims: [ -1 ] },
  { name: "flags_out" data_type: TYPE_BOOL dims: [ 2 ] },
  { name: "words_out" data_type: TYPE_STRING dims: [ -1 ] }
]
dynamic_batching { }
"""

PARTIAL_CONFIG = """platform: "onnxruntime_onnx"
max_batch_size: 4
input [ { name: "a" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""


def _mixed_graph():
    """Identity, Cast and Not over five inputs of five types, two of them of variable length."""
    t, value = TensorProto, helper.make_tensor_value_info
    nodes = [
        helper.make_node("Identity", ["ids"], ["ids_out"]),
        helper.make_node("Cast", ["counts"], ["counts_out"], to=t.FLOAT),
        helper.make_node("Identity", ["half"], ["half_out"]),
        helper.make_node("Not", ["flags"], ["flags_out"]),
        helper.make_node("Identity", ["words"], ["words_out"]),
    ]
    inputs = [
        value("ids", t.INT64, ["batch", "ids_len"]),
        value("counts", t.INT32, ["batch", 3]),
        value("half", t.FLOAT16, ["batch", "half_len"]),
        value("flags", t.BOOL, ["batch", 2]),
        value("words", t.STRING, ["batch", "words_len"]),
    ]
    outputs = [
        value("ids_out", t.INT64, ["batch", "ids_len"]),
        value("counts_out", t.FLOAT, ["batch", 3]),
        value("half_out", t.FLOAT16, ["batch", "half_len"]),
        value("flags_out", t.BOOL, ["batch", 2]),
        value("words_out", t.STRING, ["batch", "words_len"]),
    ]
    return helper.make_graph(nodes, "mixed", inputs, outputs)


def _sum_graph(name: str):
    value = helper.make_tensor_value_info
    return helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        name,
        [value("a", TensorProto.FLOAT, ["batch", 2]), value("b", TensorProto.FLOAT, ["batch", 2])],
        [value("y", TensorProto.FLOAT, ["batch", 2])],
    )


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("foreign") / "repo"
    root.mkdir()
    write_onnx_entry(root, _mixed_graph(), MIXED_CONFIG)
    write_onnx_entry(root, _sum_graph("partial"), PARTIAL_CONFIG)  # the config leaves out input "b"
    write_onnx_entry(root, _sum_graph("bare"), "")
    (root / "bare" / "config.pbtxt").unlink()  # Triton would complete one from the ONNX file
    return root


@pytest.fixture(scope="module")
def gateway(repository):
    loop = LoopThread()
    try:
        with run_gateway(loop, repository, intra_op_threads=1, lone_request_threads=0) as live:
            yield live
    finally:
        loop.close()


def _mixed_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    words = np.empty((2, 3), dtype=object)
    words[:] = [[b"a", b"nul\x00inside", "caf\u00e9".encode()], [b"", b"x" * 40, "\u6f22".encode()]]
    return {  # in another order than the config's
        "words": words,
        "flags": rng.random((2, 2)) > 0.5,
        "half": rng.standard_normal((2, 5)).astype(np.float16),
        "counts": rng.integers(-1000, 1000, (2, 3)).astype(np.int32),
        "ids": rng.integers(-(2**62), 2**62, (2, 4)),
    }


def _direct(repository: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime run directly, fed the text its Python API takes (str) and its STRING answers
    encoded back to the UTF-8 bytes a client reads."""
    session = ort.InferenceSession(
        str(repository / "mixed" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    feeds = dict(inputs)
    feeds["words"] = np.vectorize(lambda b: b.decode(), otypes=[object])(inputs["words"])
    names = [o.name for o in session.get_outputs()]
    answers = dict(zip(names, session.run(names, feeds), strict=True))
    answers["words_out"] = np.vectorize(lambda s: s.encode(), otypes=[object])(answers["words_out"])
    return answers


def _infer(
    protocol: str, url: str, model: str, inputs: dict[str, np.ndarray], outputs: list[str], binary: bool
):
    module = httpclient if protocol == "http" else grpcclient
    tensors = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        if protocol == "http":
            tensor.set_data_from_numpy(array, binary_data=binary)
        else:
            tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    if protocol == "http":
        wanted = [httpclient.InferRequestedOutput(name, binary_data=True) for name in outputs]
    else:
        wanted = [grpcclient.InferRequestedOutput(name) for name in outputs]
    client = module.InferenceServerClient(url)
    try:
        return client.infer(model, tensors, outputs=wanted)
    finally:
        client.close()


@pytest.mark.parametrize(("protocol", "binary"), [("http", True), ("http", False), ("grpc", True)])
def test_every_type_of_a_foreign_model_answers_what_onnx_runtime_answers_values_and_dtypes(
    gateway, repository, protocol, binary
):
    inputs = _mixed_inputs()
    url = gateway.http_url if protocol == "http" else gateway.grpc_url
    outputs = ["words_out", "ids_out", "half_out", "flags_out"]  # a subset, in another order
    answer = _infer(protocol, url, "mixed", inputs, outputs, binary)
    expected = _direct(repository, inputs)
    for name in outputs:
        got = answer.as_numpy(name)
        assert got.dtype == expected[name].dtype and got.shape == expected[name].shape, name
        assert got.tolist() == expected[name].tolist(), name
    assert answer.as_numpy("counts_out") is None


def test_a_string_element_that_is_not_utf8_is_a_400_naming_it(gateway):
    inputs = _mixed_inputs()
    inputs["words"][1, 2] = b"\xff\xfe"
    with pytest.raises(InferenceServerException) as raised:
        _infer("http", gateway.http_url, "mixed", inputs, ["words_out"], True)
    assert raised.value.status() == "400"
    assert "'words'" in raised.value.message() and "element 5 is not UTF-8" in raised.value.message()


def test_a_config_that_leaves_out_an_input_the_graph_requires_fails_its_load_naming_it(gateway):
    client = httpclient.InferenceServerClient(gateway.http_url)
    try:
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["partial"]["state"] == "UNAVAILABLE"
        assert "the graph's inputs ['b'] are not in the config" in index["partial"]["reason"]
        assert not client.is_model_ready("partial") and index["mixed"]["state"] == "READY"
    finally:
        client.close()


def test_a_model_directory_without_a_config_is_named_in_a_warning_not_listed_as_failed(repository, gateway):
    """It was skipped with a line saying only that there was no config.pbtxt; Triton would serve it (its
    auto-complete), so the line says the gateway does not, and how to write one. Listed as a failed
    model instead, it would keep the gateway unready for good."""
    from serving.execution.repository import unconfigured

    assert "does not complete a config from the model file" in unconfigured(repository / "bare")
    client = httpclient.InferenceServerClient(gateway.http_url)
    try:
        assert "bare" not in [m["name"] for m in client.get_model_repository_index()]
    finally:
        client.close()


@pytest.mark.parametrize(
    "kind",
    [TensorProto.UINT16, TensorProto.INT16, TensorProto.UINT32, TensorProto.UINT64, TensorProto.STRING],
)
def test_the_warm_up_feeds_each_input_of_its_own_type(tmp_path: Path, kind: int) -> None:
    """A fixed-shape input of these types was fed float32 zeros, and the model's load failed ("Unexpected
    input data type"): Triton serves it."""
    from onnx import save

    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "typed",
        [value("x", kind, ["batch", 3])],
        [value("y", kind, ["batch", 3])],
    )
    path = tmp_path / "typed.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = zero_inputs(session, rows=2)
    (answer,) = session.run(["y"], feeds)
    assert answer.shape == (2, 3) and answer.dtype == feeds["x"].dtype
