"""One loaded model version of the embedded backend: its sessions, and which one a merged batch runs on.

Per instance: one session per bucket (one in all when bucketing is off), and, for batching models on
the CPU, the lone-request session (``OrtOptions.lone_request_threads``): a request alone takes it only
while its run would have the cores to itself (no other run in flight in any worker, and recent runs
seldom joined by new work), so under load every batch runs on the narrow batch sessions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.errors import BadRequest, ServingError
from serving.execution import placement
from serving.execution.batcher import DynamicBatcher
from serving.execution.occupancy import Occupancy
from serving.execution.repository import RepositoryEntry
from serving.execution.runner import shrink_arena
from serving.execution.validation import input_rules

log = logging.getLogger(__name__)

# Model-config parameters Triton's onnxruntime backend reads as session options; the embedded backend
# takes its sessions' options from the gateway's flags instead (``--intra-op-threads``, ...).
ORT_BACKEND_PARAMETERS = (
    "intra_op_thread_count",
    "inter_op_thread_count",
    "execution_mode",
    "enable_mem_arena",
    "enable_mem_pattern",
    "memory.enable_memory_arena_shrinkage",
    "gpu_mem_limit",
    "arena_extend_strategy",
    "cudnn_conv_use_max_workspace",
    "do_copy_in_default_stream",
    "session.use_device_allocator_for_initializers",  # Triton's key, prefix and all
)

# The share of recent runs joined by new work is a moving average of this weight (about the last ten
# runs); while it is at or above the limit, lone requests run on the narrow batch session. After a
# joined run it takes ~15 runs alone to come back under it: an open load's lulls are seldom that long,
# a closed loop of one client never joins its own runs.
CROWDING_WEIGHT = 0.1
CROWDING_LIMIT = 0.02
# A lone request may run on the event loop itself (no hand-off to the instance's thread and back) only
# where its model's last lone run took at most this long: the loop takes nothing else in meanwhile.
INLINE_MAX_S = 0.002


@dataclass
class Sessions:
    """The sessions of one model version: per instance, one per bucket (key 0 when unbucketed), and
    per instance the lone-request session (``OrtOptions.lone_request_threads``) where there is one."""

    placement: placement.Placement
    per_instance: list[dict[int, Any]]
    lone: list[Any] | None = None

    def default(self, instance: int) -> Any:
        """The instance's only session, or its largest bucket's."""
        sessions = self.per_instance[instance]
        return sessions[max(sessions)]


class LoadedModel:
    """The sessions and batcher of one model version, and the tables its hot path reads."""

    def __init__(
        self,
        entry: RepositoryEntry,
        version: str,
        sessions: Sessions,
        batcher: DynamicBatcher,
        occupancy: Occupancy,
    ) -> None:
        self.entry, self.version, self.batcher, self.occupancy = entry, version, batcher, occupancy
        unhonoured = unhonoured_fields(entry.config, exported="export" in entry.kiln)
        if unhonoured:
            log.warning(
                "model %s version %s: the embedded backend does not honour %s of %s (Triton does): "
                "serve it with --backend triton, or take them out",
                entry.name,
                version,
                "; ".join(unhonoured),
                entry.path / "config.pbtxt",
            )
        self.placement, self.buckets = sessions.placement, sessions.per_instance
        self.sessions = [sessions.default(i) for i in range(len(sessions.per_instance))]
        self.lone = sessions.lone
        self.output_names = [o.name for o in entry.config.output]
        self.output_set = frozenset(self.output_names)
        self.rules = input_rules(entry, _graph_shapes(self.sessions[0]))
        # outputs the config reshapes: {name: its dims}, the batch axis left out (validation.reshaped)
        self.output_dims = {
            o.name: tuple(int(d) for d in o.dims) for o in entry.config.output if o.HasField("reshape")
        }
        self.batched = entry.max_batch_size > 0
        self.crowding = 0.0  # moving share of recent runs that new work joined (see _quiet)
        self.lone_run_s = float("inf")  # how long the last run on the lone session took

    def run(self, instance: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one merged batch on one instance's session (called from that instance's batcher thread).

        Bucketed: the batch is padded with zero rows up to its bucket, runs on that bucket's session
        (which only ever sees that shape), and the padding rows are cut off before anything returns.
        A lone request takes the wide session only while its run would have the cores to itself
        (:meth:`_quiet`).
        """
        self.occupancy.enter()
        try:
            outputs = self._run(instance, inputs)
            # more than one item at once (requests merged), new work arrived here while this one ran,
            # or another run started anywhere meanwhile
            crowded = _rows(inputs) > 1 or bool(self.batcher.queue_depth) or not self.occupancy.alone()
            self.crowding += CROWDING_WEIGHT * (crowded - self.crowding)
            return outputs
        except Exception as exc:
            if _refused_input(exc):  # validated inputs ONNX Runtime refuses for their values
                raise BadRequest(f"model {self.entry.name!r}: ONNX Runtime refused the input: {exc}") from exc
            if _onnxruntime_error(exc, "Fail") and (empty := _empty_inputs(inputs, self.batched)):
                raise BadRequest(
                    f"model {self.entry.name!r} cannot run on an empty dimension ({empty}): {exc}"
                ) from exc
            if _onnxruntime_error(exc):  # the run itself failed: named, not `internal error`
                raise ServingError(_run_failure(self.entry.name, exc)) from exc
            raise
        finally:
            self.occupancy.leave()

    def release(self, instance: int) -> None:
        """Shrink the instance's batch session's CPU arena back to what one zero row needs (ONNX Runtime
        keeps what its largest merged batch grew it to: ~350 MiB for resnet18 at 224 x 224 after
        batches of 64). Called by the batcher's idle instance thread, so no batch runs on it meanwhile."""
        session = self.sessions[instance]
        shrink_arena(session, self.output_names, placement.zero_inputs(session, 1))

    def _quiet(self) -> bool:
        """Whether a run now would have the cores to itself: nothing else runs in any worker, and
        lately runs have seldom been joined by new work (which the event loop must take in meanwhile).
        A lone request under an open load is not alone for long: measured with perf_analyzer, one
        worker at 500 requests/s, a run took 1.22 ms on the wide session against 1.03 on the narrow
        one, p99 8.6 against 5.6 ms; a closed loop of one client is never joined."""
        return self.crowding < CROWDING_LIMIT and self.occupancy.alone()

    def may_run_inline(self, backlogged: bool) -> bool:
        """Whether a lone request may run on the event loop (``DynamicBatcher``'s inline path): the
        lone session is short (``INLINE_MAX_S``), runs are quiet, and nothing runs anywhere.
        ``backlogged``: the request was waiting while the previous one ran on the loop, which counts
        as a joined run (so batches form again under load)."""
        if backlogged:
            self.crowding += CROWDING_WEIGHT * (1.0 - self.crowding)
            return False
        return (
            self.lone is not None
            and self.lone_run_s <= INLINE_MAX_S
            and self.crowding < CROWDING_LIMIT
            and self.occupancy.idle()
        )

    def _run(self, instance: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.placement.buckets:
            session = self.sessions[instance]
            if (
                self.lone is not None
                and _rows(inputs) == 1
                and not self.batcher.queue_depth
                and self._quiet()
            ):
                started = time.perf_counter()
                values = self.lone[instance].run(self.output_names, inputs)
                self.lone_run_s = time.perf_counter() - started
            else:
                values = session.run(self.output_names, inputs)
            return dict(zip(self.output_names, values, strict=True))
        rows = _rows(inputs)
        size = self.placement.bucket_for(rows)
        values = self.buckets[instance][size].run(self.output_names, placement.pad_rows(inputs, size))
        return {name: value[:rows] for name, value in zip(self.output_names, values, strict=True)}


def unhonoured_fields(config: Any, exported: bool = False) -> list[str]:
    """The fields of ``config`` that Triton honours and this backend would otherwise ignore without a
    word: a sequence batcher (stateful models), ONNX Runtime's graph level and
    execution accelerators (TensorRT, OpenVINO), the onnxruntime backend's session parameters,
    inputs declared ``optional`` (a request here must send every input), and Triton's ragged batching:
    inputs with ``allow_ragged_batch`` (the batcher merges only requests of one shape, so they are
    never concatenated) and ``batch_input`` / ``batch_output`` (never made here).
    An ``exported`` entry's TensorRT accelerator is Kiln's own, written for Triton (docs/kiln-json.md),
    so it is not named at every GPU start."""
    fields = []
    if config.HasField("sequence_batching"):
        fields.append("sequence_batching (requests are not routed by sequence_id, nor given control inputs)")
    optimization = config.optimization
    if optimization.HasField("graph"):
        fields.append(f"optimization.graph.level {optimization.graph.level}")
    accelerators = optimization.execution_accelerators
    for kind in ("gpu_execution_accelerator", "cpu_execution_accelerator"):
        names = [a.name for a in getattr(accelerators, kind) if not (exported and a.name == "tensorrt")]
        if names:
            fields.append(f"optimization.execution_accelerators.{kind} {names}")
    ignored = sorted(key for key in config.parameters if key in ORT_BACKEND_PARAMETERS)
    if ignored:
        fields.append(f"parameters {ignored}")
    if config.model_transaction_policy.decoupled:  # Triton answers such a model over streams alone
        fields.append(
            "model_transaction_policy decoupled (each request is answered once, over unary HTTP and gRPC "
            "calls too, which Triton refuses for a decoupled model)"
        )
    optional = [tensor.name for tensor in config.input if tensor.optional]
    if optional:  # loaded without a word, every request leaving one out was a 400 "missing"
        fields.append(f"input optional {optional} (every request must send them)")
    ragged = [tensor.name for tensor in config.input if tensor.allow_ragged_batch]
    if ragged:  # loaded without a word: requests of other shapes ran apart, never concatenated
        fields.append(f"input allow_ragged_batch {ragged} (requests of different shapes are never batched)")
    for kind in ("batch_input", "batch_output"):
        names = [name for tensor in getattr(config, kind) for name in tensor.target_name]
        if names:
            fields.append(f"{kind} {names}")
    return fields


def _refused_input(exc: Exception) -> bool:
    """ONNX Runtime's INVALID_ARGUMENT: names, dtypes and shapes are validated before a request is
    queued, so what is left is a value the graph refuses (a token id outside the vocabulary), the
    client's mistake: a 400, as Triton's onnxruntime backend answers it."""
    return _onnxruntime_error(exc, "InvalidArgument")


def _run_failure(name: str, exc: Exception) -> str:
    """What a request whose run ONNX Runtime failed (not for its input: out of memory, a kernel's own
    error) is answered, a 500 naming the model and ONNX Runtime's error, as Triton's onnxruntime backend
    answers it. It was ``internal error: RuntimeException``, the error itself in the log alone."""
    return f"model {name!r}: ONNX Runtime failed to run it: {type(exc).__name__}: {exc}"


def _graph_shapes(session: Any) -> dict[str, list]:
    """Each input's shape as the graph names its axes (a bound session's, its session's; a session
    without ``get_inputs``, a test's fake: none)."""
    inputs = getattr(getattr(session, "session", session), "get_inputs", None)
    return {i.name: list(i.shape) for i in inputs()} if inputs else {}


def unlisted_inputs(config: Any, session: Any) -> list[str]:
    """The inputs the graph requires that the config does not list. Triton refuses such a model at
    load ("configuration expects 1 inputs, model provides 2"); loaded, every request to it failed in
    ONNX Runtime, a 500 the client could do nothing about."""
    listed = {tensor.name for tensor in config.input}
    return sorted(name for name in _graph_shapes(session) if name not in listed)


def _onnxruntime_error(exc: Exception, name: str | None = None) -> bool:
    """Whether ``exc`` is ONNX Runtime's error ``name`` (None: any of its errors)."""
    kind = type(exc)
    return name in (None, kind.__name__) and kind.__module__.startswith("onnxruntime")


def _empty_inputs(inputs: dict[str, np.ndarray], batched: bool) -> str:
    """The inputs with a zero-length dimension after the batch axis, named with their shapes ("" if
    none). A dynamic dimension may be 0 where the graph takes it (a decoder's cache before its first
    step), so validation lets it through; where an operator cannot (an encoder over a source of no
    tokens), ONNX Runtime fails with a plain FAIL, which is then the request's doing: a 400."""
    skip = 1 if batched else 0
    return ", ".join(
        f"{name!r} of shape {list(array.shape)}" for name, array in inputs.items() if 0 in array.shape[skip:]
    )


def _rows(inputs: dict[str, np.ndarray]) -> int:
    return int(next(iter(inputs.values())).shape[0])
