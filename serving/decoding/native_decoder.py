"""A decoder step in one compiled call: ONNX Runtime's C API, the beam step and the rows' advance.

A :class:`~serving.decoding.stepper.DecodeBatch` step in Python is one ONNX Runtime call through its
Python binding, then the compiled beam step, then the rows' advance (each cache gathered and grown),
with Python between them: at one sentence (4 rows) ~140 us of Python around a ~140 us decoder call.
``kiln_decode_step`` (``ort_step.c``) does all three in one call, without the GIL: the decoder runs
through ONNX Runtime's C API on a session of its own (same library version, same options, so the
same kernels and bit-identical outputs), over buffers the batch owns; the beam step is the same
kernel; and when no sentence changed its rows (no sentence finished, widened or joined), or whatever
they did where the rows are in search order over the encoder store (``row_place``), the advance is
done there too, into buffers kept here. Other steps hand the advance back to the Python code,
which stays the definition (``tests/test_native_decoder.py`` checks both agree bit for bit).

:func:`open_native_decoder` gives ``None`` (and the batch steps in Python) where the compiled library,
ONNX Runtime's C library (the wheel's ``onnxruntime/capi/libonnxruntime.so.*``) or a CPU session is
unavailable, or with ``KILN_NATIVE_DECODER=0``.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from serving.decoding import native
from serving.decoding.compiled_step import address
from serving.execution.runner import session_runner

log = logging.getLogger(__name__)

API_VERSION = 17  # the OrtApi version asked for: every entry ort_step.c calls is older (1.17+ serves it)
# ONNX tensor element types of the dtypes a decoder step feeds
ONNX_TYPES = {
    np.dtype(np.float32): 1,
    np.dtype(np.int32): 6,
    np.dtype(np.int64): 7,
    np.dtype(np.bool_): 9,
    np.dtype(np.float16): 10,
    np.dtype(np.float64): 11,
}
MAX_RANK = 4  # ort_step.c's tensor descriptor holds four dimensions
# inputs and outputs together a decoder may have (ort_step.c's MAX_TENSORS): one with more steps in
# Python (each of its compiled calls failed instead)
MAX_TENSORS = 256
MAX_STEPS = 16  # steps one call may run (bounds the columns its buffers make room for)
# steps' worth of finished hypotheses (each step offers at most its kept rows) a call keeps for the
# caller and goes on; a call that would keep more hands back
FOUND_STEPS = 4
# what ort_step.c fills in a tensor at each step (CACHE + index); every kind but FIXED: its row count
FIXED, TOKENS, POSITIONS, MASK, ROWS, ROW_PLACE, CACHE = 0, 1, 2, 3, 4, 5, 16
TENSOR = 9  # the plan's fields per tensor (tensor_fields; ort_step.c's TENSOR): dims from the fifth
ERROR_BYTES = 1024
# ONNX Runtime's GraphOptimizationLevel: every optimization (the Python API's default), or none (a graph
# optimized and saved already, whose mapped weights a rewrite would copy)
ORT_ENABLE_ALL, ORT_DISABLE_ALL = 99, 0

_lock = threading.Lock()
_library: list[Any] = []  # [] until the first load decides: [CDLL or None]


def _c_library() -> Any:
    """The compiled library with ``kiln_decode_step`` releasing the GIL (a CDLL over the same file
    :mod:`serving.decoding.native` loads holding it), ONNX Runtime's C API set up; ``None`` if not."""
    with _lock:
        if not _library:
            _library.append(_load())
        return _library[0]


def _load() -> Any:
    if os.environ.get("KILN_NATIVE_DECODER", "1") == "0" or native.load() is None:
        return None
    try:
        import onnxruntime as ort

        found = sorted(glob.glob(str(Path(ort.__file__).parent / "capi" / "libonnxruntime.so*")))
        if not found:
            log.info(
                "no ONNX Runtime C library in %s: decoder steps run in Python", Path(ort.__file__).parent
            )
            return None
        runtime = ctypes.CDLL(found[-1])
        base = runtime.OrtGetApiBase
        base.restype = ctypes.c_void_p
        path = native.loaded_path()
        lib = ctypes.CDLL(str(path))  # the library native.load() built; CDLL: the GIL is released
        lib.kiln_ort_init.restype = ctypes.c_int64
        lib.kiln_ort_init.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_char_p, ctypes.c_int64]
        lib.kiln_ort_session.restype = ctypes.c_void_p
        lib.kiln_ort_session.argtypes = [ctypes.c_char_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
        lib.kiln_ort_session.argtypes += [ctypes.c_void_p]
        lib.kiln_ort_session.argtypes += [ctypes.c_void_p, ctypes.c_int64, ctypes.c_char_p, ctypes.c_int64]
        lib.kiln_ort_release_session.restype = None
        lib.kiln_ort_release_session.argtypes = [ctypes.c_void_p]
        lib.kiln_decode_step.restype = ctypes.c_int64
        lib.kiln_decode_step.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64]
        error = ctypes.create_string_buffer(ERROR_BYTES)
        if lib.kiln_ort_init(ctypes.cast(base, ctypes.c_void_p), API_VERSION, error, ERROR_BYTES):
            log.warning(
                "ONNX Runtime's C API unavailable (%s): decoder steps run in Python", error.value.decode()
            )
            return None
        lib._runtime = runtime  # kept loaded
        return lib
    except (OSError, AttributeError, ImportError) as exc:
        log.warning("compiled decoder step unavailable (%s): decoder steps run in Python", exc)
        return None


