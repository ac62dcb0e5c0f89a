"""The python flavour against the gateway on what a client may send a translator's step entry, and the
flavour's output directory: found by running the real Triton 2.51 beside the gateway on one repository.

The repository is one hand-built ONNX entry shaped like a decoder step (a cache and its mask sharing
the ``past_len`` axis, a source on ``src_len``) with the kiln.json fields the limits come from, so no
model is trained and Triton loads a single small python model.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from serving.triton import TritonServer, derive_python_flavour, find_triton
from tests.repo_fixtures import LiveServer, running_triton
from tests.test_triton_audit import _TensorRequest
from tests.test_triton_translator_model import _Error, stand_in_pb_utils

pytestmark = pytest.mark.triton
MODEL = "step"
LONGEST = 4  # kiln.json step_spec.max_positions
CONFIG = f"""name: "{MODEL}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input {{ name: "cache" data_type: TYPE_FP32 dims: [-1, 2] }}
input {{ name: "mask" data_type: TYPE_BOOL dims: [-1] }}
input {{ name: "src" data_type: TYPE_INT64 dims: [-1] }}
output {{ name: "cache_out" data_type: TYPE_FP32 dims: [-1, 2] }}
output {{ name: "mask_out" data_type: TYPE_BOOL dims: [-1] }}
output {{ name: "src_out" data_type: TYPE_INT64 dims: [-1] }}
instance_group {{ count: 1 kind: KIND_CPU }}
"""
KILN = {
    "step_spec": {"max_positions": LONGEST},
    "parity": {"checks": [{"sizes": {"batch": 1, "past_len": 0, "src_len": 3}}]},
}


def _step_graph(path: Path) -> None:
    """cache [batch, past_len, 2], mask [batch, past_len], src [batch, src_len], each out as it came."""
    import onnx
    from onnx import TensorProto, helper

    tensors = (
        ("cache", TensorProto.FLOAT, ["batch", "past_len", 2]),
        ("mask", TensorProto.BOOL, ["batch", "past_len"]),
        ("src", TensorProto.INT64, ["batch", "src_len"]),
    )
    inputs = [helper.make_tensor_value_info(name, kind, shape) for name, kind, shape in tensors]
    outputs = [helper.make_tensor_value_info(f"{name}_out", kind, shape) for name, kind, shape in tensors]
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name, _, _ in tensors]
    graph = helper.make_graph(nodes, MODEL, inputs, outputs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _build_repository(root: Path) -> Path:
    entry = root / MODEL
    (entry / "1").mkdir(parents=True)
    _step_graph(entry / "1" / "model.onnx")
    (entry / "config.pbtxt").write_text(CONFIG)
    (entry / "kiln.json").write_text(json.dumps(KILN))
    return root


def feeds(past: int = 2, mask_past: int | None = None, src: int = 3) -> dict[str, np.ndarray]:
    """One request's inputs; ``mask_past`` gives the mask another past_len than the cache."""
    return {
        "cache": np.arange(past * 2, dtype=np.float32).reshape(1, past, 2),
        "mask": np.ones((1, past if mask_past is None else mask_past), bool),
        "src": np.arange(src, dtype=np.int64)[None],
    }


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_repository(tmp_path_factory.mktemp("step-repo"))


