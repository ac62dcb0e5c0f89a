"""The embedded backend and the repository reader answer a client's or an exporter's mistake with a clear
error naming its cause (a 400 for the request, the file for a broken entry), never a 500 or a crash."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from serving.errors import BadRequest, ModelNotFound
from serving.execution.base import InferRequest
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions
from serving.execution.repository import Repository
from tests.repo_fixtures import write_onnx_entry

VOCAB = 10
EMBEDDING_CONFIG = """name: "embed"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [{ name: "tokens" data_type: TYPE_INT64 dims: [ -1 ] }]
output [{ name: "hidden" data_type: TYPE_FP32 dims: [ -1, 4 ] }]
dynamic_batching { }
"""


def embedding_repository(root: Path) -> Path:
    """One entry looking tokens up in a VOCAB x 4 table, as a translator's encoder does first."""
    table = helper.make_tensor("table", TensorProto.FLOAT, [VOCAB, 4], np.arange(VOCAB * 4, dtype=np.float32))
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "tokens"], ["hidden"])],
        "embed",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "length"])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "length", 4])],
        [table],
    )
    return write_onnx_entry(root, graph, EMBEDDING_CONFIG)


def test_a_token_id_outside_the_vocabulary_is_a_400_naming_it_and_the_next_request_is_served(tmp_path):
    backend = OnnxRuntimeBackend(
        Repository(embedding_repository(tmp_path)), OrtOptions(lone_request_threads=0)
    )

    async def body():
        await backend.start()
        try:
            with pytest.raises(BadRequest, match="out of data bounds, idx=99"):
                await backend.infer(InferRequest("embed", {"tokens": np.array([[1, 99]])}))
            return await backend.infer(InferRequest("embed", {"tokens": np.array([[2]])}))
        finally:
            await backend.stop()

    assert asyncio.run(body()).outputs["hidden"].tolist() == [[[8.0, 9.0, 10.0, 11.0]]]


@pytest.mark.parametrize(
    ("file", "text", "fragment"),
    [
        ("config.pbtxt", "max_batch_size: four", "config.pbtxt: not a valid Triton config.pbtxt"),
        ("kiln.json", "{not json", "kiln.json: not valid JSON"),
        ("kiln.json", "[1, 2]", "kiln.json: must hold a JSON object, not a list"),
        ("kiln.json", '{"export": "v3"}', "kiln.json: 'export' must be a JSON object"),
        ("kiln.json", '{"roles": ["images"]}', "kiln.json: 'roles' must be a JSON object"),
    ],
)
def test_a_malformed_entry_file_is_reported_by_name_and_the_other_entries_still_load(
    tmp_path, file, text, fragment
):
    embedding_repository(tmp_path)
    shutil.copytree(tmp_path / "embed", tmp_path / "broken")
    config = tmp_path / "broken" / "config.pbtxt"
    config.write_text(config.read_text().replace('"embed"', '"broken"'))
    (tmp_path / "broken" / file).write_text(text)
    repository = Repository(tmp_path)
    assert list(repository.entries) == ["embed"]
    assert fragment in repository.errors["broken"]
    with pytest.raises(ModelNotFound, match=fragment):
        repository.get("broken")
