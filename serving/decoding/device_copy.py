"""Partial copies between host arrays and device buffers (an ``OrtValue``'s memory at an offset),
which ONNX Runtime's Python API cannot make: ``cudaMemcpy`` from the CUDA runtime ONNX Runtime
loaded, or ``memmove`` for buffers on the CPU (the resident decoder's tests)."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

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
        with open("/proc/self/maps", "rb") as maps:  # paths in the bytes they were named in
            paths = {os.fsdecode(line.split()[-1]) for line in maps if b"libcudart.so" in line}
    except OSError:
        paths = set()
    for name in [*sorted(paths), "libcudart.so.13", "libcudart.so.12", "libcudart.so"]:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None
