"""The one interface every gateway front end (REST, KServe v2 HTTP, KServe v2 gRPC) calls.

Front ends translate wire formats into :class:`InferRequest` and back; backends never see HTTP or
gRPC. Errors a client caused are raised as :class:`serving.errors.ServingError` subclasses carrying
the HTTP status (mapped to gRPC codes by the gRPC server), never as bare exceptions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# Request parameters the KServe/Triton protocols consume themselves; they never reach a model, and
# Triton refuses them when forwarded as model parameters. So are names with Triton's reserved prefix
# (its extension_parameters document): perf_analyzer sends triton_enable_empty_final_response on every
# gRPC request (a decoupled model's streaming option), which tritonclient refuses to forward.
PROTOCOL_PARAMETERS = frozenset(
    {"binary_data_output", "timeout", "sequence_id", "sequence_start", "sequence_end", "priority", "headers"}
)
RESERVED_PREFIX = "triton_"


def model_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The request parameters meant for the model (decoding options and the like)."""
    return {
        k: v
        for k, v in parameters.items()
        if k not in PROTOCOL_PARAMETERS and not k.startswith(RESERVED_PREFIX)
    }


class LoadingStopped(RuntimeError):
    """A stop signal came while the models loaded: the start-up was stopped, as asked, not failed."""


# One model entry as a blocking callable over named arrays (what the decoding scheduler drives).
Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class GraphChoice:
    """Which file of an entry a runner's CPU session opens instead of its model file, and what that
    session's options need for it, said by the layer that knows (the decoding layer's fused-attention
    graphs, :data:`serving.decoding.translator.FUSED_ATTENTION`): ``path(model_file)`` is the file to open,
    ``prepare(path, session_options)`` readies the options for it."""

    path: Callable[[Path], Path]
    prepare: Callable[[Path, Any], Any]


@dataclass
class TensorMeta:
    name: str
    datatype: str  # KServe v2 datatype: "UINT8", "FP32", "INT64", "BYTES", "BOOL", ...
    shape: list[int]  # -1 for dynamic axes, batch axis included when max_batch_size > 0


@dataclass
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMeta]
    outputs: list[TensorMeta]


@dataclass
class InferRequest:
    model: str
    inputs: dict[str, np.ndarray]
    version: str = ""
    outputs: list[str] | None = None  # None: all outputs
    parameters: dict[str, Any] = field(default_factory=dict)  # the request's own, for the model
    request_id: str = ""
    # The request's own ``timeout`` parameter (KServe v2 / Triton: microseconds on the wire), in seconds:
    # it may shorten the request's deadline, and its queue timeout where the model's config allows
    # (``allow_timeout_override``, :mod:`serving.execution.batch_policy`). None: not given.
    timeout_s: float | None = None
    # The client's deadline from its transport (gRPC's ``grpc-timeout``), in seconds: it may shorten the
    # request's deadline, never its queue timeout. None: none sent.
    deadline_s: float | None = None
    # Triton's ``priority`` parameter (already checked: an integer from 0): the queue level it asks for
    # where the model's config has ``priority_levels`` (:meth:`BatchPolicy.level`); 0: the default level
    priority: int = 0
    # Triton's classification extension, {output: top-k count}, from the outputs' parameters: a field,
    # never a key of ``parameters``, so a request parameter of that name reaches the model untouched
    classification: dict[str, int] = field(default_factory=dict)

    def time_limit(self, server_s: float | None) -> float | None:
        """How long this request may take: the server's limit ``server_s`` (``--request-timeout-s``) as a
        ceiling, shortened, never lengthened, by the client's own timeout or deadline (None: no limit)."""
        return min((t for t in (server_s, self.timeout_s, self.deadline_s) if t is not None), default=None)


@dataclass
class InferResponse:
    model: str
    version: str
    outputs: dict[str, np.ndarray]
    request_id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """What the gateway needs from an inference backend."""

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Finish in-flight work, then release sessions / connections."""

    def list_models(self) -> list[str]: ...

    def is_live(self) -> bool: ...

    async def is_ready(self) -> bool: ...

    async def model_ready(self, name: str, version: str = "") -> bool: ...

    def load_error(self, name: str) -> str:
        """Why model ``name`` failed to load ("" where it did not, or the backend cannot say): the
        repository index shows it as the model's reason, as Triton's does."""

    def metadata(self, name: str, version: str = "") -> ModelMetadata: ...

    def config(self, name: str, version: str = "") -> dict[str, Any]:
        """The model's config.pbtxt as JSON (``MessageToDict`` of Triton's ModelConfig)."""

    async def infer(self, request: InferRequest) -> InferResponse: ...
