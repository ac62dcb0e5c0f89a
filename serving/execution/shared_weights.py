"""One copy of a model's weights for all of its CPU sessions, in every worker.

ONNX Runtime gives each session its own copy of a model's weights, rewritten at load for this CPU
(at the default optimization level its layout pass reorders every convolution's filters into NCHWc
blocks). A model served by a gateway has several sessions: each instance's batch session, the
lone-request session beside it (``OrtOptions.lone_request_threads``), and all of that again in each of
``--workers`` processes. Two workers with a lone session each held resnet18's 45 MB of filters four
times over, in a 32 MB L3, and sessions taking turns evicted each other's: measured on 2 cores, two
single-thread processes running it side by side, 0.80-1.33 ms an image at batch 1 and 0.62-0.82 at
batch 8 with copies of their own, 0.70-0.88 and 0.58-0.68 mapping one.

So the first session of a model optimizes it once, the usual way, and has ONNX Runtime save the
optimized graph with its initializers in one external file (``session.optimized_model_external_
initializers_file_name``), with the weights its kernels pre-pack (a MatMul's or Gemm's constant
operand, laid out for MLAS) saved there pre-packed too (``session.save_external_prepacked_constant_
initializers``). Every session then opens that graph with its optimizations off, and ONNX Runtime
maps the file rather than reading it: the pages are the page cache's, one physical copy whatever the
number of sessions or processes. Without the pre-packed copies in the file, each session packs its
own from the mapped weights: a 32 MB stack of MatMuls cost 32 MB more with every session that opened
it (proportional set size of 4 sessions 84 MB, against 32 MB with them saved; the same answers, at
the same speed).

A translator's decode workers ask the same store for their encoder and decoder graphs (the fused-
attention twins: :class:`serving.execution.base.GraphChoice` readies the optimizing session too), so
the Python decoder session, the compiled step's own session over the C API, the encoder session, and
all of that in every decode worker and gateway worker, map one copy; the entries' KServe batch
sessions open the same graphs (``OnnxRuntimeBackend``'s ``graphs``), so they add none. The graph holds NCHWc operators tuned to this CPU, so
the directory lives as long as the gateway that made it (``serving.workers`` makes one for all of its
workers and removes it; a gateway of one process makes its own) and is never shipped elsewhere.

Anything that goes wrong here (a read-only temporary directory, a disk full, a graph ONNX Runtime
cannot save) is logged, and that model's sessions load its own file as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from serving.process_tree import make_held_dir, release

log = logging.getLogger(__name__)

PREFIX = "kiln-weights-"  # then the pid of the process that made the directory (serving.workers sweeps)
GRAPH = "model.onnx"
WEIGHTS = "weights.bin"
# Initializers this small stay in the graph file: one page each would be the most a mapping shares.
MIN_EXTERNAL_BYTES = 4096
PREPACKED_KEY = "session.save_external_prepacked_constant_initializers"


def create_store_dir() -> Path:
    """A new directory for optimized models, in the temporary directory: they are as large as the
    models, so not in /dev/shm, which containers often cap at 64 MB. This process holds it while it
    lives (:func:`serving.process_tree.make_held_dir`), so a later gateway removes it once this one is
    killed, in this container or in one restarted since."""
    return make_held_dir(PREFIX)


class WeightStore:
    """Optimized models, one per model file and providers, shared by every session that asks.

    ``root``: the directory (made by ``serving.workers`` for all of its workers, who leave it in place);
    None, a new one that :meth:`close` removes."""

    def __init__(self, root: Path | None = None) -> None:
        self.owned = root is None
        self._failed: set[str] = set()
        self.root: Path | None = root
        if root is None:
            try:
                self.root = create_store_dir()
            except OSError as exc:  # a read-only or full temporary directory: each session its own copy
                log.warning(
                    "no directory for the shared weights in the temporary directory (%s): every session "
                    "loads its own copy of its model's weights",
                    exc,
                )

    def graph_for(
        self, path: Path, providers: list[Any], prepare: Callable[[Any], Any] | None = None
    ) -> Path | None:
        """The optimized graph of ``path`` whose weights every session shares, made now if no session of
        any worker has asked for it yet; None when it cannot be made (logged once: the caller opens
        ``path`` itself, as it would without a store). ``prepare(session_options)`` readies the
        optimizing session's options for ``path`` (custom operators a graph needs registered)."""
        key = _key(path, providers)
        if key in self._failed or self.root is None:
            return None
        done = self.root / key
        try:
            with _locked(self.root / f"{key}.lock"):
                if not (done / GRAPH).is_file():
                    self._optimize(path, providers, done, prepare)
        except Exception as exc:  # noqa: BLE001 - the model still loads, from its own file
            self._failed.add(key)
            if _unreadable(exc):  # the caller's own session fails on it too, and reports that alone
                return None
            log.warning(
                "%s: its sessions load their own copies of its weights (optimizing it into a shared file "
                "in %s failed: %s)",
                path,
                self.root,
                exc,
            )
            return None
        return done / GRAPH

    def close(self) -> None:
        """Remove the directory if this store made it (the sessions keep their mappings until freed)."""
        if self.owned and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            release(self.root)

    def _optimize(
        self, path: Path, providers: list[Any], done: Path, prepare: Callable[[Any], Any] | None = None
    ) -> None:
        import onnxruntime as ort

        scratch = Path(tempfile.mkdtemp(dir=self.root, prefix=f"{done.name}.part-"))
        try:
            opts = ort.SessionOptions()
            if prepare is not None:
                prepare(opts)
            # one thread: this session only optimizes and saves the graph (the same file with any
            # number), and a pool of a thread per CPU, started and joined for each model, was a third
            # of a small model's optimization (and oversubscribed the cores when several models load)
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.optimized_model_filepath = str(scratch / GRAPH)
            opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", WEIGHTS)
            opts.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", str(MIN_EXTERNAL_BYTES)
            )
            # the kernels' pre-packed weights saved beside them, mapped by every session (ONNX Runtime
            # 1.20+; older ones ignore the entry and each session packs its own)
            opts.add_session_config_entry(PREPACKED_KEY, "1")
            opts.log_severity_level = 3  # its warning that the graph suits this machine only is ours to know
            ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            if not (scratch / GRAPH).is_file():
                raise RuntimeError("ONNX Runtime wrote no optimized graph")
            os.rename(scratch, done)  # whole or not at all: a worker killed halfway leaves only scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return_freed_memory()  # the optimizing session's copies, freed (see return_freed_memory)


