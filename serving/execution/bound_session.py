"""A bucket's session on fixed input and output buffers, bound once: how a CUDA graph is replayed.

With ``kiln_cuda_graphs`` (docs/kiln-json.md, "GPU configs") each bucket's session is created with the
CUDA provider's ``enable_cuda_graph``. ONNX Runtime then captures the whole model as one CUDA graph at
its first run with IO binding and replays it at every later one, one launch instead of one per kernel.
That needs the same shapes and the same buffer addresses at every run, which a bucket (one shape) has:
:class:`BoundSession` allocates the buffers of its bucket's shape on the device once, binds them once,
copies each padded batch into the input buffers (``OrtValue.update_inplace``, documented for exactly
this), replays, and copies the outputs back. On the CPU the same code runs without a graph (tests).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.execution.placement import ONNX_DTYPES


class BoundSession:
    """``session`` run on bound buffers of ``rows`` rows on ``device`` ("cuda" or "cpu"); ``run`` has
    ``InferenceSession.run``'s signature, so a bucket's session and a bound one are interchangeable."""

    def __init__(self, session: Any, rows: int, device: str = "cuda", device_id: int = 0) -> None:
        import onnxruntime as ort

        self.session = session
        self.binding = session.io_binding()
        self.inputs: dict[str, Any] = {}
        for meta in session.get_inputs():
            value = ort.OrtValue.ortvalue_from_shape_and_type(
                _shape(meta, rows), _dtype(meta), device, device_id
            )
            self.binding.bind_ortvalue_input(meta.name, value)
            self.inputs[meta.name] = value
        self.output_names = [meta.name for meta in session.get_outputs()]
        self._outputs = []  # held: the binding refers to their buffers
        for meta in session.get_outputs():
            value = ort.OrtValue.ortvalue_from_shape_and_type(
                _shape(meta, rows), _dtype(meta), device, device_id
            )
            self.binding.bind_ortvalue_output(meta.name, value)
            self._outputs.append(value)

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Copy ``feeds`` (exactly the bucket's shape) into the bound inputs, run, and return copies of
        the outputs ``names`` (all when None)."""
        for name, value in self.inputs.items():
            value.update_inplace(np.ascontiguousarray(feeds[name]))
        self.session.run_with_iobinding(self.binding)
        outputs = dict(zip(self.output_names, self.binding.copy_outputs_to_cpu(), strict=True))
        return [outputs[name] for name in names or self.output_names]

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


def _dtype(meta: Any) -> type:
    if meta.type not in ONNX_DTYPES:
        raise ValueError(f"{meta.name}: type {meta.type} cannot be bound")
    return ONNX_DTYPES[meta.type]
