"""Which of gRPC core's two socket layers the gateway's gRPC server accepts connections on.

Recent grpcio (1.85 here) serves accepted connections through its EventEngine: every socket read is handed to
the EventEngine's own thread pool, which queues the completion for grpc.aio's poller thread, which
wakes the event loop. On a small machine each hand-off is a futex wake-up of another thread. With the
listener on iomgr (``GRPC_EXPERIMENTS=-event_engine_listener``) the poller thread reads the socket
itself. Measured on 2 cores (perf_analyzer, resnet18, 2 workers): 36-42 -> 27-30 system calls a
unary call under strace at concurrency 1 (futex 7-11 -> 1-3); at concurrency 64 the front end's CPU
a request ~5 % lower, about 0.02 ms (README, "gRPC sockets").

grpc reads ``GRPC_EXPERIMENTS`` once, when its core starts, so this runs before ``grpc`` is imported
(``python -m serving`` does it first thing). A ``GRPC_EXPERIMENTS`` already in the environment wins:
whoever set it chose grpc's experiments themselves.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Literal

GrpcIo = Literal["iomgr", "event-engine"]

ENV = "GRPC_EXPERIMENTS"
EXPERIMENTS: dict[str, str] = {
    "iomgr": "-event_engine_listener",  # accepted connections on iomgr's endpoints
    "event-engine": "",  # grpc's own default
}


def choose(io: GrpcIo, environ: MutableMapping[str, str] | None = None) -> tuple[str, bool]:
    """Set ``GRPC_EXPERIMENTS`` for ``io`` unless the environment sets it already.

    Returns what grpc will read and whether it came from the environment (``io`` then ignored).
    """
    environ = os.environ if environ is None else environ
    if ENV in environ:
        return environ[ENV], True
    value = EXPERIMENTS[io]
    if value:
        environ[ENV] = value
    return value, False