def _unreadable(error: Exception) -> bool:
    """Whether ONNX Runtime refused ``error``'s model file as no ONNX model at all (corrupt, truncated):
    the session the caller then opens fails the load with the same error, and a warning before it that
    the weights are not shared blamed the store for a broken file."""
    return type(error).__name__ in ("InvalidProtobuf", "NoSuchFile")


def return_freed_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``); False where the C
    library has none.

    Loading a model frees about as much as it keeps: ONNX Runtime reads the model whole, and the session
    that optimizes a graph for the store holds its weights twice before it is released. glibc keeps
    such freed memory in its heap for allocations to come, which a loaded gateway does not make: a
    process that had optimized a 90 MB decoder kept 190 MB it had freed (private memory 240 MB after,
    59 MB once trimmed)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


def shared_options(opts: Any) -> None:
    """Set ``opts`` (an ``ort.SessionOptions``) to open a graph :meth:`WeightStore.graph_for` gave: its
    optimizations are done, and running them again would rewrite (copy) the mapped weights."""
    import onnxruntime as ort

    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def _key(path: Path, providers: list[Any]) -> str:
    """Names the optimized graph of this file, as it is now, for these providers.

    A re-export of a model often keeps its path, its size (the same architecture retrained) and even
    its mtime (``cp -p``, a tarball, a build that pins every mtime), so those alone named the old
    weights' graph for the new file. Its inode and change time are new whenever the file is replaced
    or rewritten, and no copy can set the change time, so with them the key names this file's weights."""
    resolved = path.resolve()
    stat = resolved.stat()
    identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    text = f"{resolved}\0{identity}\0{providers!r}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """Held by one process at a time: the workers of a gateway load their models at the same moment,
    and one optimizes while the others wait for its file."""
    with open(lock, "ab") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)
