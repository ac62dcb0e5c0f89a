"""The gateway's hot routes answered ahead of Starlette's middleware stack and router.

One request per sentence is how translation clients call, and one image per request how most
inference clients do, so the event loop's time per request is a share of the gateway's CPU.
:class:`LeanRoutes`, the app's outermost ASGI layer, sends ``POST`` requests whose path is one of its
routes (``serving.app.LEAN_ROUTES``) straight to the route's endpoint, through the same :class:`BodyLimitMiddleware`, and
answers their errors with the app's own exception handlers (looked up by the exception's classes, as
Starlette does), so they are answered exactly as through the stack, without its three middleware
layers, the router's matching of every route and FastAPI's dependency solving. Everything else goes
through the stack. The routes stay declared on their routers, so the OpenAPI document is unchanged.
Where FastAPI's own OpenTelemetry instrumentation is on, the app does not install this layer
(:class:`serving.app.GatewayApp`): its spans take their ``http.route`` from the router.

Measured (interleaved): translate, one process at c=32, event-loop CPU 0.37 -> 0.29 ms a request
(749 -> 818 sentences/s; two workers 1 023 -> 1 082); see the README for KServe v2 infer.

Under the gateway's HTTP protocol (:mod:`serving.protocol.http1`) a lean request it can take whole
does not even reach this layer as ASGI: the protocol gathers its body and calls :meth:`LeanRoutes.respond`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response

from serving.protocol.limits import BodyBudget, BodyLimitMiddleware

WATCHED_BY_PROTOCOL = "kiln.watched"  # scope key: the server cancels the request when its client leaves
# scope key: the status the HTTP protocol answered a request with while its body was still arriving
# (408: the body paused past the read timeout; 400: a chunked body its parser refused); the app then
# sees only its client gone, and counts it by this status, not as 499 (serving.app.count_refusal)
ANSWERED_BY_PROTOCOL = "kiln.answered_status"


@dataclass(frozen=True)
class LeanRoute:
    """``POST prefix{name}suffix`` (and with ``versioned`` ``prefix{name}/versions/{version}suffix``),
    answered by ``endpoint(request, name=..., [version=...])``; a path parameter matches what the
    router's would (one non-empty segment)."""

    prefix: str
    suffix: str
    endpoint: Callable[..., Awaitable[Response]]
    versioned: bool = False

    def match(self, path: str) -> dict[str, str] | None:
        if not (path.startswith(self.prefix) and path.endswith(self.suffix)):
            return None
        middle = path[len(self.prefix) : len(path) - len(self.suffix)]
        if middle and "/" not in middle:
            return {"name": middle}
        name, found, version = middle.partition("/versions/")
        if self.versioned and found and name and version and "/" not in name and "/" not in version:
            return {"name": name, "version": version}
        return None


class LeanRoutes:
    """The app's outermost ASGI layer (see the module docstring); ``stack`` is the app's middleware stack."""

    def __init__(
        self,
        app: FastAPI,
        stack: Callable[..., Any],
        max_bytes: int,
        routes: Sequence[LeanRoute],
        budget: BodyBudget | None = None,
        on_refused: Callable[[dict, BaseException, int], None] | None = None,
    ) -> None:
        self.app, self.stack, self.routes = app, stack, tuple(routes)
        self.limited = BodyLimitMiddleware(self._endpoint, max_bytes, budget, on_refused)

    def target(self, scope: dict[str, Any]) -> tuple[LeanRoute, dict[str, str]] | None:
        """The lean route ``scope`` is for, with its path parameters; None for everything else."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        for route in self.routes:
            params = route.match(scope["path"])
            if params is not None:
                return route, params
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        target = self.target(scope)
        if target is None:
            await self.stack(scope, receive, send)
            return
        scope["kiln.lean_route"], scope["path_params"] = target
        try:
            await self.limited(scope, receive, send)
        except Exception as exc:  # noqa: BLE001 - answered by the app's handler for it, as the stack would
            if scope.get("kiln.lean_sending"):
                raise  # the answer had begun: nothing else can be sent (Starlette re-raises too)
            request = Request(scope)
            response = await self.handled(request, exc)
            await response(scope, receive, send)

    async def handled(self, request: Request, exc: Exception) -> Response:
        """The app's answer to ``exc`` (its handler for the nearest of the exception's classes, as
        Starlette looks it up); ``exc`` re-raised where the app has none."""
        for cls in type(exc).__mro__:
            if cls in self.app.exception_handlers:
                return await self.app.exception_handlers[cls](request, exc)
        raise exc

    async def respond(self, scope: dict[str, Any], body: bytes) -> Response:
        """The answer to a whole request of a lean route (``scope`` with ``kiln.lean_route`` and
        ``path_params`` from :meth:`target`, and ``app``; ``body`` read whole, within the body limit):
        the endpoint's response, or the app's handler's for its error. What
        :mod:`serving.protocol.http1` answers without the ASGI cycle."""

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        scope[WATCHED_BY_PROTOCOL] = True  # http1 cancels the answer on connection_lost
        request = Request(scope, receive)
        try:
            return await scope["kiln.lean_route"].endpoint(request, **scope["path_params"])
        except Exception as exc:  # noqa: BLE001 - answered by the app's handler, else re-raised
            return await self.handled(request, exc)

    async def _endpoint(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        route: LeanRoute = scope["kiln.lean_route"]
        response = await route.endpoint(Request(scope, receive), **scope["path_params"])
        scope["kiln.lean_sending"] = True
        await response(scope, receive, send)