class NativeDecoder:
    """A decoder session opened through ONNX Runtime's C API, and the buffers its steps reuse.

    ``inputs`` and ``outputs`` are the graph's names (the batch feeds its inputs by name, in this
    order). ``optimized``: ``path`` is a graph ONNX Runtime optimized and saved already (a weight
    store's, :mod:`serving.execution.shared_weights`), opened as it is so that its mapped weights stay
    shared. Not thread-safe: one decode thread steps through it (each decode worker has its own).
    """

    def __init__(
        self,
        path: str | Path,
        inputs: list[str],
        outputs: list[str],
        *,
        intra_op_threads: int = 1,
        config: dict[str, str] | None = None,
        optimized: bool = False,
    ) -> None:
        lib = _c_library()
        if lib is None:
            raise RuntimeError("the compiled decoder step is unavailable")
        self.lib, self.path = lib, str(path)
        self.inputs, self.outputs = list(inputs), list(outputs)
        # names as C strings, held: their addresses go into every step's arguments
        self._names = {name: ctypes.create_string_buffer(name.encode()) for name in (*inputs, *outputs)}
        self.name_address = {name: ctypes.addressof(buffer) for name, buffer in self._names.items()}
        items = list((config or {}).items())
        keys = (ctypes.c_char_p * max(1, len(items)))(*[k.encode() for k, _ in items])
        values = (ctypes.c_char_p * max(1, len(items)))(*[v.encode() for _, v in items])
        self.error = ctypes.create_string_buffer(ERROR_BYTES)
        level = ORT_DISABLE_ALL if optimized else ORT_ENABLE_ALL
        self.session = lib.kiln_ort_session(
            self.path.encode(), intra_op_threads, 1, level, keys, values, len(items), self.error, ERROR_BYTES
        )
        if not self.session:
            raise RuntimeError(f"ONNX Runtime could not open {self.path}: {self.error.value.decode()}")
        self._buffers: dict[str, tuple[np.ndarray, int]] = {}  # key: (buffer, its address)
        self._pair_keys: dict[str, tuple[str, str]] = {}  # key: the keys of its two buffers (pair)
        self.generation = 0  # counts buffer reallocations (a plan holding their addresses is rebuilt)
        self.turn = 0  # which of each pair of advance buffers the next call's first advance writes
        self.result = np.zeros(9, dtype=np.int64)  # the last call's result block (see ort_step.c)
        # counts each call as a model run where set (serving.execution.occupancy: a lone classify
        # request then knows a translation is decoding beside it)
        self.occupancy: Any = None

    def __del__(self) -> None:
        session, self.session = getattr(self, "session", None), None
        if session:
            self.lib.kiln_ort_release_session(session)

    def buffer(self, key: str, elements: int, dtype: Any) -> np.ndarray:
        """A flat buffer of at least ``elements`` reused across steps (grown by doubling)."""
        return self.buffer_at(key, elements, dtype)[0]

    def buffer_at(self, key: str, elements: int, dtype: Any) -> tuple[np.ndarray, int]:
        """:meth:`buffer` and its address (looked up once per allocation: a call passes ~20 of them)."""
        found = self._buffers.get(key)
        if found is None or found[0].size < elements or found[0].dtype != dtype:
            size = max(elements, 2 * found[0].size if found is not None else 0, 64)
            current = np.empty(size, dtype=dtype)
            found = self._buffers[key] = (current, address(current))
            self.generation += 1
        return found

    def release(self) -> int:
        """Drop every reused buffer (a burst's decode state: caches, outputs, scratch), to be grown
        again by the next call; the bytes dropped. Only while no batch holds a view of them or a plan
        with their addresses (the scheduler's idle decode thread, over a fresh batch): the generation
        moves on, so a plan made before is rebuilt anyway."""
        dropped = sum(buffer.nbytes for buffer, _ in self._buffers.values())
        if self._buffers:
            self._buffers.clear()
            self.generation += 1
        self.turn = 0
        self.result = np.zeros(9, dtype=np.int64)
        return dropped

    def pair(self, key: str, elements: int, dtype: Any) -> tuple[tuple[np.ndarray, ...], tuple[int, ...]]:
        """The two buffers a call's advances alternate between (``key#0`` and ``key#1``, the one the
        first advance writes first: see :attr:`turn`) and their addresses."""
        keys = self._pair_keys.get(key)
        if keys is None:  # formatted once: a call asks for eight pairs
            keys = self._pair_keys[key] = (f"{key}#0", f"{key}#1")
        first = self.buffer_at(keys[self.turn], elements, dtype)
        second = self.buffer_at(keys[self.turn ^ 1], elements, dtype)
        return (first[0], second[0]), (first[1], second[1])

    def step(self, plan: np.ndarray, dyn: np.ndarray) -> None:
        """``kiln_decode_step`` over ``plan`` and ``dyn``; raises with ONNX Runtime's message if a run
        failed."""
        occupancy = self.occupancy
        if occupancy is not None:
            occupancy.enter()
        try:
            failed = self.lib.kiln_decode_step(address(plan), address(dyn), self.error, ERROR_BYTES)
        finally:
            if occupancy is not None:
                occupancy.leave()
        if failed:
            raise RuntimeError(f"decoder step failed: {self.error.value.decode(errors='replace')}")


