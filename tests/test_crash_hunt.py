"""Requests a client can send to the gateway's model entries that used to answer wrong or hold others up:
a decoder's ``row_place`` outside its sentences (NaN rows with a 200 from Kiln's compiled attention), an
encoder's source past the model's ``max_positions`` (GBs of RSS from a request under the body limit),
BOOL binary data other than bytes 0 and 1 (a recurrent decoder's mask read differently), and a JSON
answer of millions of values (seconds of event loop, every other request waiting)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.app import create_app
from serving.errors import BadRequest
from serving.execution.base import InferRequest, InferResponse
from serving.execution.repository import Repository
from serving.execution.validation import input_rules
from serving.protocol.json_offload import JsonOffload
from serving.protocol.tensors import from_bytes
from serving.protocol.v2_codec import HEADER_LENGTH, ParsedInfer, RequestedOutput, encode_infer
from serving.settings import Settings
from tests.repo_fixtures import MAX_BATCH, SIZE, LiveServer, build_classifier_repository

MAX_POSITIONS = 64  # build_translator_repository's


@pytest.fixture(scope="module")
def repository(exported_translator_models) -> Path:
    root, errors = exported_translator_models  # read only, shared with test_translate_serving (conftest)
    if errors:
        pytest.fail(f"export failed: {errors}")
    return root / "model_repository"


@pytest.fixture(scope="module")
def gateway(repository):
    with LiveServer(create_app(Settings(model_repository=repository, grpc_port=0))) as live:
        yield live


def _binary_infer(server, model: str, arrays: dict[str, np.ndarray]) -> httpx.Response:
    inputs, blobs = [], []
    for name, array in arrays.items():
        blob = np.ascontiguousarray(array).tobytes()
        datatype = {"int64": "INT64", "bool": "BOOL", "float32": "FP32"}[array.dtype.name]
        inputs.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    header = json.dumps({"inputs": inputs}).encode()
    return httpx.post(
        f"http://{server.url}/v2/models/{model}/infer",
        content=header + b"".join(blobs),
        headers={HEADER_LENGTH: str(len(header))},
        timeout=60,
    )


def _step_feeds(repository: Path, model: str, rows: int, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """A valid request to a step entry: ``rows`` rows, each named axis at ``sizes``, floats at 0.1."""
    import onnxruntime as ort

    entry = Repository(repository).get(model)
    session = ort.InferenceSession(str(entry.model_file("")), providers=["CPUExecutionProvider"])
    rules = input_rules(entry, {i.name: list(i.shape) for i in session.get_inputs()})
    feeds = {}
    for graph_input in session.get_inputs():
        rule = rules[graph_input.name]
        if rule.reshape is not None:  # a per-row scalar, sent as the config's [1]
            shape = [rows, *rule.shape[1:]]
        else:
            shape = [rows, *(sizes[d] if isinstance(d, str) else d for d in graph_input.shape[1:])]
        fill = True if rule.dtype == np.bool_ else 0.1 if rule.dtype == np.float32 else 3
        feeds[graph_input.name] = np.full(shape, fill, rule.dtype)
    return feeds


def test_a_row_place_outside_the_decoders_sentences_is_a_400_not_a_200_of_nan_rows(
    repository, gateway
) -> None:
    feeds = _step_feeds(repository, "transformer_decoder", rows=2, sizes={"past_len": 2, "src_len": 3})
    feeds["row_place"] = np.array([[1], [0]], np.int64)  # rows in any order over the store
    reply = _binary_infer(gateway, "transformer_decoder", feeds)
    assert reply.status_code == 200, reply.text
    assert all(None not in output["data"] for output in reply.json()["outputs"])
    for outside in (2, -1):
        feeds["row_place"] = np.array([[0], [outside]], np.int64)
        reply = _binary_infer(gateway, "transformer_decoder", feeds)
        assert reply.status_code == 400, reply.text[:300]
        assert reply.json()["error"] == (
            f"input 'row_place': place {outside} is outside the 2 places of input 'cross_k_0' (0 to 1)"
        )


@pytest.mark.parametrize("name", ["transformer", "gru_attention"])
def test_an_encoder_source_longer_than_the_model_takes_is_a_413_before_it_runs(gateway, name) -> None:
    """The translator refuses such texts; the entry refused nothing (a GRU encoder answered any length,
    1280 bytes of output a token for 8 sent) or ONNX Runtime did, after embedding every token."""
    longest = np.full((2, MAX_POSITIONS), 5, np.int64)
    assert _binary_infer(gateway, f"{name}_encoder", {"src_ids": longest}).status_code == 200
    longer = np.full((2, MAX_POSITIONS + 1), 5, np.int64)
    reply = _binary_infer(gateway, f"{name}_encoder", {"src_ids": longer})
    assert reply.status_code == 413, reply.text[:300]
    assert reply.json()["error"] == (
        f"input 'src_ids': dimension 1 (src_len) holds {MAX_POSITIONS + 1} in shape [2, {MAX_POSITIONS + 1}]: "
        f"model '{name}_encoder' takes at most {MAX_POSITIONS}"
    )


def test_a_decoders_cache_and_source_are_bounded_by_the_models_positions_too(repository, gateway) -> None:
    feeds = _step_feeds(repository, "gru_attention_decoder", rows=1, sizes={"src_len": MAX_POSITIONS + 1})
    reply = _binary_infer(gateway, "gru_attention_decoder", feeds)
    assert reply.status_code == 413 and "(src_len) holds 65" in reply.json()["error"], reply.text[:300]
    feeds = _step_feeds(repository, "transformer_decoder", 1, {"past_len": MAX_POSITIONS + 1, "src_len": 3})
    reply = _binary_infer(gateway, "transformer_decoder", feeds)
    assert reply.status_code == 413 and "(past_len) holds 65" in reply.json()["error"], reply.text[:300]


def test_bool_binary_data_is_bytes_0_and_1_as_the_binary_extension_defines_it() -> None:
    """A byte 2 read as True by numpy read otherwise by the GRU decoder's graph (a different answer)."""
    np.testing.assert_array_equal(from_bytes(b"\x00\x01", "BOOL", [1, 2], tensor="m"), [[False, True]])
    assert from_bytes(b"", "BOOL", [1, 0], tensor="m").shape == (1, 0)
    for byte in (b"\x02", b"\xff"):
        with pytest.raises(BadRequest, match=r"tensor 'm': BOOL binary data must be bytes 0 \(false\) or 1"):
            from_bytes(b"\x01" + byte, "BOOL", [1, 2], tensor="m")


