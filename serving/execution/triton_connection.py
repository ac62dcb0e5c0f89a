"""One tritonclient connection to a running Triton server (gRPC or HTTP), as the ``triton`` backend uses it.

The client is created on first use. A lost link drops it, and the next call builds a fresh one (a fresh
channel with a private subchannel, so no gRPC reconnect backoff), so the gateway recovers as soon as Triton
is back. Every failure becomes a gateway error: Triton being unreachable is a 503 with Retry-After, never a
crash, and Triton's own answers keep their status (``STATUS_TO_ERROR``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tritonclient.utils import InferenceServerException

from serving.errors import (
    BadRequest,
    DeadlineExceeded,
    ModelNotFound,
    Overloaded,
    ServingError,
    Unavailable,
    seconds_text,
)

log = logging.getLogger("serving.execution.triton")  # the triton backend's log, whichever part writes it

# tritonclient status (gRPC code name or HTTP status) -> the gateway's error class.
STATUS_TO_ERROR: dict[str, type[ServingError]] = {
    "StatusCode.INVALID_ARGUMENT": BadRequest,
    "StatusCode.NOT_FOUND": ModelNotFound,
    "StatusCode.RESOURCE_EXHAUSTED": Overloaded,
    "StatusCode.UNAVAILABLE": Unavailable,
    "StatusCode.DEADLINE_EXCEEDED": DeadlineExceeded,
    "400": BadRequest,
    "404": ModelNotFound,
    "429": Overloaded,
    "503": Unavailable,
    "504": DeadlineExceeded,
}
PROTOCOLS = ("grpc", "http")


def grpc_channel_args() -> list[tuple[str, int]]:
    """tritonclient's channel defaults, plus a subchannel of its own that reconnects at most 250 ms apart.

    gRPC shares subchannels process-wide by default, reconnect backoff included (1 s growing 1.6x per
    failure): a client rebuilt after Triton went away inherited that backoff and answered 503 for up
    to 10 s after Triton was back. A private subchannel starts connecting at once.
    """
    import tritonclient.grpc as client_module

    keepalive = client_module.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", client_module.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", client_module.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 250),
    ]


class TritonConnection:
    """The tritonclient client of the Triton at ``url`` (``host:port``): made on first use, rebuilt after a
    lost link; :meth:`_call` maps every failure to a :class:`ServingError`."""

    def __init__(self, url: str, protocol: str, *, retry_after_s: float, probe_timeout_s: float) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if "://" in url:
            raise ValueError(f"Triton url is host:port without a scheme, got {url!r}")
        self.url, self.protocol = url, protocol
        self.retry_after_s, self.probe_timeout_s = retry_after_s, probe_timeout_s
        self._client: Any = None

    def _module(self) -> Any:
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as module
        else:
            import tritonclient.http.aio as module
        return module

    def _connection(self) -> Any:
        """The current client, created on first use and after every connection failure."""
        if self._client is None:
            extra = {"channel_args": grpc_channel_args()} if self.protocol == "grpc" else {}
            self._client = self._module().InferenceServerClient(self.url, **extra)
        return self._client

    async def _drop_connection(self, failed: Any = None) -> None:
        """Close the current client (only if it is ``failed``, when given: a call that failed on a client
        another call already replaced leaves the new one alone)."""
        if failed is not None and failed is not self._client:
            return
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception as error:  # noqa: BLE001 (closing a broken client must not mask the cause)
                log.debug("closing the Triton client failed: %s", error)
        if failed is not None:
            self._on_link_lost()

    def _on_link_lost(self) -> None:
        """Called once a call dropped the client because the link to Triton was lost: what answers
        next may be another Triton (restarted, with other models). The backend refetches its view."""

    def _unavailable(self, error: object) -> Unavailable:
        return Unavailable(f"Triton at {self.url} is unavailable: {error}", retry_after=self.retry_after_s)

    async def _unless_draining(self, error: ModelNotFound) -> ServingError:
        """Triton's NOT_FOUND for a model it served: a Triton told to stop (SIGTERM) unloads its models
        and answers so while it drains, which is a 503 (:meth:`_draining`); from a ready Triton, the
        model was unloaded and the 404 stands."""
        try:
            ready = bool(await self._call("is_server_ready"))
        except ServingError:
            ready = False
        return error if ready else self._draining(error)

    def _draining(self, error: ModelNotFound) -> Unavailable:
        """A 503 with Retry-After: Triton is going away, not the model (a 404 told clients and load
        balancers that the model does not exist, and the scheduler's calls were a 500)."""
        return self._unavailable(f"it is not ready ({error.message})")

    async def _call(self, method: str, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> Any:
        """Call a client method with a deadline; map failures to ServingError, reconnect on lost links."""
        timeout = self.probe_timeout_s if timeout_s is None else timeout_s
        client = self._connection()
        try:
            return await asyncio.wait_for(getattr(client, method)(*args, **kwargs), timeout)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # this call was cancelled (its request's client left, the gateway stops)
            # grpc.aio cancels the calls in flight on a channel that closes: a concurrent call (the
            # start-up watcher, a probe) found Triton gone and dropped the client under this one
            raise self._unavailable("the connection closed during the call") from None
        except TimeoutError:
            late = f"Triton did not answer {method} within {seconds_text(timeout)}s"
            raise DeadlineExceeded(late) from None
        except InferenceServerException as error:
            raise await self._mapped(error, client) from None
        except (OSError, ConnectionError) as error:
            await self._drop_connection(client)
            raise self._unavailable(error) from None
        except Exception as error:
            if type(error).__module__.startswith(("aiohttp", "grpc")):  # connection errors of the clients
                await self._drop_connection(client)
                raise self._unavailable(error) from None
            raise

    async def _mapped(self, error: InferenceServerException, client: Any = None) -> ServingError:
        """The gateway error for a tritonclient error (dropping the connection when Triton is gone)."""
        mapped = self._error_for(error)
        if isinstance(mapped, Unavailable) and self._link_lost(client):
            await self._drop_connection(client)
        return mapped

    def _error_for(self, error: InferenceServerException) -> ServingError:
        """The gateway error for a tritonclient error, by its status (``STATUS_TO_ERROR``); the blocking
        runners' calls (``TritonBackend.runner``) raise it as it is."""
        cls = STATUS_TO_ERROR.get(str(error.status()), ServingError)
        message = error.message() or str(error)
        if cls is Unavailable:
            return self._unavailable(message)
        if cls is Overloaded:
            return Overloaded(f"Triton: {message}", retry_after=self.retry_after_s)
        return cls(f"Triton: {message}")

    def _link_lost(self, client: Any) -> bool:
        """Whether an UNAVAILABLE status means the link to Triton is gone, rather than Triton's own
        answer (a full queue, a model not ready): closing the shared client then would cancel every
        other request in flight on it. An HTTP status is always Triton's answer (a lost link raises
        an aiohttp or OS error); a gRPC channel that is still READY carried Triton's answer."""
        if self.protocol == "http":
            return False
        channel = getattr(client, "_channel", None)
        if channel is None:
            return True
        import grpc

        return channel.get_state(try_to_connect=False) != grpc.ChannelConnectivity.READY


def ready_now(client: Any, probe: dict[str, Any]) -> bool:
    """Whether Triton answers ready to a blocking client (False when it does not answer)."""
    try:
        return bool(client.is_server_ready(**probe))
    except (InferenceServerException, OSError):
        return False
