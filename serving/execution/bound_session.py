"""A bucket's session on fixed input and output buffers, bound once: how a CUDA graph is replayed.

With ``kiln_cuda_graphs`` (docs/kiln-json.md, "GPU configs") each bucket's session is created with the
CUDA provider's ``enable_cuda_graph``. ONNX Runtime then captures the whole model as one CUDA graph on
IO-bound buffers and replays it at every later run, one launch instead of one per kernel. That needs
the same shapes and the same buffer addresses at every run, which a bucket (one shape) has:
:class:`BoundSession` allocates the buffers of its bucket's shape on the device once, binds them once,
copies each padded batch into the input buffers (``OrtValue.update_inplace``, documented for exactly
this), replays, and copies the outputs back. On the CPU the same code runs without a graph (tests).

The CUDA provider keeps its graphs per calling thread (its ``PerThreadContext``) and captures on a
thread only after regular runs there (``min_num_runs_before_cuda_graph_capture_``: 1 in older
releases, 2 since): a single warm-up run captures nothing, and a graph captured on the loading thread
is not the serving thread's. So the first run on each thread runs :data:`CAPTURE_RUNS` times: the
load's warm-up really captures (a failure there is the load's, which serves without graphs), and the
batch thread captures at its first batch instead of failing a later one.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from serving.execution.placement import CUDA, ONNX_DTYPES

CAPTURE_RUNS = 3  # the regular runs before the capture (at most 2 in any release), then the capture


class BoundSession:
    """``session`` run on bound buffers of ``rows`` rows on ``device`` ("cuda" or "cpu"); ``run`` has
    ``InferenceSession.run``'s signature, so a bucket's session and a bound one are interchangeable."""

    def __init__(self, session: Any, rows: int, device: str = "cuda", device_id: int = 0) -> None:
        import onnxruntime as ort

        self.session = session
        self.binding = session.io_binding()
        self.inputs: dict[str, Any] = {}
        self.shapes: dict[str, tuple[list[int], np.dtype]] = {}  # each input's buffer: shape, dtype
        for meta in session.get_inputs():
            shape, dtype = _shape(meta, rows), _dtype(meta)
            value = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, device, device_id)
            self.binding.bind_ortvalue_input(meta.name, value)
            self.inputs[meta.name] = value
            self.shapes[meta.name] = shape, np.dtype(dtype)
        self.output_names = [meta.name for meta in session.get_outputs()]
        self._outputs = []  # held: the binding refers to their buffers
        for meta in session.get_outputs():
            value = ort.OrtValue.ortvalue_from_shape_and_type(
                _shape(meta, rows), _dtype(meta), device, device_id
            )
            self.binding.bind_ortvalue_output(meta.name, value)
            self._outputs.append(value)
        self.graphs = _graphs_enabled(session)
        self._captured: set[int] = set()  # the threads whose graph of this session is captured

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Copy ``feeds`` (exactly the bucket's shape) into the bound inputs, run, and return copies of
        the outputs ``names`` (all when None). A feed of another shape or dtype is refused:
        ``update_inplace`` would copy its bytes over the buffer without a word."""
        for name, value in self.inputs.items():
            value.update_inplace(self._checked(name, feeds[name]))
        thread = threading.get_ident()
        for _ in range(1 if not self.graphs or thread in self._captured else CAPTURE_RUNS):
            self.session.run_with_iobinding(self.binding)
        self._captured.add(thread)
        outputs = dict(zip(self.output_names, self.binding.copy_outputs_to_cpu(), strict=True))
        return [outputs[name] for name in names or self.output_names]

    def _checked(self, name: str, feed: np.ndarray) -> np.ndarray:
        shape, dtype = self.shapes[name]
        feed = np.ascontiguousarray(feed)
        if list(feed.shape) != shape or feed.dtype != dtype:
            raise ValueError(
                f"input {name!r}: the bound buffer is {dtype} {shape}, got {feed.dtype} {list(feed.shape)}"
            )
        return feed

    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def get_outputs(self) -> Any:
        return self.session.get_outputs()

    def get_providers(self) -> list[str]:
        return self.session.get_providers()


def _shape(meta: Any, rows: int) -> list[int]:
    """The bucket's shape of one input or output: ``rows`` on the batch axis, every other axis fixed."""
    dims = list(meta.shape[1:])
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise ValueError(
            f"{meta.name} has dynamic non-batch dimensions {meta.shape}: a CUDA graph needs fixed shapes"
        )
    return [rows, *dims]


def _graphs_enabled(session: Any) -> bool:
    """Whether ``session`` runs on the CUDA provider with ``enable_cuda_graph`` (its own options say)."""
    options = getattr(session, "get_provider_options", dict)().get(CUDA, {})
    return str(options.get("enable_cuda_graph", "0")).strip().lower() in ("1", "true")


def _dtype(meta: Any) -> type:
    if meta.type not in ONNX_DTYPES:
        raise ValueError(f"{meta.name}: type {meta.type} cannot be bound")
    return ONNX_DTYPES[meta.type]
