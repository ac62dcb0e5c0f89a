"""tritonclient.http talks to the gateway unchanged: health, metadata, config, infer, classification."""

from __future__ import annotations

import gzip
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from serving.app import create_app
from serving.execution.repository import as_triton_shows
from serving.protocol import limits
from serving.settings import Settings
from tests.repo_fixtures import CHANNELS, LABELS, SIZE, LiveServer, build_classifier_repository


@pytest.fixture(scope="session")
def repository(tmp_path_factory):
    return build_classifier_repository(tmp_path_factory.mktemp("kserve") / "repo")


@pytest.fixture(scope="module")
def server(repository):
    settings = Settings(model_repository=repository, grpc_port=0, intra_op_threads=1)
    with LiveServer(create_app(settings)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    client = httpclient.InferenceServerClient(server.url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def direct(repository):
    """ONNX Runtime on the same model.onnx, called directly: the reference every answer must equal."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(repository / "lenet" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return lambda images: dict(
        zip(
            ["logits", "probabilities"],
            session.run(["logits", "probabilities"], {"images": images}),
            strict=True,
        )
    )


def images(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, SIZE, SIZE, CHANNELS), dtype=np.uint8)


def test_server_is_live_and_ready_and_names_its_extensions(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("lenet")
    assert not client.is_model_ready("lenet", "7")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


def test_the_repository_index_lists_the_models_as_triton_does(client, server):
    import httpx

    assert client.get_model_repository_index() == [
        {"name": "lenet", "version": "1", "state": "READY", "reason": ""}
    ]
    url = f"http://{server.url}/v2/repository/index"
    assert httpx.post(url, json={"ready": True}).json() == client.get_model_repository_index()
    bad = httpx.post(url, content=b"[1, 2]")
    assert bad.status_code == 400 and "JSON object" in bad.json()["error"]
    assert "model_repository" not in client.get_server_metadata()["extensions"]  # no load or unload


def test_tritons_routes_of_extensions_not_served_answer_501_saying_what_to_do(server):
    import httpx

    base = f"http://{server.url}/v2"
    for method, path, words in (
        ("POST", "/systemsharedmemory/region/r/register", "without --shared-memory"),
        ("GET", "/systemsharedmemory/status", "without --shared-memory"),
        ("POST", "/cudasharedmemory/region/r/unregister", "without --shared-memory"),
        ("POST", "/repository/models/lenet/load", "serves the repository it started with"),
        ("GET", "/trace/setting", "no trace extension"),
        ("POST", "/models/lenet/trace/setting", "no trace extension"),
        ("GET", "/logging", "--log-level"),
    ):
        reply = httpx.request(method, base + path, json={})
        assert reply.status_code == 501, (path, reply.text)
        assert words in reply.json()["error"] and path in reply.json()["error"]
    assert httpx.get(f"{base}/models/lenet").status_code == 200  # its neighbours still served


def test_model_metadata_lists_batched_shapes_like_triton(client):
    meta = client.get_model_metadata("lenet")
    assert meta["name"] == "lenet" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, SIZE, SIZE, CHANNELS]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities"]
    assert client.get_model_metadata("lenet", "1")["name"] == "lenet"


def test_model_config_parses_back_into_the_config_pbtxt(client, repository):
    config = client.get_model_config("lenet")
    expected = model_config_pb2.ModelConfig()
    text_format.Parse((repository / "lenet" / "config.pbtxt").read_text(), expected)
    shown = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    keys = ("kiln_provider", "kiln_device", "kiln_buckets", "kiln_cuda_graph_replay")
    placement = {key: shown.parameters[key].string_value for key in keys}
    assert placement == {
        "kiln_provider": "CPUExecutionProvider",
        "kiln_device": "cpu",
        "kiln_buckets": "off",
        "kiln_cuda_graph_replay": "off",
    }
    for key in placement:  # where the model runs is added; everything else is the config.pbtxt
        del shown.parameters[key]
    assert shown == as_triton_shows(expected)  # with what Triton fills in: backend, group names
    assert shown.backend == "onnxruntime" and [g.name for g in shown.instance_group] == ["lenet_0"]
    assert config["max_batch_size"] == 8


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_of_uint8_images_equals_onnxruntime_called_directly(client, direct, binary):
    batch = images(3, seed=1)
    tensor = httpclient.InferInput("images", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("logits", "probabilities")]
    result = client.infer("lenet", [tensor], outputs=outputs, request_id="r1")
    reference = direct(batch)
    for name in ("logits", "probabilities"):
        np.testing.assert_allclose(result.as_numpy(name), reference[name], rtol=1e-5, atol=1e-6)
    assert result.get_response()["id"] == "r1"


def test_infer_without_requested_outputs_returns_every_output_in_binary(client, direct):
    batch = images(2, seed=2)
    tensor = httpclient.InferInput("images", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    result = client.infer("lenet", [tensor], model_version="1")
    np.testing.assert_allclose(result.as_numpy("logits"), direct(batch)["logits"], rtol=1e-5, atol=1e-6)
    assert "binary_data_size" in result.get_output("probabilities")["parameters"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension_returns_score_index_label_strings(client, direct, binary):
    batch = images(2, seed=3)
    tensor = httpclient.InferInput("images", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    output = httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)
    result = client.infer("lenet", [tensor], outputs=[output])
    classes = result.as_numpy("probabilities")
    assert classes.shape == (2, 2)
    probabilities = direct(batch)["probabilities"]
    for row, entries in enumerate(classes):
        score, index, label = (entries[0].decode() if isinstance(entries[0], bytes) else entries[0]).split(
            ":"
        )
        assert int(index) == int(np.argmax(probabilities[row]))
        assert label == LABELS[int(index)]
        assert float(score) == pytest.approx(float(probabilities[row].max()), abs=1e-6)


def test_compressed_requests_are_accepted(client, direct):
    batch = images(1, seed=4)
    tensor = httpclient.InferInput("images", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    result = client.infer("lenet", [tensor], request_compression_algorithm="gzip")
    np.testing.assert_allclose(result.as_numpy("logits"), direct(batch)["logits"], rtol=1e-5, atol=1e-6)


def test_a_body_inflating_past_what_the_loop_takes_is_inflated_in_a_thread_and_answered_the_same(
    server, inflation_threads
):
    """A gzip body inflating past LOOP_INFLATE_BYTES held the event loop (every other request of the
    worker) while it inflated; now it inflates in a thread, as gRPC's do, and gets its plain answer."""
    threads = inflation_threads
    batch = images(2, seed=5)
    tensor = {
        "name": "images",
        "shape": list(batch.shape),
        "datatype": "UINT8",
        "data": batch.ravel().tolist(),
    }
    body = (
        json.dumps({"inputs": [tensor]}).encode() + b" " * limits.LOOP_INFLATE_BYTES
    )  # JSON may end in spaces
    url = f"http://{server.url}/v2/models/lenet/infer"
    plain = httpx.post(url, content=body, timeout=60)
    packed = httpx.post(url, content=gzip.compress(body), headers={"content-encoding": "gzip"}, timeout=60)
    assert plain.status_code == packed.status_code == 200, (plain.text, packed.text)
    assert packed.json() == plain.json()
    assert threads and server.thread.ident not in threads  # inflated, and not on the server's loop


def test_client_errors_reach_tritonclient_as_messages(client):
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")
    tensor = httpclient.InferInput("images", [1, SIZE, SIZE], "UINT8")
    tensor.set_data_from_numpy(images(1)[..., 0])
    with pytest.raises(InferenceServerException, match="expected shape"):
        client.infer("lenet", [tensor])


def test_tritons_generate_extension_shapes_each_key_as_its_input_and_answers_outputs_by_name(server, direct):
    """``/generate``: a key naming an input is its flat values, shaped by the model's metadata (256
    values a ``[-1, 16, 16, 1]`` image: one image, 512 two); outputs by name, as ONNX Runtime's."""
    base = f"http://{server.url}/v2/models/lenet"
    for batch in (1, 2):
        x = images(batch, seed=batch)
        reply = httpx.post(f"{base}/generate", json={"images": x.reshape(-1).tolist(), "id": "g"})
        assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
        got = reply.json()
        assert (got["model_name"], got["model_version"], got["id"]) == ("lenet", "1", "g")
        for output, want in direct(x).items():
            np.testing.assert_array_equal(np.asarray(got[output], np.float32), want.reshape(-1))
    one = images(1, seed=9).reshape(-1).tolist()
    streamed = httpx.post(f"{base}/versions/1/generate_stream", json={"images": one})
    assert streamed.headers["content-type"] == "text/event-stream; charset=utf-8"
    event = json.loads(streamed.text.removeprefix("data: "))
    assert event["logits"] == httpx.post(f"{base}/generate", json={"images": one}).json()["logits"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ([1, 2], "must be a JSON object"),
        ({"images": list(range(100))}, "do not fit its shape"),
        ({"images": [[1] * 256]}, "a value or a flat list"),
        ({"images": [0] * 256, "option": {"a": 1}}, "neither an input"),
        ({"images": [0] * 256, "parameters": 3}, "'parameters' must be a JSON object"),
        ({"images": [0] * 256, "k": 1, "parameters": {"k": 2}}, "given twice"),
        ({"images": [0] * 256, "id": 5}, "'id' must be a string"),
        ({"images": [300] * 256}, "out of range"),
    ],
)
def test_a_generate_request_that_does_not_map_onto_the_model_is_a_400_naming_why(server, body, words):
    reply = httpx.post(f"http://{server.url}/v2/models/lenet/generate", json=body)
    assert reply.status_code == 400, reply.text
    assert words in reply.json()["error"]
    assert httpx.post(f"http://{server.url}/v2/models/nope/generate", json={}).status_code == 404
    assert httpx.post(f"http://{server.url}/v2/models/lenet/versions/7/generate", json={}).status_code == 404


def test_a_models_config_reads_as_tritons_every_field_present_and_64_bit_integers_as_numbers() -> None:
    """protobuf's JSON writes int64 fields as strings and leaves defaults out; Triton's endpoint does
    neither, and clients add up ``dims`` or read ``max_batch_size`` of a model without batching."""
    from tritonclient.grpc import model_config_pb2

    from serving.execution.config_json import config_json

    config = model_config_pb2.ModelConfig(name="m", max_batch_size=0)
    config.input.add(name="x", data_type=model_config_pb2.TYPE_FP32, dims=[-1, 3])
    config.dynamic_batching.max_queue_delay_microseconds = 100
    config.dynamic_batching.default_queue_policy.default_timeout_microseconds = 5
    config.dynamic_batching.priority_queue_policy[1].max_queue_size = 7
    config.parameters["p"].string_value = "v"
    shown = config_json(config)
    assert shown["max_batch_size"] == 0 and shown["input"][0]["dims"] == [-1, 3]
    assert shown["input"][0]["is_shape_tensor"] is False and shown["output"] == []
    batching = shown["dynamic_batching"]
    assert batching["max_queue_delay_microseconds"] == 100
    assert batching["default_queue_policy"]["default_timeout_microseconds"] == 5
    assert batching["priority_queue_policy"]["1"]["max_queue_size"] == 7
    assert shown["parameters"] == {"p": {"string_value": "v"}}
