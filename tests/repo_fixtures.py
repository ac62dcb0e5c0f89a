"""Build a tiny classifier model repository for gateway tests (reused by the gRPC/Triton tests).

The repository is the real export output (``export.pipeline.export_checkpoint``) of random-init
registry models saved as checkpoints, so the gateway is always tested on what export really writes.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import torch
from hypothesis import HealthCheck, settings

from serving.process_tree import maker_gone, maker_prefix

LABELS = ("zero", "one", "two")
SIZE, CHANNELS, MAX_BATCH = 16, 1, 8


# the name's start of build_classifier_repository's kept exports in TMPDIR (then its maker: maker_prefix)
KEPT_PREFIX = "kiln-test-repository-"
# build_classifier_repository's exports in this process, by its arguments: the repository, torch's RNG after
_EXPORTED: dict[str, tuple[Path, torch.Tensor]] = {}


def build_classifier_repository(
    root: Path, models: tuple[str, ...] = ("lenet",), *, size: int = SIZE, model_args: dict | None = None
) -> Path:
    """Create ``root`` as a model repository holding one tiny classifier per name in ``models``
    (``model_args``: per-name constructor overrides, e.g. smaller widths), its checkpoints in
    ``<root>-checkpoints`` beside it.

    ~40 modules ask for the same repository, each export ~2-4 s of torch.onnx: the first export of
    these arguments in this process is kept, and a later call gets a copy of its files (the same
    weights, graphs and checksums; each entry's kiln.json names the copy's checkpoint, as an export
    there writes it), and torch's RNG left as the export leaves it. A ``root`` or checkpoint folder
    that already holds files is exported into for real."""
    root = Path(root)
    checkpoints = root.parent / f"{root.name}-checkpoints"
    key = json.dumps([list(models), size, model_args or {}], sort_keys=True)
    if any(folder.is_dir() and any(folder.iterdir()) for folder in (root, checkpoints)):
        return _export_classifiers(root, models, size, model_args)
    if key not in _EXPORTED:
        sweep_killed_runs_repositories()
        kept = Path(tempfile.mkdtemp(prefix=maker_prefix(KEPT_PREFIX))) / "repo"
        atexit.register(shutil.rmtree, kept.parent, True)
        _EXPORTED[key] = (_export_classifiers(kept, models, size, model_args), torch.get_rng_state())
    kept, rng = _EXPORTED[key]
    shutil.copytree(kept, root, copy_function=shutil.copy, dirs_exist_ok=True)
    kept_checkpoints = kept.parent / "repo-checkpoints"
    shutil.copytree(kept_checkpoints, checkpoints, copy_function=shutil.copy, dirs_exist_ok=True)
    for meta_path in root.glob("*/kiln.json"):  # rewritten as export writes it
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        source = Path(meta["source_checkpoint"]["path"]).relative_to(kept_checkpoints)
        meta["source_checkpoint"]["path"] = str(checkpoints / source)
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    torch.set_rng_state(rng)
    return root


def sweep_killed_runs_repositories(root: Path | None = None) -> list[Path]:
    """Remove the kept repositories (:func:`build_classifier_repository`) in ``root`` (TMPDIR) of test
    processes that have ended: their ``atexit`` removal never ran where the run was killed (a CI job's
    hard timeout, ``kill -9``), and each such run left one more for good."""
    swept = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{KEPT_PREFIX}*-*"):
        if maker_gone(path.name[len(KEPT_PREFIX) :]) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            swept.append(path)
    return swept


def _export_classifiers(root: Path, models: tuple[str, ...], size: int, model_args: dict | None) -> Path:
    """Export the tiny classifiers ``models`` into ``root``, their checkpoints in ``<root>-checkpoints``."""
    root.mkdir(parents=True, exist_ok=True)
    from export.pipeline import export_checkpoint

    for seed, name in enumerate(models):
        path = root.parent / f"{root.name}-checkpoints" / f"{name}.pt"
        checkpoint = _tiny_checkpoint(path, name, seed, size, (model_args or {}).get(name, {}))
        export_checkpoint(checkpoint, root, max_batch_size=MAX_BATCH, tensorrt="off", name=name)
    return root


def _tiny_checkpoint(path: Path, name: str, seed: int, size: int = SIZE, extra: dict | None = None) -> Path:
    """A random-init registry model saved as a contract-1 checkpoint (no training)."""
    import torch

    from training.checkpoint import make_checkpoint, save_checkpoint
    from training.models import build_model

    torch.manual_seed(seed)
    args = {"num_classes": len(LABELS), "in_channels": CHANNELS, **(extra or {})}
    preprocessing = {"input_size": [size, size], "channels": CHANNELS, "mean": [0.5], "std": [0.25]}
    ckpt = make_checkpoint(
        task="classify",
        model_name=name,
        model_args=args,
        model=build_model(name, **args),
        train_config={"note": "random init for gateway tests"},
        metrics={},
        preprocessing=preprocessing,
        labels=list(LABELS),
    )
    return save_checkpoint(ckpt, path)


def write_onnx_entry(root: Path, graph: Any, config: str) -> Path:
    """A repository entry named as ``graph`` is: the graph saved as version 1 (opset 17), ``config``
    as its config.pbtxt; returns ``root``."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / graph.name / "1").mkdir(parents=True)
    onnx.save(model, root / graph.name / "1" / "model.onnx")
    (root / graph.name / "config.pbtxt").write_text(config)
    return root