def tensor_fields(name_address: int, array: np.ndarray, kind: int) -> list[int]:
    """The nine integers ``ort_step.c`` describes a tensor with: name, data, type, rank, four dims, and
    what it fills in at each step (``kind``)."""
    shape = array.shape
    fields = [name_address, address(array), ONNX_TYPES[array.dtype], len(shape), *shape]
    return fields + [0] * (4 - len(shape)) + [kind]


def open_native_decoder(
    path: str | Path,
    session: Any,
    *,
    intra_op_threads: int = 1,
    config: dict[str, str] | None = None,
    optimized: bool = False,
) -> NativeDecoder | None:
    """A :class:`NativeDecoder` over the model at ``path`` for a decoder already open in ``session`` (an
    ONNX Runtime InferenceSession: its input and output names, and CPU only), or ``None`` where it
    cannot be used (the batch then steps in Python). ``optimized``: see :class:`NativeDecoder`."""
    if "CPUExecutionProvider" not in session.get_providers()[:1]:
        return None
    if any(len(i.shape or ()) > MAX_RANK for i in session.get_inputs()):
        return None
    if len(session.get_inputs()) + len(session.get_outputs()) > MAX_TENSORS:
        log.info("decoder %s has more than %d inputs and outputs: its steps run in Python", path, MAX_TENSORS)
        return None
    if _c_library() is None:
        return None
    try:
        return NativeDecoder(
            path,
            [i.name for i in session.get_inputs()],
            [o.name for o in session.get_outputs()],
            intra_op_threads=intra_op_threads,
            config=config,
            optimized=optimized,
        )
    except RuntimeError as exc:
        log.warning("%s: decoder steps run in Python", exc)
        return None


def attach(run_decoder: Any, entry: str = "", *, again: bool = False) -> Any:
    """``run_decoder`` with a :class:`NativeDecoder` as ``run_decoder.native`` where it can have one: an
    ONNX Runtime runner (``serving.execution.onnxruntime``) that says which file its session opened
    (``model_file``), with which session config entries (``session_config``) and whether that file is
    a graph optimized already (``optimized``). Others, e.g. Triton's, keep stepping in Python. The log
    names the decoder's repository ``entry`` where given (its session's file is the weight store's
    copy, a temporary path); ``again``: another decode worker of a decoder already logged, at debug."""
    path, session = getattr(run_decoder, "model_file", None), getattr(run_decoder, "session", None)
    if path is not None and session is not None and getattr(run_decoder, "native", None) is None:
        config = getattr(run_decoder, "session_config", None)
        optimized = bool(getattr(run_decoder, "optimized", False))
        run_decoder.native = open_native_decoder(path, session, config=config, optimized=optimized)
        if run_decoder.native is not None:
            run_decoder.native.occupancy = getattr(run_decoder, "occupancy", None)
            shown = entry or path
            level = logging.DEBUG if again else logging.INFO
            log.log(level, "decoder %s: steps compiled (ONNX Runtime C API)", shown)
    return run_decoder


def open_runner(model_file: str | Path, *, intra_op_threads: int = 1, decoder: bool = False) -> Any:
    """A runner over a translator graph opened in this process on CPU, as the gateway's decode workers
    open it: the fused-attention twin where the compiled operators load (:func:`native.graph_to_open`),
    ``intra_op_threads`` threads, and for a ``decoder`` its steps compiled where they can be
    (:func:`attach`). What the bench's engine rows and Triton's ``<name>`` python model (which cannot
    import the gateway's backend) use."""
    import onnxruntime as ort  # lazy: nothing heavy at import time

    path = native.graph_to_open(Path(model_file))
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(path), native.session_options(path, options), providers=["CPUExecutionProvider"]
    )
    run = session_runner(session)
    run.model_file = path  # type: ignore[attr-defined]
    return attach(run) if decoder else run
