"""How the requests of one model are grouped and queued: Triton's ``dynamic_batching`` block as data.

:class:`BatchPolicy` is read from a model's config.pbtxt; :class:`serving.execution.batcher.DynamicBatcher`
follows it. Triton's queue policy (``default_queue_policy``): a request waits in the queue at most
``default_timeout_microseconds`` (0: no limit), or its own ``timeout`` parameter where
``allow_timeout_override`` lets that shorten (never lengthen) the default (:meth:`BatchPolicy.queue_wait`).
The request's own timeout is its KServe ``timeout`` parameter only: neither the gateway's
``--request-timeout-s`` nor a gRPC deadline is one (Triton's ``PolicyQueue::Enqueue`` reads the request's
``TimeoutMicroseconds``, which only that parameter sets).

Triton's priorities (``priority_levels``): a request's ``priority`` parameter picks its level
(:meth:`BatchPolicy.level`), each level has its own queue policy (:class:`QueuePolicy`: the level's
``priority_queue_policy``, else ``default_queue_policy``) and a lower level number is served first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class QueuePolicy:
    """Triton's ``ModelQueuePolicy`` of one priority level: how long its requests may wait, what happens
    past that, and how many of them may wait at once."""

    timeout_s: float = 0.0  # default_timeout_microseconds (0: forever)
    delays: bool = False  # timeout_action DELAY, else REJECT
    allow_timeout_override: bool = False
    max_size: int = 0  # max_queue_size: this level's requests waiting at most (0: no limit of its own)

    @classmethod
    def from_config(cls, policy: Any) -> QueuePolicy:
        return cls(
            timeout_s=policy.default_timeout_microseconds / 1e6,
            delays=policy.timeout_action == policy.DELAY,
            allow_timeout_override=policy.allow_timeout_override,
            max_size=int(policy.max_queue_size),
        )

    @property
    def rejects(self) -> bool:
        """Whether a request past its queue timeout is answered UNAVAILABLE (REJECT with a timeout)."""
        return self.timeout_s > 0 and not self.delays

    def queue_wait(self, own_timeout_s: float | None) -> float:
        return queue_wait(self.timeout_s, self.allow_timeout_override, own_timeout_s)


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
    # Triton's priorities: how many levels (0: one queue for every request, whatever its priority), the
    # level of a request that names none, the levels with their own queue policy, and
    # default_queue_policy's max_queue_size for each level it governs (max_queue_size is then the
    # gateway's bound on all the levels' requests together)
    priority_levels: int = 0
    default_priority_level: int = 0
    priority_queue_policy: Mapping[int, QueuePolicy] = field(default_factory=dict)
    level_queue_size: int = 0

    @classmethod
    def from_config(cls, config: Any, *, max_queue_size: int, instances: int) -> BatchPolicy:
        """Read ``max_batch_size`` and the ``dynamic_batching`` block of a Triton ModelConfig."""
        merge = config.HasField("dynamic_batching")
        batching = config.dynamic_batching
        queue = batching.default_queue_policy
        levels = int(batching.priority_levels) if merge else 0
        queue_limit = queue.max_queue_size if merge and not levels else 0
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
            priority_levels=levels,
            default_priority_level=int(batching.default_priority_level) if levels else 0,
            priority_queue_policy={
                int(level): QueuePolicy.from_config(own)
                for level, own in batching.priority_queue_policy.items()
                if levels and 1 <= level <= levels
            },
            level_queue_size=int(queue.max_queue_size) if levels else 0,
        )

    def queue_wait(self, own_timeout_s: float | None) -> float:
        """How long a request may wait in the queue (without priority levels): :func:`queue_wait`."""
        return queue_wait(self.queue_timeout_s, self.allow_timeout_override, own_timeout_s)

    def level(self, priority: int) -> int:
        """A request's priority level (Triton's ``InferenceRequest::SetPriority``): its ``priority`` where
        that is in [1, ``priority_levels``], else (0, absent or past the last level) the default level."""
        return priority if 1 <= priority <= self.priority_levels else self.default_priority_level

    def queue_policy(self, level: int) -> QueuePolicy:
        """The queue policy of priority ``level``: its ``priority_queue_policy``, else the default one."""
        own = self.priority_queue_policy.get(level)
        return own if own is not None else self.default_queue_policy

    @cached_property
    def default_queue_policy(self) -> QueuePolicy:
        """``default_queue_policy``, as each priority level without a policy of its own has it."""
        return QueuePolicy(
            self.queue_timeout_s, self.timeout_delays, self.allow_timeout_override, self.level_queue_size
        )

    @property
    def longest_queue_timeout_s(self) -> float:
        """The longest queue timeout of any level (0: no request ever times out in the queue)."""
        if not self.priority_levels:
            return self.queue_timeout_s
        return max(p.timeout_s for p in (self.default_queue_policy, *self.priority_queue_policy.values()))


def queue_wait(default_s: float, allow_override: bool, own_timeout_s: float | None) -> float:
    """How long a request may wait in the queue (Triton's PolicyQueue::Enqueue): the default, or the
    request's own ``timeout`` where ``allow_override`` lets it shorten (never lengthen) that."""
    if allow_override and own_timeout_s is not None and 0 < own_timeout_s < default_s:
        return own_timeout_s
    return default_s


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