IDENTITY_CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [{{ name: "x" data_type: TYPE_FP32 dims: [ 2 ] }}]
output [{{ name: "y" data_type: TYPE_FP32 dims: [ 2 ] }}]
"""


def write_identity_entries(root: Path, names: Any) -> Path:
    """An entry per name of ``names``: a tiny FP32 identity graph (``x`` [n, 2] -> ``y``), batched up to
    4 (:data:`IDENTITY_CONFIG`); returns ``root``."""
    from onnx import TensorProto, helper

    for name in names:
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        )
        write_onnx_entry(root, graph, IDENTITY_CONFIG.format(name=name))
    return root


@contextmanager
def repository_client(repository: Path) -> Iterator[Any]:
    """A TestClient over the gateway's app serving ``repository`` (no gRPC port), started and stopped."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings

    with TestClient(create_app(Settings(model_repository=repository, grpc_port=0))) as client:
        yield client


def write_entry_without_model(root: Path, name: str, config: str) -> Path:
    """An entry ``name`` whose config.pbtxt is ``config`` and whose version 1 lacks its model.onnx (its
    config reads, its load fails in the backend); returns ``root``."""
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "README").write_text("the model.onnx went missing")
    (root / name / "config.pbtxt").write_text(config)
    return root


@contextmanager
def held_grpc_port() -> Iterator[int]:
    """A port for an in-process gateway's gRPC server (``Settings(grpc_port=port, reuse_port=True)``),
    held until the block ends: bound with SO_REUSEPORT and never listening, so that server binds it
    beside this socket and no other server can take it in between (servers bind ports they hold)."""
    from serving.triton.ports import held_port

    sock = held_port(reuse_port=True)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


class LiveServer:
    """Run an ASGI app with uvicorn in a background thread on a free 127.0.0.1 port (a context manager)."""

    def __init__(
        self,
        app: object,
        http: object | None = None,
        keep_alive_s: int = 300,
        log_level: str = "warning",
        start_timeout_s: float = 60.0,
        server_class: type | None = None,
    ) -> None:
        """``server_class``: the uvicorn server to run (default ``uvicorn.Server``; the gateway's own
        ``serving.app.GatewayServer`` where a test reads what it adds)."""
        from serving.triton.ports import held_port

        self.socket = held_port()  # held until uvicorn serves on it: no other server can take it
        self.port = self.socket.getsockname()[1]
        self.app = app
        self.http = http  # uvicorn's HTTP protocol; None: the gateway's (serving.protocol.http1)
        self.keep_alive_s = keep_alive_s
        self.log_level = log_level  # "info" and below: uvicorn's access log on, as `python -m serving` has it
        self.url = f"127.0.0.1:{self.port}"
        self.start_timeout_s = start_timeout_s  # a failure bound, never waited out by a server that starts
        self.server_class = server_class

    def __enter__(self) -> LiveServer:
        import threading
        import time

        import uvicorn

        from serving.protocol.http1 import http_protocol

        # Keep-alive longer than any test: uvicorn's 5 s default closes a connection whose next request
        # a stalled loop has not read yet (its timer runs before the read), and the client gets a reset.
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level=self.log_level,
            lifespan="on",
            timeout_keep_alive=self.keep_alive_s,
            http=self.http or http_protocol(),
        )
        self.server = (self.server_class or uvicorn.Server)(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.__exit__()  # __exit__ is not called when __enter__ raises: stop and free the port here
                ended = "its start-up failed (see the log)" if not self.thread.is_alive() else "timed out"
                raise RuntimeError(f"the gateway did not start: {ended}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)  # a failure bound: a start-up that hangs leaves a daemon thread
        self.socket.close()


@contextmanager
def classifier_gateway(directory: Path) -> Iterator[LiveServer]:
    """A gateway over a tiny classifier repository built in ``directory``, its gRPC server on a port it
    holds (``live.grpc_url``)."""
    from serving.app import create_app
    from serving.settings import Settings

    repository = build_classifier_repository(directory / "repo")
    with held_grpc_port() as grpc_port:
        config = Settings(model_repository=repository, grpc_port=grpc_port, reuse_port=True)
        with LiveServer(create_app(config)) as live:
            live.grpc_url = f"127.0.0.1:{grpc_port}"
            yield live


@contextmanager
def running_triton(repository: Path, workdir: Path) -> Iterator[Any]:
    """The real Triton over ``repository`` (its python flavour in ``workdir``); the test skips where the
    tritonserver binary from nvidia-pytriton is not installed."""
    import pytest

    from serving.triton import TritonServer, find_triton

    if find_triton() is None:
        pytest.skip("the tritonserver binary from nvidia-pytriton is not installed")
    with TritonServer(repository, workdir) as server:
        yield server


def wire_fuzz_settings(suite_examples: int) -> settings:
    """Hypothesis settings of the generated wire-input tests: ``suite_examples`` derandomized cases
    (the same every run: no flake), or ``KILN_WIRE_FUZZ_EXAMPLES`` of them explored at random."""
    examples = int(os.environ.get("KILN_WIRE_FUZZ_EXAMPLES", suite_examples))
    return settings(
        max_examples=examples,
        derandomize=examples <= suite_examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


def infer_or_refusal(stub: Any, request: Any, allowed: set, seen: dict[str, int], timeout: float) -> Any:
    """``stub.ModelInfer(request)``: its response, or None when refused with one of the ``allowed``
    status codes and a message (anything else fails the test); ``seen`` counts outcomes by name."""
    try:
        response = stub.ModelInfer(request, timeout=timeout)
    except grpc.RpcError as error:
        assert error.code() in allowed, (error.code(), error.details(), request)
        assert error.details(), request
        seen[error.code().name] = seen.get(error.code().name, 0) + 1
        return None
    seen["OK"] = seen.get("OK", 0) + 1
    return response
