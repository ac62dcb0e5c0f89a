"""Triton's raw binary request (``Inference-Header-Content-Length: 0``: the whole body is one input's
data, no JSON header) is not served by the gateway: refused with a 400 that names it.

Found beside the real Triton 2.51 on one repository: Triton answered such a request (a single-input
model, its 256 bytes of UINT8) with a 200 and every output in binary; the gateway answered
"Inference-Header-Content-Length is 0 but the body has 256 bytes", which reads as a miscounted
header, not as a feature it lacks, and says nothing of what to send instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serving.errors import BadRequest
from serving.protocol.v2_codec import HEADER_LENGTH, parse_infer
from tests.repo_fixtures import repository_client, write_onnx_entry

CONFIG = """name: "single"
platform: "onnxruntime_onnx"
max_batch_size: 4
input { name: "x" data_type: TYPE_FP32 dims: [4] }
output { name: "y" data_type: TYPE_FP32 dims: [4] }
instance_group { count: 1 kind: KIND_CPU }
"""


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "single",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    root: Path = write_onnx_entry(tmp_path_factory.mktemp("raw-binary"), graph, CONFIG)
    with repository_client(root) as client:
        yield client


def test_a_raw_binary_request_is_refused_naming_it(client) -> None:
    raw = np.arange(4, dtype=np.float32)[None].tobytes()
    reply = client.post("/v2/models/single/infer", content=raw, headers={HEADER_LENGTH: "0"})
    assert reply.status_code == 400
    message = reply.json()["error"]
    assert "raw binary request" in message and "binary_data_size" in message, message


def test_the_same_tensor_with_a_json_header_is_answered(client) -> None:
    data = np.arange(4, dtype=np.float32)[None]
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}
            ]
        }
    ).encode()
    reply = client.post(
        "/v2/models/single/infer", content=header + data.tobytes(), headers={HEADER_LENGTH: str(len(header))}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == data.ravel().tolist()


@pytest.mark.parametrize("body", [b"", b"\x00" * 16, b'{"inputs": []}'])
def test_a_zero_header_length_is_named_as_a_raw_binary_request_whatever_the_body(body: bytes) -> None:
    with pytest.raises(BadRequest, match="raw binary request"):
        parse_infer(body, "0", "single", "")
