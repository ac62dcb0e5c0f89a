"""The device side of a resident decoder (:mod:`serving.decoding.resident`): per :class:`LayoutKey`
(rows, source positions, cache columns, each a power-of-two bucket), a :class:`Layout` of fixed-shape
buffers on the device and the two graphs a step runs over them, the translator's decoder with its
dimensions fixed (:func:`static_model`) and the generated cache advance (:func:`advance_model`), each
bound once (a CUDA graph per cache set where the provider captures them)."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.decoding.device_copy import HostCopy
from serving.decoding.step_spec import StepSpec
from serving.execution.placement import ONNX_DTYPES

log = logging.getLogger(__name__)

ROWS_MIN = 8  # the smallest rows bucket
# source positions and cache columns a layout holds at least (the model's max_positions where smaller):
# a GPU step costs about the same over 8 columns or 64 (masked), so one width serves nearly every
# request and a batch's layouts differ in rows alone, all made before the first request
# (ResidentDecoder.prepare); a longer source or search grows them. Sources are narrower than cache
# columns: each joining sentence's encoder rows are copied over at the source width.
SOURCE_MIN, COLUMNS_MIN = 32, 128
# where ONNX Runtime reads the external data of a model given as bytes (1.17+; they have no path)
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
CAPTURE_RUNS = 3  # runs of each graph a warm-up makes: the regular ones before a capture, then the capture


def bucket(size: int, minimum: int, current: int = 0) -> int:
    """The power of two (at least ``minimum``) to lay out ``size`` in, never below ``current``: a
    layout only grows (on a GPU a step costs about the same at 8 rows or 128, and 8 cache columns or
    64), even once its batch empties, so load moving around a bound never flips layouts (each change
    moves the live cache through the host)."""
    return max(current, minimum, 1 << max(0, size - 1).bit_length())


def static_model(path: Path | str, sizes: dict[str, int]) -> bytes:
    """The ONNX model at ``path`` with each symbolic dimension of its inputs and outputs fixed (``sizes``
    by dimension name), its inferred intermediate shapes dropped: ONNX Runtime then folds the shape
    arithmetic, and every node runs on the CUDA provider, as a CUDA graph needs."""
    import onnx

    # its external weights stay where they are (ResidentDecoder.session points ONNX Runtime at them):
    # pulled in, a decoder over protobuf's 2 GiB could not be serialized, and each layout held a copy
    model = onnx.load(str(path), load_external_data=False)
    for value in [*model.graph.input, *model.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                if dim.dim_param not in sizes:
                    raise ValueError(f"{value.name}: no size for its dimension {dim.dim_param!r}")
                dim.dim_value = sizes[dim.dim_param]
    del model.graph.value_info[:]
    return model.SerializeToString()


def write_index_shape(shape: Sequence[int], axis: int) -> list[int]:
    """The ScatterND indices writing one column of a cache ``shape`` on ``axis``: one index tuple per
    slice before the axis (``[*shape[:axis], 1, axis + 1]``; the updates are the entry)."""
    return [*shape[:axis], 1, axis + 1]


def advance_model(caches: Sequence[tuple[str, tuple[int, ...], int, str, Any]]) -> bytes:
    """The advance graph of one layout: for each cache ``(name, shape [B, ..., T, ...], axis, entry,
    dtype)``, ``next_<name> = Gather(ScatterND(<name>, write_<axis>, <entry>), origin, 0)``: the entry
    ``[B, ..., 1, ...]`` written into the column ``write_<axis>`` names, then the rows gathered by
    ``origin`` [B]. A copy and a gather: columns are never shifted on the device (the batch moves its
    column offset instead), and the write touches one column (a broadcast Where over the whole cache
    was the slowest part of a step)."""
    import onnx
    from onnx import helper

    rows = caches[0][1][0]
    inputs = [helper.make_tensor_value_info("origin", onnx.TensorProto.INT64, [rows])]
    for axis in sorted({c[2] for c in caches}):
        shape = write_index_shape(caches[0][1], axis)
        inputs.append(helper.make_tensor_value_info(f"write_{axis}", onnx.TensorProto.INT64, shape))
    nodes, outputs = [], []
    for name, shape, axis, entry, dtype in caches:
        kind = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        entry_shape = [1 if i == axis else d for i, d in enumerate(shape)]
        inputs.append(helper.make_tensor_value_info(name, kind, list(shape)))
        inputs.append(helper.make_tensor_value_info(entry, kind, entry_shape))
        nodes.append(helper.make_node("ScatterND", [name, f"write_{axis}", entry], [f"{name}.written"]))
        nodes.append(helper.make_node("Gather", [f"{name}.written", "origin"], [f"next_{name}"], axis=0))
        outputs.append(helper.make_tensor_value_info(f"next_{name}", kind, list(shape)))
    graph = helper.make_graph(nodes, "kiln_cache_advance", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@dataclass(frozen=True, order=True)
class LayoutKey:
    rows: int  # B: decoder rows, and encoder store slots
    source: int  # S: encoder store positions
    columns: int  # T: cache columns


class ResidentDecoder:
    """A translator decoder's device side for one decode worker: per :class:`LayoutKey`, its fixed-shape
    decoder session and advance session (each a CUDA graph per cache set where ``cuda_graphs``) and
    the buffers they are bound to, made at first use and kept (a captured graph replays on the same
    addresses for good)."""

    def __init__(
        self,
        model_file: Path | str,
        spec: StepSpec,
        device: str = "cuda",
        *,
        device_id: int = 0,
        providers: list[Any] | None = None,
        cuda_graphs: bool = False,
        session_options: Any = None,
        source_min: int | None = None,
        columns_min: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.model_file = Path(model_file)
        self.spec = spec
        self.device, self.device_id = device, device_id
        self.cuda_graphs = cuda_graphs and device == "cuda"
        self.providers = providers or ["CPUExecutionProvider"]
        if self.cuda_graphs:
            self.providers = [_with_graphs(p) for p in self.providers]
        self.session_options = session_options
        self.name = self.model_file.parent.parent.name
        self.copy = HostCopy.for_device(device)
        probe = ort.InferenceSession(
            str(self.model_file), self._options(), providers=["CPUExecutionProvider"]
        )
        self.input_dims = {m.name: list(m.shape) for m in probe.get_inputs()}
        self.output_dims = {m.name: list(m.shape) for m in probe.get_outputs()}
        self.types = {
            m.name: ONNX_DTYPES.get(m.type, np.float32) for m in [*probe.get_inputs(), *probe.get_outputs()]
        }
        del probe
        self.caches = spec.with_role("cache")
        self.encoder = spec.with_role("encoder")
        cap = spec.max_positions or COLUMNS_MIN
        self.source_min = source_min or min(SOURCE_MIN, cap)
        self.columns_min = columns_min or min(COLUMNS_MIN, cap)
        self.layouts: dict[LayoutKey, Layout] = {}
        self.last_key: LayoutKey | None = None  # the layout the last batch grew to: where the next starts

    def prepare(self, max_rows: int) -> None:
        """Make (and warm, or capture) the layouts of every rows bucket up to ``max_rows`` at the
        default widths: what a batch uses, made before the first request instead of during one."""
        rows = ROWS_MIN
        while True:
            self.layout(LayoutKey(rows, self.source_min, self.columns_min))
            if rows >= max_rows:
                return
            rows *= 2

    def _options(self) -> Any:
        if self.session_options is not None:
            return self.session_options()
        options = self.ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # a decode worker is one thread
        return options

    def sizes(self, key: LayoutKey) -> dict[str, int]:
        """Each symbolic dimension of the decoder's inputs and outputs at ``key``, by name."""
        sizes: dict[str, int] = {}

        def put(name: str, axis: int, size: int) -> None:
            dims = self.input_dims[name]
            named = axis < len(dims) and isinstance(dims[axis], str)
            if named and sizes.setdefault(dims[axis], size) != size:
                raise ValueError(f"dimension {dims[axis]!r} is both {sizes[dims[axis]]} and {size}")

        for inp in self.spec.decoder_inputs:
            if inp.name not in self.input_dims:
                continue
            put(inp.name, 0, key.rows)
            if inp.role == "cache":
                put(inp.name, inp.axis, key.columns)
            elif inp.role == "cache_mask":
                put(inp.name, 1, key.columns)
            elif inp.role == "encoder" and inp.pad_axis is not None:
                put(inp.name, inp.pad_axis, key.source)
        for dims in self.output_dims.values():
            for dim in dims:
                if isinstance(dim, str) and dim not in sizes:
                    raise ValueError(f"decoder output dimension {dim!r} is not fixed by any input")
        return sizes

    def layout(self, key: LayoutKey) -> Layout:
        """The layout of ``key``, made at first use, and warmed on each thread that uses it: the CUDA
        provider keeps a session's graphs per calling thread, so graphs captured where
        :meth:`prepare` ran (an executor thread) are not the decode thread's, which would capture its
        own during a request, with no fallback when that fails."""
        found = self.layouts.get(key)
        if found is not None and (not self.cuda_graphs or threading.get_ident() in found.warmed):
            return found
        try:
            found = found or Layout(self, key)
            found.warm()
        except Exception as exc:  # noqa: BLE001 - a graph that cannot be captured: plain sessions
            if not self.cuda_graphs:
                raise
            log.warning(
                "resident decoder %s: its CUDA graphs could not be captured (%s); stepping without them",
                self.name,
                exc,
            )
            self.cuda_graphs = False
            self.providers = [_without_graphs(p) for p in self.providers]
            self.layouts.clear()
            found = Layout(self, key)
            found.warm()
        if key not in self.layouts:
            self.layouts[key] = found
            log.info(
                "resident decoder %s: layout rows %d, source %d, columns %d (%d in all)",
                self.name,
                key.rows,
                key.source,
                key.columns,
                len(self.layouts),
            )
        return found

    def zeros(self, shape: Sequence[int], dtype: Any) -> Any:
        return self.ort.OrtValue.ortvalue_from_numpy(
            np.zeros(shape, dtype=dtype), self.device, self.device_id
        )

    def session(self, model: bytes) -> Any:
        """A session of a graph given as bytes (:func:`static_model`, :func:`advance_model`), whose
        external weights, if any, ONNX Runtime reads beside the decoder's file."""
        options = self._options()
        options.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(self.model_file.parent))
        return self.ort.InferenceSession(model, options, providers=self.providers)