@pytest.fixture(scope="module")
def triton(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with running_triton(repository, tmp_path_factory.mktemp("triton")) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(repository: Path) -> Iterator[LiveServer]:
    from serving.app import create_app
    from serving.settings import Settings

    with LiveServer(create_app(Settings(model_repository=repository, grpc_port=0))) as server:
        yield server


def infer(url: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray] | tuple[str, str]:
    """The outputs, or (status, message) of the error, as a tritonclient user reads them."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    tensors = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    with httpclient.InferenceServerClient(url) as client:
        try:
            result = client.infer(MODEL, tensors)
        except InferenceServerException as error:
            return error.status(), error.message()
    return {f"{name}_out": result.as_numpy(f"{name}_out") for name in arrays}


def _refusals(triton: TritonServer, gateway: LiveServer, arrays: dict[str, np.ndarray]) -> list[tuple]:
    return [infer(url, arrays) for url in (triton.http_url, gateway.url)]


def test_an_axis_longer_than_the_model_takes_is_refused_as_the_gateway_refuses_it(triton, gateway) -> None:
    """The flavour ran any length: a GRU encoder over 100 000 tokens answered 128 MB and kept its
    stub at 750 MB (a 64 MB request, under Triton's body limit, asks ~10 GB of it), and a Transformer's
    failed with 'GatherND ... invalid index found, index = 256', naming no limit. The gateway refuses
    them (413) naming the axis and the limit; Triton now says the same (400: it has no 413)."""
    (t_status, t_message), (g_status, g_message) = _refusals(triton, gateway, feeds(past=LONGEST + 1))
    assert (t_status, g_status) == ("400", "413")
    assert (
        t_message
        == g_message
        == (
            f"input 'cache': dimension 1 (past_len) holds {LONGEST + 1} in shape [1, {LONGEST + 1}, 2]: "
            f"model '{MODEL}' takes at most {LONGEST}"
        )
    )
    (_, on_src), _ = _refusals(triton, gateway, feeds(src=LONGEST + 1))
    assert "dimension 1 (src_len) holds 5" in on_src
    at_limit = feeds(past=LONGEST, src=LONGEST)
    answered, reference = _refusals(triton, gateway, at_limit)
    for name, array in at_limit.items():  # the longest the model takes still runs, on both alike
        assert np.array_equal(answered[f"{name}_out"], array) and np.array_equal(
            reference[f"{name}_out"], array
        )


@pytest.mark.parametrize(("past", "mask_past"), [(3, 1), (1, 3)])
def test_inputs_disagreeing_on_a_named_axis_are_refused_as_the_gateway_refuses_them(
    triton, gateway, past: int, mask_past: int
) -> None:
    """A cache of 3 positions with a mask of 1 was run by ONNX Runtime (a decoder step broadcasts the
    mask: a 200 with a wrong answer), and a cache of 1 with a mask of 3 failed as INTERNAL (500,
    'MatMul dimension mismatch'), both a client's mistake the gateway names (400)."""
    (t_status, t_message), (g_status, g_message) = _refusals(triton, gateway, feeds(past, mask_past))
    assert t_status == g_status == "400"
    assert (
        t_message
        == g_message
        == (f"inputs 'cache' and 'mask' disagree on the model's past_len axis: {past} and {mask_past}")
    )
    answered = infer(triton.http_url, feeds(past=2))  # the instance serves the next request
    assert answered["mask_out"].shape == (1, 2)


@pytest.fixture
def onnx_model(monkeypatch: pytest.MonkeyPatch):
    """serving/triton/onnx_model.py (the module the flavour copies) bound to a stand-in pb_utils."""
    utils = stand_in_pb_utils(monkeypatch, lambda request, name: request.arrays[name])
    dtypes = {"TYPE_INT64": np.int64, "TYPE_FP32": np.float32, "TYPE_BOOL": np.bool_}
    utils.triton_string_to_numpy = dtypes.__getitem__
    monkeypatch.delitem(sys.modules, "serving.triton.onnx_model", raising=False)
    yield importlib.import_module("serving.triton.onnx_model")
    sys.modules.pop("serving.triton.onnx_model", None)


def _initialized(module, root: Path):  # noqa: ANN001, ANN202
    return initialized_model(module, _build_repository(root) / MODEL)


def initialized_model(module, entry: Path):  # noqa: ANN001, ANN202
    """``module``'s TritonPythonModel initialized on ``entry`` as Triton would (its flavoured config)."""
    from google.protobuf import json_format

    from serving.triton.flavour import python_config, read_config

    config = python_config(read_config(entry / "config.pbtxt"))
    instance = module.TritonPythonModel()
    instance.initialize(
        {
            "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
            "model_repository": str(entry),
            "model_version": "1",
        }
    )
    return instance


def test_a_refused_request_leaves_the_others_of_its_batch_answered(onnx_model, tmp_path: Path) -> None:
    """With dynamic batching Triton hands several requests to one execute(): a request refused for its
    axes is answered alone, and the others run merged as before."""
    instance = _initialized(onnx_model, tmp_path)
    requests = [_TensorRequest(**feeds()), _TensorRequest(**feeds(3, 1)), _TensorRequest(**feeds())]
    first, refused, last = instance.execute(requests)
    assert refused.error is not None and refused.error.code == _Error.INVALID_ARG
    assert "disagree on the model's past_len axis" in refused.error.message
    assert first.error is None and last.error is None
    assert [name for name, _ in last.outputs] == ["cache_out", "mask_out", "src_out"]
    assert np.array_equal(dict(last.outputs)["cache_out"], feeds()["cache"])


def _export_like(root: Path) -> Path:
    """A directory holding what a user keeps: an exported entry and a file of their own."""
    _build_repository(root)
    (root / "notes.txt").write_text("mine\n")
    return root


def test_the_flavour_refuses_to_replace_a_directory_it_did_not_write(repository, tmp_path: Path) -> None:
    """The flavour goes to ``<workdir>/model_repository`` and replaced whatever was there: ``--workdir
    .`` in a project deleted its exported model_repository (and anything else in it) without a word."""
    kept = _export_like(tmp_path / "work" / "model_repository")
    with pytest.raises(FileExistsError, match="is not a python flavour written by Kiln"):
        derive_python_flavour(repository, kept)
    assert (kept / "notes.txt").read_text() == "mine\n" and (kept / MODEL / "1" / "model.onnx").is_file()
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    with pytest.raises(FileExistsError):
        derive_python_flavour(repository, not_a_directory)


def test_the_flavour_replaces_its_own_output(repository, tmp_path: Path) -> None:
    output = tmp_path / "flavour"
    output.mkdir()  # an empty directory is free to use
    derive_python_flavour(repository, output)
    shutil.copytree(output / MODEL, output / "gone")  # what an earlier flavour had and this one does not
    derive_python_flavour(repository, output)
    assert sorted(p.name for p in output.iterdir()) == [MODEL]
    assert (output / MODEL / "1" / "model.py").is_file()


def test_the_launcher_names_a_workdir_holding_something_else_and_keeps_it(
    repository, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.triton.__main__ import main

    if find_triton() is None:
        pytest.skip("the tritonserver binary from nvidia-pytriton is not installed")

    def launch(*_: object) -> None:
        raise AssertionError("Triton was started over a directory the flavour did not write")

    monkeypatch.setattr(TritonServer, "_launch", launch)  # else a regression serves until interrupted
    kept = _export_like(tmp_path / "model_repository")
    argv = ["--model-repository", str(repository), "--workdir", str(tmp_path)]
    assert main([*argv, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]) == 1
    assert "is not a python flavour written by Kiln" in " ".join(capsys.readouterr().err.split())
    assert (kept / "notes.txt").is_file()
