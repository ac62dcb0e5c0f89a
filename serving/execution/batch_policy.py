"""How the requests of one model are grouped and queued: Triton's ``dynamic_batching`` block as data.

:class:`BatchPolicy` is read from a model's config.pbtxt; :class:`serving.execution.batcher.DynamicBatcher`
follows it. Triton's queue policy (``default_queue_policy``): a request waits in the queue at most
``default_timeout_microseconds`` (0: no limit), or its own ``timeout`` parameter where
``allow_timeout_override`` lets that shorten (never lengthen) the default (:meth:`BatchPolicy.queue_wait`).
The request's own timeout is its KServe ``timeout`` parameter only: neither the gateway's
``--request-timeout-s`` nor a gRPC deadline is one (Triton's ``PolicyQueue::Enqueue`` reads the request's
``TimeoutMicroseconds``, which only that parameter sets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BatchPolicy:
    """How requests of one model are grouped (from its config.pbtxt)."""

    max_batch_size: int = 0  # 0: the model has no batch axis; every request runs alone
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    merge: bool = True  # False when the config has no dynamic_batching block
    max_queue_size: int = 128  # waiting requests beyond this are refused with 429
    instances: int = 1
    queue_timeout_s: float = 0.0  # default_timeout_microseconds: how long a request may wait (0: forever)
    timeout_delays: bool = False  # timeout_action DELAY (a timed-out request yields), else REJECT (503)
    allow_timeout_override: bool = False  # a request's own timeout may shorten queue_timeout_s

    @classmethod
    def from_config(cls, config: Any, *, max_queue_size: int, instances: int) -> BatchPolicy:
        """Read ``max_batch_size`` and the ``dynamic_batching`` block of a Triton ModelConfig."""
        merge = config.HasField("dynamic_batching")
        batching = config.dynamic_batching
        queue = batching.default_queue_policy
        queue_limit = queue.max_queue_size if merge else 0
        return cls(
            max_batch_size=int(config.max_batch_size),
            preferred_batch_sizes=tuple(sorted(int(s) for s in batching.preferred_batch_size)),
            max_queue_delay_s=batching.max_queue_delay_microseconds / 1e6,
            merge=merge and config.max_batch_size > 0,
            max_queue_size=min(queue_limit, max_queue_size) if queue_limit > 0 else max_queue_size,
            instances=max(1, instances),
            queue_timeout_s=queue.default_timeout_microseconds / 1e6 if merge else 0.0,
            timeout_delays=merge and queue.timeout_action == queue.DELAY,
            allow_timeout_override=merge and queue.allow_timeout_override,
        )

    def queue_wait(self, own_timeout_s: float | None) -> float:
        """How long a request may wait in the queue (Triton's PolicyQueue::Enqueue): the default, or the
        request's own ``timeout`` where ``allow_timeout_override`` lets it shorten (never lengthen) that."""
        default = self.queue_timeout_s
        if self.allow_timeout_override and own_timeout_s is not None and 0 < own_timeout_s < default:
            return own_timeout_s
        return default


def batching_problems(batching: Any, max_batch_size: int) -> list[str]:
    """What Triton refuses in a ``dynamic_batching`` block: preferred sizes outside [1, max_batch_size],
    priority levels out of range, and ``preserve_ordering`` beside priorities or a DELAY queue policy."""
    problems = [
        f"dynamic_batching.preferred_batch_size {size} must be in [1, max_batch_size {max_batch_size}]"
        for size in batching.preferred_batch_size
        if not 1 <= size <= max_batch_size
    ]
    levels = int(batching.priority_levels)
    if levels and not 1 <= batching.default_priority_level <= levels:
        problems.append(
            f"dynamic_batching.default_priority_level {batching.default_priority_level} must be in "
            f"[1, priority_levels {levels}]"
        )
    problems += [
        f"dynamic_batching.priority_queue_policy level {level} must be in [1, priority_levels {levels}]"
        for level in sorted(batching.priority_queue_policy)
        if levels and not 1 <= level <= levels
    ]
    if batching.preserve_ordering:
        if levels > 1:
            problems.append(f"dynamic_batching.preserve_ordering allows one priority level, not {levels}")
        policies = [batching.default_queue_policy, *batching.priority_queue_policy.values()]
        if any(p.timeout_action == p.DELAY and p.default_timeout_microseconds for p in policies):
            problems.append(
                "dynamic_batching.preserve_ordering forbids a queue policy's timeout_action DELAY"
            )
    return problems