def _without_graphs(provider: Any) -> Any:
    if isinstance(provider, tuple):
        return provider[0], {k: v for k, v in provider[1].items() if k != "enable_cuda_graph"}
    return provider


def _with_graphs(provider: Any) -> Any:
    if isinstance(provider, tuple) and provider[0] == "CUDAExecutionProvider":
        return provider[0], {**provider[1], "enable_cuda_graph": "1"}
    if provider == "CUDAExecutionProvider":
        return provider, {"enable_cuda_graph": "1"}
    return provider


class Layout:
    """The buffers and sessions of one :class:`LayoutKey`: two cache sets, the entries, the encoder
    store and ``log_probs``, and one packed buffer of the few KiB a step writes (tokens, positions,
    cache mask, row places; beam origins, column shift and write mask for the advance), each input
    bound at its offset in it, so a step's inputs reach the device in one copy; the decoder and
    advance sessions bound to them, one binding (one CUDA graph) per cache set."""

    ALIGN = 256  # bytes between packed inputs (CUDA allocations' own alignment)

    def __init__(self, owner: ResidentDecoder, key: LayoutKey) -> None:
        self.key = key
        sizes = owner.sizes(key)
        self.step_session = owner.session(static_model(owner.model_file, sizes))

        def shape_of(dims: list[Any]) -> list[int]:
            return [d if isinstance(d, int) else sizes[d] for d in dims]

        caches = {c.name for c in owner.caches}
        encoder = {inp.name for inp in owner.encoder}
        self.shapes = {name: shape_of(dims) for name, dims in owner.input_dims.items()}
        self.store = {name: owner.zeros(self.shapes[name], owner.types[name]) for name in encoder}
        self.sets = [
            {name: owner.zeros(self.shapes[name], owner.types[name]) for name in caches} for _ in range(2)
        ]
        self.outputs = {
            name: owner.zeros(shape_of(dims), owner.types[name]) for name, dims in owner.output_dims.items()
        }
        self.advance_session = owner.session(
            advance_model(
                [
                    (c.name, tuple(self.shapes[c.name]), c.axis, c.output, owner.types[c.name])
                    for c in owner.caches
                ]
            )
        )
        self._pack(owner, caches | encoder)
        for c in owner.encoder:  # a masked-out source (zeros) gives the warm-up NaNs: all valid instead
            if owner.types[c.name] == np.bool_:
                self.store[c.name].update_inplace(np.ones(self.shapes[c.name], dtype=np.bool_))
        self.steps = [self._bind_step(owner, parity) for parity in range(2)]
        self.advances = [self._bind_advance(owner, parity) for parity in range(2)]
        self.warmed: set[int] = set()  # the threads this layout's sessions were warmed (captured) on
        self.run_options = []
        for parity in range(2):
            options = owner.ort.RunOptions()
            if owner.cuda_graphs:
                options.add_run_config_entry("gpu_graph_id", str(parity))
            self.run_options.append(options)

    def _pack(self, owner: ResidentDecoder, tensors: set[str]) -> None:
        """One device buffer (:attr:`packed`) and its host side (:attr:`host`, :attr:`views`) for the
        step's small inputs (every input not in ``tensors``), then the advance's (beam origins and each
        cache's write index), each at an offset aligned to :attr:`ALIGN`."""
        key = self.key
        packed = {  # name -> (dtype, shape): the step's small inputs, then the advance's
            name: (np.dtype(owner.types[name]), self.shapes[name])
            for name in owner.input_dims
            if name not in tensors
        }
        packed["origin"] = (np.dtype(np.int64), [key.rows])
        for c in owner.caches:
            packed[f"write_{c.axis}"] = (np.dtype(np.int64), write_index_shape(self.shapes[c.name], c.axis))
        offsets, total = {}, 0
        for name, (dtype, shape) in packed.items():
            offsets[name] = total
            total += -(-math.prod(shape) * dtype.itemsize // self.ALIGN) * self.ALIGN
        self.packed = owner.zeros([total], np.uint8)  # on the device
        self.host = np.zeros(total, dtype=np.uint8)  # written by the batch, copied over once a step
        self.views = {  # the host side of each packed input
            name: np.ndarray(shape, dtype=dtype, buffer=self.host, offset=offsets[name])
            for name, (dtype, shape) in packed.items()
        }
        for name, view in self.views.items():
            if name.startswith("write_"):  # each slice's own index; the batch sets the column
                view[..., :-1] = np.moveaxis(np.indices(view.shape[:-2]), 0, -1)[..., None, :]
                view[..., -1] = key.columns - 1
        self._packed_at = {name: (dtype, shape, offsets[name]) for name, (dtype, shape) in packed.items()}

    def _bind_packed(self, owner: ResidentDecoder, binding: Any, name: str) -> None:
        dtype, shape, offset = self._packed_at[name]
        binding.bind_input(
            name, owner.device, owner.device_id, dtype.type, shape, self.packed.data_ptr() + offset
        )

    def _bind_step(self, owner: ResidentDecoder, parity: int) -> Any:
        """The decoder step's binding over cache set ``parity``, the encoder store and the packed inputs."""
        binding = self.step_session.io_binding()
        for name in owner.input_dims:
            if name in self.sets[parity]:
                binding.bind_ortvalue_input(name, self.sets[parity][name])
            elif name in self.store:
                binding.bind_ortvalue_input(name, self.store[name])
            else:
                self._bind_packed(owner, binding, name)
        for name, value in self.outputs.items():
            binding.bind_ortvalue_output(name, value)
        return binding

    def _bind_advance(self, owner: ResidentDecoder, parity: int) -> Any:
        """The advance's binding: cache set ``parity`` and the step's entries into set ``1 - parity``."""
        binding = self.advance_session.io_binding()
        for name in ("origin", *{f"write_{c.axis}" for c in owner.caches}):
            self._bind_packed(owner, binding, name)
        for c in owner.caches:
            binding.bind_ortvalue_input(c.name, self.sets[parity][c.name])
            binding.bind_ortvalue_input(c.output, self.outputs[c.output])
            binding.bind_ortvalue_output(f"next_{c.name}", self.sets[1 - parity][c.name])
        return binding

    def send(self) -> None:
        """The packed inputs, as the batch wrote them into :attr:`views`, to the device (one copy)."""
        self.packed.update_inplace(self.host)

    def warm(self) -> None:
        """Run both cache sets' step and advance :data:`CAPTURE_RUNS` times on the zeroed buffers, on
        the calling thread: planned, or captured there as CUDA graphs (the CUDA provider captures a
        thread's graph after 1 or 2 regular runs there, by release; finite outputs, written into a
        column no step reads before it is written again)."""
        for _ in range(CAPTURE_RUNS):
            for parity in range(2):
                self.step_session.run_with_iobinding(self.steps[parity], self.run_options[parity])
                self.advance(parity)
        self.warmed.add(threading.get_ident())

    def step(self, parity: int) -> np.ndarray:
        self.step_session.run_with_iobinding(self.steps[parity], self.run_options[parity])
        return self.outputs["log_probs"].numpy()

    def advance(self, parity: int) -> None:
        self.advance_session.run_with_iobinding(self.advances[parity], self.run_options[parity])
