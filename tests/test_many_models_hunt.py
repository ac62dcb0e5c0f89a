"""A gateway over many models, as an engineer serving a whole repository meets it: a worker of several
that is still loading its models, and a model of dynamic axes whose load-time warm-up guesses shapes
its graph refuses."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from onnx import TensorProto, helper, numpy_helper

from serving.app import GatewayServer, create_app
from serving.execution.base import InferRequest
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions
from serving.execution.ort_sessions import warm_up
from serving.execution.repository import Repository
from serving.settings import Settings
from serving.workers import reuse_port_socket
from tests.repo_fixtures import write_onnx_entry
from tests.waiting import DEADLINE_S, eventually


class Gated:
    """An ONNX Runtime backend whose start waits for the test's word (models that take long to load)."""

    def __init__(self, repository: Path) -> None:
        self.inner = OnnxRuntimeBackend(Repository(repository))
        self.loading, self.loaded = threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def start(self) -> None:
        self.loading.set()
        await asyncio.get_running_loop().run_in_executor(None, self.loaded.wait, DEADLINE_S)
        await self.inner.start()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_worker_still_loading_its_models_refuses_connections_instead_of_holding_them(tmp_path):
    """A worker of ``--workers N`` listened on its SO_REUSEPORT socket from before its models loaded: the
    kernel gave it its share of new connections, which sat unanswered in its backlog, a readiness
    probe's included, for as long as the load took (a lone gateway, which binds once loaded, refuses
    them). It now listens once loaded, as that socket is bound by ``python -m serving --reuse-port``."""
    backend = Gated(tmp_path)
    app = create_app(Settings(model_repository=tmp_path, grpc_port=0), backend=backend)
    sock = reuse_port_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = GatewayServer(uvicorn.Config(app, lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert backend.loading.wait(DEADLINE_S)
        assert _refused(port), "a worker loading its models took a connection it could not answer"
        backend.loaded.set()
        assert eventually(lambda: server.started)
        assert httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=10).status_code == 200
    finally:
        backend.loaded.set()
        server.should_exit = True
        thread.join(DEADLINE_S)
        sock.close()
    assert not thread.is_alive()


def _flatten_into_matmul(root: Path, config_tail: str = "") -> Path:
    """An entry ``dynhw`` whose image axes are dynamic in its graph and config, flattened into a MatMul
    that takes 4 x 4 images only (as a classifier exported with dynamic height and width is)."""
    weights = numpy_helper.from_array(np.arange(48, dtype=np.float32).reshape(16, 3) / 48, "W")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("MatMul", ["f", "W"], ["y"])],
        "dynhw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [weights],
    )
    config = (
        'name: "dynhw"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input { name: "x" data_type: TYPE_FP32 dims: [1, -1, -1] }\n'
        'output { name: "y" data_type: TYPE_FP32 dims: 3 }\n' + config_tail
    )
    return write_onnx_entry(root, graph, config)


WARMED_SESSIONS = {
    # the default on a machine of 2 CPUs or more: a lone-request session, warmed at one row
    "lone-request session": ("", OrtOptions(lone_request_threads=2), [1]),
    # the default on a GPU: one session per bucket, each warmed at its size
    "bucket sessions": (
        'parameters { key: "kiln_bucketing" value { string_value: "1" } }\n'
        "dynamic_batching { preferred_batch_size: [2, 4] }\n",
        OrtOptions(lone_request_threads=0),
        [2, 4, 8],
    ),
}


@pytest.mark.parametrize("sessions", sorted(WARMED_SESSIONS))
def test_a_model_of_dynamic_axes_its_warm_up_cannot_guess_still_loads_and_answers(tmp_path, sessions, caplog):
    """The warm-up feeds zeros of length 1 on every dynamic axis: a graph that takes only its real image
    size refused them, and the model failed to load although it answers every input of that size
    (with ``--lone-request-threads 0``, or on a 1-CPU machine, it loaded and served)."""
    tail, options, warmed = WARMED_SESSIONS[sessions]
    root = _flatten_into_matmul(tmp_path, tail)
    images = np.linspace(0, 1, 3 * 16, dtype=np.float32).reshape(3, 1, 4, 4)
    want = images.reshape(3, 16) @ (np.arange(48, dtype=np.float32).reshape(16, 3) / 48)

    async def serve() -> tuple[bool, dict[str, str], list[np.ndarray]]:
        backend = OnnxRuntimeBackend(Repository(root), options)
        await backend.start()
        try:
            answers = [
                (await backend.infer(InferRequest("dynhw", {"x": images[:rows]}))).outputs["y"]
                for rows in (1, 3)
            ]
            return await backend.is_ready(), dict(backend._failed), answers
        finally:
            await backend.stop()

    with caplog.at_level(logging.WARNING, logger="serving.execution.onnxruntime"):
        ready, failed, answers = asyncio.run(serve())
    assert ready and failed == {}
    np.testing.assert_allclose(answers[0], want[:1], rtol=1e-5)
    np.testing.assert_allclose(answers[1], want, rtol=1e-5)
    for rows in warmed:  # said, for each session left to plan at its first request
        assert f"model dynhw: its {rows}-row session is not warmed at load (inputs ['x']" in caplog.text


def test_a_graph_of_fixed_axes_that_fails_its_warm_up_still_fails_to_load():
    """Zeros of a graph's own fixed shape are an input it must take: its failure is the model's, raised
    (the load fails, naming it), not waved through to fail every request."""

    class Broken:
        def get_inputs(self) -> list[Any]:
            return [SimpleNamespace(name="images", shape=["batch", 4, 4, 1], type="tensor(uint8)")]

        def run(self, names: Any, feeds: Any) -> Any:
            raise RuntimeError("the graph is broken")

    with pytest.raises(RuntimeError, match="the graph is broken"):
        warm_up(Broken(), 1, "broken")
