"""The python flavour the real Triton serves hands a STRING input to ONNX Runtime as the text its bytes
hold, as the gateway's embedded backend does: it handed the ``bytes`` objects over, which ONNX
Runtime's Python API turns into their repr, so an identity model answered ``"héllo"`` with
``"b'h\\xc3\\xa9llo'"``."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from tests.repo_fixtures import running_triton, write_onnx_entry

CONFIG = """name: "echo"
platform: "onnxruntime_onnx"
max_batch_size: 0
input { name: "x" data_type: TYPE_STRING dims: [ -1 ] }
output { name: "y" data_type: TYPE_STRING dims: [ -1 ] }
"""


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    root = tmp_path_factory.mktemp("echo")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "echo",
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["n"])],
    )
    (root / "repo").mkdir()
    write_onnx_entry(root / "repo", graph, CONFIG)
    with running_triton(root / "repo", root / "work") as server:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        yield client
        client.close()


def _echo(client, values: list[bytes]) -> list[bytes]:
    tensor = httpclient.InferInput("x", [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=True)
    return client.infer("echo", [tensor]).as_numpy("y").tolist()


def test_a_string_input_reaches_the_graph_as_its_text(triton) -> None:
    assert _echo(triton, ["héllo".encode(), b"", b"a b"]) == ["héllo".encode(), b"", b"a b"]


def test_a_string_input_that_is_not_utf8_is_refused_naming_the_element(triton) -> None:
    """As the gateway refuses it (ONNX Runtime's Python API has no way to hand such bytes over)."""
    with pytest.raises(InferenceServerException, match=r"input 'x': element 1 is not UTF-8 text") as caught:
        _echo(triton, [b"ok", b"\xff\xfe"])
    assert caught.value.status() == "400"
