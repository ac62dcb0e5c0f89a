"""A decode batch whose key/value cache stays on the device, stepped at fixed shapes (a CUDA graph each).

On a GPU, :class:`~serving.decoding.stepper.DecodeBatch`'s step copies every cache and the encoder
store to the device and the entries back, at a new shape every step (the cache grows by a column), so
ONNX Runtime's CUDA provider runs its ~130 kernels one launch at a time: ~2-5 ms a step on an H200
whatever the rows (measured with ``python -m bench.gpu_decode_probe``: the same step with its inputs
already on the device 0.9-1.3 ms, and at fixed shapes replayed as a CUDA graph 0.31-0.40 ms at 8-128
rows and 8-64 cache columns).

:class:`ResidentDecodeBatch` keeps the host side of a decode batch (the search, the rows' sentences,
positions, masks, the encoder store) and moves what is big to the device, in fixed-shape
:class:`Layout` buffers: the caches ``[B, H, T, D]`` (``T`` columns, a ring: those not live are masked
off by ``cache_mask``), the encoder store ``[B, ..., S, ...]`` (``S`` source positions, padding
masked), the step's entries and log-probs. ``B``, ``S`` and ``T`` are buckets (powers of two; a
batch's layout only grows, and the next batch starts in it), so a layout's decoder graph has one
shape: ONNX Runtime replays it as a CUDA graph. Each step runs two graphs on the device:

- the **advance** (a graph generated here): the previous step's entries written into their column of
  each cache (ScatterND), then the rows gathered by beam origin (and by whatever joined or left
  since), into the other of two cache sets (ping-pong: a graph's output cannot be its input).
  Columns no live sentence reads are never moved: the ring's offset passes them (attention sums over
  its columns in any order);
- the **step**: the translator's decoder graph with its dimensions fixed to the layout, reading that
  set; only ``log_probs`` ``[B, V]`` comes back for the search.

The inputs a step writes (tokens, positions, cache mask, row places, beam origins, the written
column) are a few KiB in one packed buffer, one copy; a joining sentence's encoder rows are copied
into their store slots alone. A change of layout (rows past a bucket, a longer source, more live
columns than the ring holds) moves the live cache through the host once. The layouts of every rows
bucket are made when the scheduler starts (:meth:`ResidentDecoder.prepare`).

Measured on an H200 (512 held-out sentences, beam 4): the decode engine 2.55x the host batch at 32
sentences a batch, 1.62x at 128, token-identical; through the gateway no gain yet (one process is bound
elsewhere, a loss with four sharing the GPU), so the backend uses it only with
``KILN_RESIDENT_DECODER=1`` (README, "GPU and TensorRT").

Semantics are the decode batch's (docs/translator-interface.md): the same search over the same
decoder, which attends over masked padding here; on the CPU (where this runs without graphs, for the
tests) translations are token-identical to the host batch's, scores equal to float rounding.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.decoding import compiled_step
from serving.decoding.options import Finished
from serving.decoding.step_spec import Runner, StepSpec
from serving.decoding.stepper import DecodeBatch
from serving.execution.placement import ONNX_DTYPES

log = logging.getLogger(__name__)

ROWS_MIN = 8  # the smallest rows bucket
# source positions and cache columns a layout holds at least (the model's max_positions where smaller):
# a GPU step costs about the same over 8 columns or 64 (masked), so one width serves nearly every
# request and a batch's layouts differ in rows alone, all made before the first request
# (ResidentDecoder.prepare); a longer source or search grows them. Sources are narrower than cache
# columns: each joining sentence's encoder rows are copied over at the source width.
SOURCE_MIN, COLUMNS_MIN = 32, 128


def bucket(size: int, minimum: int, current: int = 0) -> int:
    """The power of two (at least ``minimum``) to lay out ``size`` in, never below ``current``: a
    layout only grows (on a GPU a step costs about the same at 8 rows or 128, and 8 cache columns or
    64), even once its batch empties, so load moving around a bound never flips layouts (each change
    moves the live cache through the host)."""
    return max(current, minimum, 1 << max(0, size - 1).bit_length())


def resident_usable(spec: StepSpec, indexed: bool) -> str:
    """Why a decoder cannot step on the device with this engine ('' when it can): it needs the
    indexed layout (an encoder store read through ``row_place``), caches and a cache mask, no state."""
    if not indexed:
        return "its decoder takes no encoder store (row_place)"
    if spec.with_role("state"):
        return "its decoder carries a state (only caches stay on the device)"
    if not spec.with_role("cache") or not spec.with_role("cache_mask"):
        return "its decoder has no cache or no cache mask"
    return ""


def static_model(path: Path | str, sizes: dict[str, int]) -> bytes:
    """The ONNX model at ``path`` with each symbolic dimension of its inputs and outputs fixed (``sizes``
    by dimension name), its inferred intermediate shapes dropped: ONNX Runtime then folds the shape
    arithmetic, and every node runs on the CUDA provider, as a CUDA graph needs."""
    import onnx

    model = onnx.load(str(path))
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


MEMCPY_DEFAULT = 4  # cudaMemcpyDefault: the direction from the pointers (unified addressing)


class HostCopy:
    """Copies host bytes into part of a device buffer (an ``OrtValue``'s memory at an offset) and reads
    the first rows of one back, which ONNX Runtime's Python API cannot: ``cudaMemcpy`` from the CUDA
    runtime ONNX Runtime loaded, or ``memmove`` on the CPU. ``None`` from :meth:`for_device` where no CUDA runtime is found: the
    caller then rewrites the whole buffer."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._memcpy = None
        if device == "cuda":
            library = _cuda_runtime()
            if library is None:
                raise OSError("no CUDA runtime library loaded in this process")
            self._memcpy = library.cudaMemcpy
            self._memcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            self._memcpy.restype = ctypes.c_int
            self._synchronize = library.cudaDeviceSynchronize
            self._synchronize.restype = ctypes.c_int

    @classmethod
    def for_device(cls, device: str) -> HostCopy | None:
        try:
            return cls(device)
        except OSError as exc:
            log.info("resident decoder: partial copies to %s unavailable (%s)", device, exc)
            return None

    def __call__(self, value: Any, offset: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        if offset + array.nbytes > value.tensor_size_in_bytes():
            raise ValueError(f"a copy of {array.nbytes} bytes at {offset} overruns the buffer")
        if self._memcpy is None:
            ctypes.memmove(value.data_ptr() + offset, array.ctypes.data, array.nbytes)
            return
        status = self._memcpy(value.data_ptr() + offset, array.ctypes.data, array.nbytes, MEMCPY_DEFAULT)
        if status:
            raise RuntimeError(f"cudaMemcpy failed with CUDA error {status}")

    def read(self, value: Any, rows: int, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """The first ``rows`` rows of ``value`` (of ``shape`` and ``dtype``), copied to the host."""
        out = np.empty([rows, *shape[1:]], dtype=dtype)
        if out.nbytes > value.tensor_size_in_bytes():
            raise ValueError(f"a read of {out.nbytes} bytes overruns the buffer")
        if self._memcpy is None:
            ctypes.memmove(out.ctypes.data, value.data_ptr(), out.nbytes)
            return out
        status = self._memcpy(out.ctypes.data, value.data_ptr(), out.nbytes, MEMCPY_DEFAULT)
        if status:
            raise RuntimeError(f"cudaMemcpy failed with CUDA error {status}")
        return out

    def done(self) -> None:
        """Wait for the copies: from pageable memory, ``cudaMemcpy`` may return before its DMA lands,
        and ONNX Runtime's stream does not wait on the default one."""
        if self._memcpy is not None:
            status = self._synchronize()
            if status:
                raise RuntimeError(f"cudaDeviceSynchronize failed with CUDA error {status}")


def _cuda_runtime() -> Any:
    """The CUDA runtime library already loaded in this process (by ONNX Runtime's CUDA provider)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libcudart.so" in line}
    except OSError:
        paths = set()
    for name in [*sorted(paths), "libcudart.so.13", "libcudart.so.12", "libcudart.so"]:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


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
        found = self.layouts.get(key)
        if found is None:
            try:
                found = Layout(self, key)
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
        return self.ort.InferenceSession(model, self._options(), providers=self.providers)


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
        advance_caches = [
            (c.name, tuple(self.shapes[c.name]), c.axis, c.output, owner.types[c.name]) for c in owner.caches
        ]
        self.advance_session = owner.session(advance_model(advance_caches))
        packed = {  # name -> (dtype, shape): the step's small inputs, then the advance's
            name: (np.dtype(owner.types[name]), self.shapes[name])
            for name in owner.input_dims
            if name not in caches and name not in encoder
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
        for c in owner.encoder:  # a masked-out source (zeros) gives the warm-up NaNs: all valid instead
            if owner.types[c.name] == np.bool_:
                self.store[c.name].update_inplace(np.ones(self.shapes[c.name], dtype=np.bool_))
        base = self.packed.data_ptr()

        def bind_packed(binding: Any, name: str) -> None:
            dtype, shape = packed[name]
            binding.bind_input(name, owner.device, owner.device_id, dtype.type, shape, base + offsets[name])

        self.steps, self.advances = [], []
        for parity in range(2):
            binding = self.step_session.io_binding()
            for name in owner.input_dims:
                if name in caches:
                    binding.bind_ortvalue_input(name, self.sets[parity][name])
                elif name in encoder:
                    binding.bind_ortvalue_input(name, self.store[name])
                else:
                    bind_packed(binding, name)
            for name, value in self.outputs.items():
                binding.bind_ortvalue_output(name, value)
            self.steps.append(binding)
            binding = self.advance_session.io_binding()
            for name in ("origin", *{f"write_{c.axis}" for c in owner.caches}):
                bind_packed(binding, name)
            for name, _, _, entry, _ in advance_caches:
                binding.bind_ortvalue_input(name, self.sets[parity][name])
                binding.bind_ortvalue_input(entry, self.outputs[entry])
                binding.bind_ortvalue_output(f"next_{name}", self.sets[1 - parity][name])
            self.advances.append(binding)
        self.run_options = []
        for parity in range(2):
            options = owner.ort.RunOptions()
            if owner.cuda_graphs:
                options.add_run_config_entry("gpu_graph_id", str(parity))
            self.run_options.append(options)

    def send(self) -> None:
        """The packed inputs, as the batch wrote them into :attr:`views`, to the device (one copy)."""
        self.packed.update_inplace(self.host)

    def warm(self) -> None:
        """Run both cache sets' step and advance twice on the zeroed buffers: planned, or captured as
        CUDA graphs (finite outputs, written into a column no step reads before it is written again)."""
        for _ in range(2):
            for parity in range(2):
                self.step_session.run_with_iobinding(self.steps[parity], self.run_options[parity])
                self.advance(parity)

    def step(self, parity: int) -> np.ndarray:
        self.step_session.run_with_iobinding(self.steps[parity], self.run_options[parity])
        return self.outputs["log_probs"].numpy()

    def advance(self, parity: int) -> None:
        self.advance_session.run_with_iobinding(self.advances[parity], self.run_options[parity])


class ResidentDecodeBatch(DecodeBatch):
    """A :class:`~serving.decoding.stepper.DecodeBatch` (indexed rows) whose caches live on the device
    (:class:`ResidentDecoder`): the host keeps no cache; each step is the advance then the decoder,
    at the batch's current :class:`Layout`. One step per :meth:`step` call."""

    def __init__(self, spec: dict[str, Any] | StepSpec, decoder: ResidentDecoder) -> None:
        super().__init__(spec, indexed=True)
        self.device = decoder
        self._carried = []  # the caches are the device's: the host batch gathers and grows none
        self._reset_device()

    def prepare(self, max_rows: int) -> None:
        self.device.prepare(max_rows)

    def _reset_device(self) -> None:
        """Nothing pending, nothing stored; the layout stays (an emptied batch's next sentences start
        in it: its rows are masked until written)."""
        # a batch starts in the last layout its decoder used (batches come and go: offline.translate_ids)
        self._key: LayoutKey | None = getattr(self, "_key", None) or self.device.last_key
        self._parity = 0
        # the device column of the host's column 0: the columns are a ring (attention sums over its
        # columns in any order), so dropped columns move the offset, never the data
        self._offset = 0
        self._pending: tuple[np.ndarray, int | None] | None = None  # origin, device column written
        self._stored = False  # whether the device store holds every slot but the fresh ones
        self._fresh: list[int] = []  # store slots written since the device store was last filled

    def _rows_joined(self, before: int, sentences: int) -> None:
        joined = self.physical - before
        # the joining rows read row 0 of the last call: finite, and masked (their columns start here)
        origin, written = self._pending or (np.arange(before, dtype=np.int64), None)
        self._pending = np.concatenate([origin, np.zeros(joined, dtype=np.int64)]), written
        self._fresh += self.owner[-sentences:].tolist() if sentences else []

    def _gather(self, index: np.ndarray) -> None:
        rows = self.physical
        super()._gather(index)
        origin, written = self._pending or (np.arange(rows, dtype=np.int64), None)
        self._pending = origin[index], written

    def remove(self, leaving: np.ndarray) -> None:
        super().remove(leaving)
        if not self.keys:
            self._reset_device()

    def step(self, run_decoder: Runner, joining: int = 0, steps: int = 1) -> list[Finished]:
        self.last_steps = 1
        rows = self.live_rows
        if rows == 0:
            return []
        layout = self._place(rows)
        pending, self._pending = self._pending, None
        if pending is not None:
            self._advance_inputs(layout, *pending)
        self._step_inputs(layout, rows)
        layout.send()
        if pending is not None:
            layout.advance(self._parity)
            self._parity = 1 - self._parity
        log_probs = layout.step(self._parity)[:rows]
        before = self.beams.rows
        result = compiled_step.step(self.beams, log_probs, None)
        self.beams = result.beams
        live = self.beams.rows > 0
        lead = int(self.joined[live].min(initial=self.column))
        columns = self._key.columns
        written = (self._offset + self.column) % columns  # where this step's entries go
        self._advance_rows({}, result.origin, before, result.tokens, joining)
        self._offset = (self._offset + lead) % columns  # dropped columns are skipped, never moved
        self._pending = np.asarray(result.origin, dtype=np.int64), written
        return self._retire()

    def _place(self, rows: int) -> Layout:
        """This step's layout, with the encoder store filled: a new layout takes the live cache over
        through the host (the pending advance applied there)."""
        current = self._key
        slots = self._encoder.used.size
        key = LayoutKey(
            bucket(max(rows, slots), ROWS_MIN, current.rows if current else 0),
            bucket(max(self._encoder.width, 1), self.device.source_min, current.source if current else 0),
            bucket(self.column + 1, self.device.columns_min, current.columns if current else 0),
        )
        if key != current:
            cache = self._download(current) if current is not None else None
            layout = self.device.layout(key)
            self._stored = self._stored and key == current
            self._key, self._parity, self._offset = key, 0, 0
            self.device.last_key = key
            if cache is not None and self.column:
                self._upload(layout, cache)
        layout = self.device.layout(key)
        self._fill_store(layout)
        return layout

    def _advance_inputs(self, layout: Layout, origin: np.ndarray, written: int | None) -> None:
        views = layout.views
        views["origin"][: origin.size] = origin
        views["origin"][origin.size :] = 0
        for name, write in views.items():
            if name.startswith("write_"):  # nothing to write: the next column, not live until written
                write[..., -1] = (
                    (self._offset + self.column) % layout.key.columns if written is None else written
                )

    def _download(self, key: LayoutKey) -> dict[str, np.ndarray]:
        """The live cache ``[live rows, ..., columns, ...]`` per cache, read from layout ``key`` with the
        pending advance applied here on the host (its rows may outnumber that layout's)."""
        layout = self.device.layout(key)
        origin, written = self._pending or (np.arange(self.live_rows), None)
        self._pending = None
        live = (self._offset + np.arange(self.column)) % key.columns
        out, copy, rows = {}, self.device.copy, int(origin.max(initial=-1)) + 1
        for inp in self.device.caches:
            source = layout.sets[self._parity][inp.name]
            if copy is None:
                value = source.numpy()
            else:  # the rows the origins read, not the whole set
                value = copy.read(source, rows, layout.shapes[inp.name], self.device.types[inp.name])
            if written is not None:
                index = [slice(None)] * value.ndim
                index[inp.axis] = written
                entry = layout.outputs[inp.output].numpy()[: value.shape[0]]
                value[tuple(index)] = np.take(entry, 0, axis=inp.axis)
            out[inp.name] = np.take(value[origin], live, axis=inp.axis)
        return out

    def _upload(self, layout: Layout, cache: dict[str, np.ndarray]) -> None:
        """``cache`` (from :meth:`_download`) into the new layout's current set: its rows alone where
        a partial copy can (the rows beyond hold zeros or stale rows, masked), else the whole set."""
        copy = self.device.copy
        for inp in self.device.caches:
            value = cache[inp.name]
            shape = list(layout.shapes[inp.name])
            if copy is not None:
                shape[0] = value.shape[0]
            full = np.zeros(shape, dtype=self.device.types[inp.name])
            full[tuple(slice(0, n) for n in value.shape)] = value
            target = layout.sets[self._parity][inp.name]
            if copy is None:
                target.update_inplace(full)
            else:
                copy(target, 0, full)
        if copy is not None:
            copy.done()

    def _fill_store(self, layout: Layout) -> None:
        """The encoder store on the device: whole after a layout change, else only the slots written
        since (joining sentences), a copy per run of consecutive slots. The host store re-padding or
        growing changes no slot the device holds (padding is masked), so it costs no copy."""
        copy = self.device.copy
        if self._stored and not self._fresh:
            return
        whole = not self._stored or copy is None
        slots = np.unique(np.asarray(self._fresh, dtype=np.int64))
        runs = np.split(slots, np.flatnonzero(np.diff(slots) != 1) + 1) if slots.size else []
        for inp in self.device.encoder:
            value, shape = layout.store[inp.name], layout.shapes[inp.name]
            host = self._encoder.store[inp.name]
            if copy is None:
                value.update_inplace(_fit(host, shape))
                continue
            if whole:  # the host store's slots (no more than the layout's rows)
                runs = [np.arange(host.shape[0])]
            row_bytes = math.prod(shape[1:]) * host.dtype.itemsize
            for run in runs:
                first, last = int(run[0]), int(run[-1]) + 1
                copy(value, first * row_bytes, _fit(host[first:last], [last - first, *shape[1:]]))
        if copy is not None:
            copy.done()
        self._stored, self._fresh = True, []

    def _step_inputs(self, layout: Layout, rows: int) -> None:
        views = layout.views
        sentence, _, row_place = self._current_layout()
        small = {
            "tokens": (self.tokens, self.spec.pad_id),
            "positions": (self.positions, 0),
            "row_place": (row_place, int(row_place[0])),
        }
        for role, (value, fill) in small.items():
            for name in self._named[role]:
                views[name][:rows] = value
                views[name][rows:] = fill
        for name in self._named["cache_mask"]:
            mask = views[name]
            mask.fill(False)
            live = (self._offset + np.arange(self.column)) % layout.key.columns
            mask[:rows, live] = np.arange(self.column) >= self.joined[sentence, None]


def _fit(value: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``value`` zero- (False-) padded to ``shape`` (it fits in it)."""
    out = np.zeros(shape, dtype=value.dtype)
    out[tuple(slice(0, n) for n in value.shape)] = value
    return out


def open_resident(run_decoder: Runner, spec: StepSpec, indexed: bool) -> ResidentDecoder | None:
    """The runner's :class:`ResidentDecoder`, made at first use, where the runner asks for one
    (``run_decoder.resident``: the backend's choice for a decoder on the CUDA provider) and the decoder
    fits (:func:`resident_usable`); ``None`` otherwise, or with ``KILN_RESIDENT_DECODER=0``."""
    wanted = getattr(run_decoder, "resident", None)
    if not wanted or os.environ.get("KILN_RESIDENT_DECODER", "1") == "0":
        return None
    existing = getattr(run_decoder, "resident_decoder", None)
    if existing is not None:
        return existing
    reason = resident_usable(spec, indexed)
    if reason:
        log.info("decoder steps stay on the host: %s", reason)
        run_decoder.resident = None  # type: ignore[attr-defined]
        return None
    wanted = {"model_file": getattr(run_decoder, "model_file", None), **wanted}
    decoder = ResidentDecoder(spec=spec, **wanted)
    run_decoder.resident_decoder = decoder  # type: ignore[attr-defined]
    return decoder


def decode_batch(spec: dict[str, Any] | StepSpec, indexed: bool, run_decoder: Runner) -> DecodeBatch:
    """The decode batch for ``run_decoder``: a :class:`ResidentDecodeBatch` where it has a resident
    decoder (:func:`open_resident`), else a host :class:`~serving.decoding.stepper.DecodeBatch`."""
    batch = DecodeBatch(spec, indexed)
    decoder = open_resident(run_decoder, batch.spec, indexed)
    return batch if decoder is None else ResidentDecodeBatch(batch.spec, decoder)