def test_a_recurrent_decoders_mask_sent_as_other_bytes_is_refused(repository, gateway) -> None:
    feeds = _step_feeds(repository, "gru_attention_decoder", rows=1, sizes={"src_len": 4})
    feeds["src_mask"] = np.array([[1, 1, 0, 1]], np.uint8).view(np.bool_)
    assert _binary_infer(gateway, "gru_attention_decoder", feeds).status_code == 200
    feeds["src_mask"] = np.array([[2, 2, 0, 2]], np.uint8).view(np.bool_)
    reply = _binary_infer(gateway, "gru_attention_decoder", feeds)
    assert reply.status_code == 400 and "'src_mask'" in reply.json()["error"], reply.text[:300]


def _helper_pids(offload: JsonOffload) -> set[int]:
    pool = offload._pool
    return set() if pool is None else {p.pid for p in (pool._processes or {}).values()}


def test_a_large_json_answer_is_written_by_the_helper_as_it_is_in_place() -> None:
    outputs = {"y": np.arange(40, dtype=np.float32).reshape(4, 10) / 7, "z": np.ones((4, 3), np.int64)}
    response = InferResponse("m", "1", outputs, "r1")
    request = InferRequest("m", {"x": np.zeros((4, 1000), np.float32)}, request_id="r1")
    offload = JsonOffload(offload_bytes=64)
    try:
        for parsed in (
            ParsedInfer(request, None, False),
            ParsedInfer(request, [RequestedOutput("y", False), RequestedOutput("z", True)], False),
        ):
            answer = asyncio.run(offload.encode_infer(response, parsed))
            assert answer == encode_infer(response, parsed)
        helpers = _helper_pids(offload)
        assert helpers and os.getpid() not in helpers
    finally:
        offload.close()
    in_place = JsonOffload(offload_bytes=64)
    parsed = ParsedInfer(request, None, True)  # every output in binary: no JSON values to write
    assert asyncio.run(in_place.encode_infer(response, parsed)) == encode_infer(response, parsed)
    assert not _helper_pids(in_place)


def test_the_infer_route_writes_a_large_json_answer_off_the_event_loop(tmp_path) -> None:
    """A binary request (parsed in place) whose outputs are asked as JSON past json_offload_bytes."""
    repository = build_classifier_repository(tmp_path / "repo")
    app = create_app(Settings(model_repository=repository, grpc_port=0, json_offload_bytes=400))
    images = np.random.default_rng(3).integers(0, 256, (MAX_BATCH, SIZE, SIZE, 1), dtype=np.uint8)
    tensor = {"name": "images", "datatype": "UINT8", "shape": list(images.shape)}
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": images.size}}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": False}}],
        }
    ).encode()
    assert len(header) < 400  # parsed in place
    with LiveServer(app) as live:
        reply = httpx.post(
            f"http://{live.url}/v2/models/lenet/infer",
            content=header + images.tobytes(),
            headers={HEADER_LENGTH: str(len(header))},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        (logits,) = reply.json()["outputs"]
        assert logits["shape"][0] == MAX_BATCH and len(logits["data"]) == MAX_BATCH * logits["shape"][1]
        helpers = _helper_pids(app.state.json_offload)
        assert helpers and os.getpid() not in helpers
