"""How the embedded backend opens an ONNX Runtime session: which file (the entry's, the fused-attention
graph a :class:`GraphChoice` picks, or the weight store's optimized graph of it), with which options, on
the placement's providers; and a model's sessions per bucket, each warmed (or bound for its CUDA graph)
before the first request. Which sessions a model version gets is :mod:`serving.execution.onnxruntime`'s.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2

from serving.execution import placement
from serving.execution.base import GraphChoice, LoadingStopped
from serving.execution.bound_session import BoundSession
from serving.execution.ort_options import OrtOptions, spin_entries
from serving.execution.repository import RepositoryEntry
from serving.execution.shared_weights import WeightStore, shared_options
from serving.execution.version_policy import is_version_name

# the embedded backend's log, whichever part writes it
log = logging.getLogger("serving.execution.onnxruntime")


class SessionOpener:
    """Opens the backend's sessions with its options; ``session_factory(path, sess_options=, providers=)``
    replaces ``ort.InferenceSession`` (tests, bench). Holds the weight store while the backend serves."""

    def __init__(self, options: OrtOptions, session_factory: Any = None) -> None:
        self.options, self.session_factory = options, session_factory
        self.weights: WeightStore | None = None
        self.shared: set[Path] = set()  # model files whose sessions map one copy of the weights
        # chosen graphs that did not open: warned about once, not again for each session of the entry
        # (its batch session and every decode worker's open the same file)
        self.unopened: set[Path] = set()
        # whether a stop signal came (the backend's): a model's further instances are not opened
        self.stopping: Callable[[], bool] = lambda: False

    def open_weight_store(self) -> None:
        """Share weights from now on (``OrtOptions.share_weights``); a session factory (tests' fakes) is
        handed the entry's own file."""
        if self.options.share_weights and self.session_factory is None:
            self.weights = WeightStore(self.options.weights_dir)

    def close(self) -> None:
        if self.weights is not None:
            self.weights.close()

    def bucket_sessions(
        self, entry: RepositoryEntry, path: Path, where: placement.Placement, graph: GraphChoice | None
    ) -> list[dict[int, Any]]:
        """Each instance's session per bucket (one, keyed 0, when bucketing is off), each bucket warmed
        at its one shape: planned, or captured as a CUDA graph, before the first request (``graph``: as
        :meth:`open_chosen`)."""
        refuse_bf16(entry)
        per_instance = []
        for _ in range(placement.instance_count(entry.config)):
            if per_instance and self.stopping():  # its other instances are not worth the wait either
                raise LoadingStopped(f"model {entry.name!r}: a stop signal arrived while it loaded")
            sessions = {}
            for size in where.buckets or (0,):
                sessions[size] = self.open_chosen(entry, path, where, graph)[0]
                if not per_instance and len(sessions) == 1:  # the first: the graph the config must fit
                    check_signature(entry, sessions[size], path)
                if where.cuda_graphs:  # bound, the warm-up is the capture: its failure is the caller's
                    sessions[size] = _bound(sessions[size], size, where, entry.name)
                    sessions[size].run(None, placement.zero_inputs(sessions[size], size))
                elif size:
                    warm_up(sessions[size], size, entry.name)
            per_instance.append(sessions)
        return per_instance

    def open_chosen(
        self,
        entry: RepositoryEntry,
        path: Path,
        where: placement.Placement,
        graph: GraphChoice | None,
        intra_op_threads: int | None = None,
    ) -> tuple[Any, Path, Path]:
        """A shared session of the file ``graph`` chooses for the entry's model file ``path`` on the CPU
        provider (``path`` itself elsewhere, or without a graph), falling back to ``path`` with a warning
        when that file does not open; with the file the session opened and the one chosen."""
        chosen = graph.path(path) if graph is not None and where.provider == placement.CPU else path
        if chosen != path:
            try:
                session, source = self.open_session(chosen, where, intra_op_threads, graph=graph, shared=True)
                if chosen in self.shared:  # the entry's sessions map one copy, of the chosen graph
                    self.shared.add(path)
                return session, source, chosen
            except Exception as exc:  # noqa: BLE001 - the entry's own file still serves, slower
                level = logging.DEBUG if chosen in self.unopened else logging.WARNING
                self.unopened.add(chosen)
                log.log(
                    level, "entry %s: %s did not open (%s); using %s", entry.name, chosen.name, exc, path.name
                )
        session, source = self.open_session(path, where, intra_op_threads, shared=True)
        return session, source, path

    def open_session(
        self,
        path: Path,
        where: placement.Placement,
        intra_op_threads: int | None = None,
        *,
        spin_us: int | None = -1,
        graph: GraphChoice | None = None,
        shared: bool = False,
    ) -> tuple[Any, Path]:
        """One ONNX Runtime session on the placement's providers (``intra_op_threads`` and ``spin_us``
        override the options; a ``spin_us`` of -1 keeps ``OrtOptions.spin_us``; ``graph`` prepares the
        options for the file it chose), and the file it opened. ``shared``: on the CPU provider, the
        session opens the weight store's optimized graph of ``path`` and maps the weights every other
        shared session of ``path`` maps (``OrtOptions.share_weights``); else ``path`` itself."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = (
            self.options.intra_op_threads if intra_op_threads is None else intra_op_threads
        )
        opts.inter_op_num_threads = self.options.inter_op_threads
        if graph is not None:
            graph.prepare(path, opts)
        spin = self.options.spin_us if spin_us == -1 else spin_us
        for key, value in spin_entries(spin, ort.__version__).items():
            opts.add_session_config_entry(key, value)
        if self.options.inter_op_threads > 1 and where.provider == placement.CPU:
            # ORT runs inter-op threads in its parallel mode alone; their spinning cannot be bounded as
            # the intra-op threads' is, and spinning they took the cores (4 threads on 2 cores: 70x
            # slower runs), so they sleep wherever the intra-op spin is bounded
            opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
            if spin is not None:
                opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if where.provider == placement.CUDA:
            placement.load_cuda_libraries(ort)
        source = path
        if shared and self.weights is not None and where.provider == placement.CPU:
            prepare = None if graph is None else functools.partial(graph.prepare, path)
            optimized = self.weights.graph_for(path, where.providers(), prepare)
            if optimized is not None:
                shared_options(opts)
                source = optimized
                self.shared.add(path)
        factory = self.session_factory or quiet_session_type()
        session = factory(str(source), sess_options=opts, providers=where.providers())
        placement.check_session(session, where, entry_name(path))
        return session, source


def entry_name(path: Path) -> str:
    """The name of the entry whose model file (or a graph beside it) is ``path``:
    ``<entry>/<version>/<file>``, or ``<entry>/<version>/<file>/model.onnx`` where the named file is
    a directory (``RepositoryEntry.model_file``; its version was named as the model)."""
    version = path.parent if is_version_name(path.parent.name) else path.parent.parent
    return version.parent.name


# ONNX Runtime's FATAL: what a run logs below it is not written. A refused run (an index past a vocabulary,
# a shape the graph refuses) is the caller's exception, answered and logged by the gateway; ORT's own
# line on stderr for each was log spam any client could write at will.
QUIET_RUN_SEVERITY = 4


@functools.cache
def quiet_session_type() -> type:
    """``ort.InferenceSession`` whose runs log nothing below FATAL unless given run options of their own
    (ONNX Runtime's per-run ``RunOptions.log_severity_level``): the session's own logger keeps its
    level, so what loading it logs (an error, a node left off the preferred provider) is still written."""
    import onnxruntime as ort

    quiet = ort.RunOptions()
    quiet.log_severity_level = QUIET_RUN_SEVERITY

    class QuietSession(ort.InferenceSession):
        def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
            return super().run(output_names, input_feed, quiet if run_options is None else run_options)

        def run_with_iobinding(self, iobinding: Any, run_options: Any = None) -> Any:
            return super().run_with_iobinding(iobinding, quiet if run_options is None else run_options)

    return QuietSession


def warm_up(session: Any, rows: int, name: str) -> None:
    """Run ``session`` once on ``rows`` zero rows (:func:`placement.zero_inputs`), so it is planned
    before the first request. A dynamic non-batch axis gets length 1 there, a guess the graph may
    refuse (a Flatten into a MatMul of fixed width wants its image size): such a session is left to
    plan at its first request, with a warning (the model failed to load instead, although it answers
    every input of its real shape). A graph of fixed axes refusing zeros of its own shape is broken:
    that failure is raised."""
    try:
        session.run(None, placement.zero_inputs(session, rows))
    except Exception as exc:
        guessed = [i.name for i in session.get_inputs() if not _fixed(i.shape[1:])]
        if not guessed:
            raise
        log.warning(
            "model %s: its %d-row session is not warmed at load (inputs %s have dynamic axes, tried "
            "at length 1: %s); it plans at its first request",
            name,
            rows,
            guessed,
            " ".join(str(exc).split()),
        )


def _fixed(dims: list[Any]) -> bool:
    return all(isinstance(d, int) and d > 0 for d in dims)


# Triton config data types -> the ONNX Runtime tensor types a graph declares
ONNX_TYPES = {
    "TYPE_BOOL": "tensor(bool)",
    "TYPE_UINT8": "tensor(uint8)",
    "TYPE_UINT16": "tensor(uint16)",
    "TYPE_UINT32": "tensor(uint32)",
    "TYPE_UINT64": "tensor(uint64)",
    "TYPE_INT8": "tensor(int8)",
    "TYPE_INT16": "tensor(int16)",
    "TYPE_INT32": "tensor(int32)",
    "TYPE_INT64": "tensor(int64)",
    "TYPE_FP16": "tensor(float16)",
    "TYPE_FP32": "tensor(float)",
    "TYPE_FP64": "tensor(double)",
    "TYPE_BF16": "tensor(bfloat16)",
    "TYPE_STRING": "tensor(string)",
}


def refuse_bf16(entry: RepositoryEntry) -> None:
    """Refuse a model with a TYPE_BF16 input or output at load: numpy, so the gateway's codecs and
    ONNX Runtime's Python API, has no bfloat16 type. Loaded, it was ready, listed its tensor as BYTES
    and failed every request."""
    named = [
        f"{kind} {tensor.name!r}"
        for kind, tensors in (("input", entry.config.input), ("output", entry.config.output))
        for tensor in tensors
        if tensor.data_type == model_config_pb2.TYPE_BF16
    ]
    if named:
        raise ValueError(
            f"{', '.join(named)} of {entry.path / 'config.pbtxt'} is TYPE_BF16, which the embedded "
            "ONNX Runtime backend cannot carry (numpy has no bfloat16): export it with FP32 or FP16 tensors"
        )


def check_signature(entry: RepositoryEntry, session: Any, path: Path) -> None:
    """Refuse a model whose config.pbtxt declares inputs or outputs its graph does not have (a name,
    a datatype, a rank or a fixed dimension that differs, a batch axis ``max_batch_size`` does not
    agree with), as Triton's ONNX Runtime backend refuses it at load: served, every request would be
    refused as the client's mistake (a 400 naming the config's shape) or fail in the graph."""
    if not (hasattr(session, "get_inputs") and hasattr(session, "get_outputs")):
        return  # a test's stand-in session declares nothing to compare
    config = entry.config
    if config.input and not config.output:  # no input either: the caller's refusal names both
        outputs = [m.name for m in session.get_outputs()]
        raise ValueError(
            f"{entry.path / 'config.pbtxt'} lists no output: the gateway does not complete a config from "
            f"the model file as Triton does by default; list the graph's outputs {outputs} (those a "
            "client may ask for)"
        )
    problems = []
    for kind, declared, graph in (
        ("input", config.input, {m.name: m for m in session.get_inputs()}),
        ("output", config.output, {m.name: m for m in session.get_outputs()}),
    ):
        for tensor in declared:
            meta = graph.get(tensor.name)
            if meta is None:
                problems.append(f"{kind} {tensor.name!r} is not one of the graph's {kind}s {sorted(graph)}")
            else:
                problems += _tensor_problems(kind, tensor, meta, int(config.max_batch_size))
    if problems:
        raise ValueError(f"{entry.path / 'config.pbtxt'} does not match {path}: {'; '.join(problems)}")


def _tensor_problems(kind: str, tensor: Any, meta: Any, max_batch_size: int) -> list[str]:
    """What differs between one config tensor and the graph's tensor of its name (``meta``)."""
    problems = []
    declared = model_config_pb2.DataType.Name(tensor.data_type)
    if ONNX_TYPES.get(declared, meta.type) != meta.type:
        problems.append(f"{kind} {tensor.name!r} is {declared} in the config but {meta.type} in the graph")
    dims = [int(d) for d in (tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims)]
    expected = [-1, *dims] if max_batch_size > 0 else dims
    shape = [d if isinstance(d, int) and d > 0 else -1 for d in meta.shape]
    fixed = [(c, g) for c, g in zip(expected, shape, strict=False) if c > 0 and g > 0]
    batch = shape[0] if max_batch_size > 0 and shape else -1
    if len(shape) != len(expected) or any(c != g for c, g in fixed):
        # a graph made for Triton's ragged batching takes the requests concatenated, without a batch axis
        ragged = getattr(tensor, "allow_ragged_batch", False) and len(shape) < len(expected)
        hint = " (allow_ragged_batch: requests are never concatenated here; use --backend triton)"
        problems.append(
            f"{kind} {tensor.name!r} is {expected} in the config (max_batch_size {max_batch_size}) "
            f"but {shape} in the graph{hint if ragged else ''}"
        )
    elif batch > 0 and (batch != 1 or max_batch_size > 1):
        problems.append(
            f"{kind} {tensor.name!r}: the graph takes batches of {batch} rows only, the config's "
            f"max_batch_size is {max_batch_size}"
        )
    return problems


def _bound(session: Any, rows: int, where: placement.Placement, name: str) -> BoundSession:
    """A bucket's session on bound device buffers, replayed as a CUDA graph (``kiln_cuda_graphs``)."""
    device = "cuda" if where.provider == placement.CUDA else "cpu"
    device_id = int(where.device.partition(":")[2] or 0)
    try:
        return BoundSession(session, rows, device, device_id)
    except ValueError as exc:
        raise placement.PlacementError(f"model {name!r}: kiln_cuda_graphs: {exc}") from exc
