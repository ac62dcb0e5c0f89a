"""``create_app(settings)``: the FastAPI gateway, its routes, error handlers and server; its parts
(backend, gRPC server) open in ``lifespan`` (:mod:`serving.lifespan`)."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from serving.errors import BadRequest, ServingError
from serving.execution.base import Backend, LoadingStopped
from serving.execution.cpus import usable_cpus
from serving.execution.model_versions import parse_version
from serving.handoff import balancer_for
from serving.lifespan import LifespanFailed, Parts, start_parts
from serving.metrics import CLIENT_LEFT, GatewayMetrics
from serving.protocol import generate, health, lean, metrics, translate, v1, v2
from serving.protocol.image_decodes import DecodeSlots
from serving.protocol.json_offload import JsonOffload
from serving.protocol.limits import BodyBudget, BodyLimitMiddleware
from serving.protocol.responses import drop_framework_422, error_response
from serving.settings import Settings
from serving.threads import start_loop_threads

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, backend: Backend | None = None) -> FastAPI:
    """Build the gateway app; ``backend`` overrides the one ``settings.backend`` would create (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        parts = Parts()
        try:
            await start_parts(app, settings, backend, parts)
        except BaseException:
            await parts.stop()
            raise
        try:
            yield
        finally:
            failed = await parts.stop()
            if failed:
                raise LifespanFailed(f"gateway shutdown: stopping {'; '.join(failed)}")

    # No trailing-slash redirects: Starlette's 307 for "/v2/models/m/infer/" wrote the client's Host
    # header into its Location (http://<any Host>/..., http behind a TLS ingress too); Triton answers
    # such a path 404, as the gateway now does (JSON, as every other unknown path)
    app = GatewayApp(title="Kiln gateway", version="0.1.0", lifespan=lifespan, redirect_slashes=False)
    app.state.settings = settings
    # a worker of several reads the tree of its parent, which holds them all; a single gateway its own
    tree_root = os.getppid() if settings.worker_board is not None else os.getpid()
    app.state.metrics = GatewayMetrics(worker=settings.worker_index, tree_root=tree_root)
    # with several workers: the board of their connections, each new one handed to the least loaded
    handed = app.state.metrics.connections_handed
    app.state.balancer = balancer_for(settings, lambda protocol: handed.labels(protocol).inc())
    # the request bodies this process holds, over HTTP (both paths) and gRPC (serving/protocol/limits.py)
    app.state.body_budget = budget = BodyBudget(settings.max_inflight_body_bytes, settings.retry_after_s)
    app.state.json_offload = JsonOffload(settings.json_offload_bytes)  # large v2 JSON bodies, off the loop
    # friendly classify's image decodes, at most this many at once, requests taking turns; a request
    # finding --max-queue-size requests waiting to decode is a 429 before it decodes anything
    app.state.image_decodes = DecodeSlots(
        settings.image_decodes or usable_cpus(), settings.max_queue_size, settings.retry_after_s
    )
    # Translate first: routes are tried in order, and one request per sentence makes it the busiest
    # route (measured: 26 us less event-loop time per request than matching it after the others).
    for router in (translate.router, health.router, v2.router, generate.router, v1.router, metrics.router):
        app.include_router(router)
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, budget=budget, on_refused=count_body_refusal
    )
    _install_error_handlers(app)
    _document_this_gateway(app, settings)
    return app


# The hot routes, answered ahead of the middleware stack (serving.protocol.lean); still declared on
# their routers, which document them and answer their other methods.
LEAN_ROUTES = (
    lean.LeanRoute("/v1/models/", "/translate", translate.translate),
    lean.LeanRoute("/v2/models/", "/infer", v2.lean_infer, versioned=True),
)


# Every inference route, lean or not: a refusal answered on one is counted for the model it names
# (the paths are what count here; generate's were missing, so its 400s and 413s went uncounted).
INFERENCE_ROUTES = (
    *LEAN_ROUTES,
    lean.LeanRoute("/v1/models/", "/classify", v1.classify),
    lean.LeanRoute("/v2/models/", "/generate", generate.generate_endpoint, versioned=True),
    lean.LeanRoute("/v2/models/", "/generate_stream", generate.generate_stream_endpoint, versioned=True),
)


def count_refusal(request: Request, exc: BaseException, status: int) -> None:
    """A refused inference request (its body, tensors or options; counted once, whoever answers it)
    in the failure series of the model it names, where that model is in the repository."""
    state = request.app.state
    if request.method != "POST" or getattr(state, "repository", None) is None:
        return
    for route in INFERENCE_ROUTES:
        params = route.match(request.scope["path"])  # url.path drops a CR, LF or tab the client sent
        if params is not None:
            if params["name"] in state.repository.names():
                version = asked_version(params.get("version", ""))
                state.metrics.refused(params["name"], exc, status, version)
            return


def asked_version(segment: str) -> str:
    """The version a refused request's path names, read as its route reads it (``01`` is version 1):
    counted as the raw segment, a body refused for ``/versions/01/`` went to the latest version's
    failures, while the same request's other failures counted under version 1. A segment the route
    refuses stays as sent: counted as the latest's (GatewayMetrics.versioned)."""
    try:
        return parse_version(segment)
    except BadRequest:
        return segment


def count_body_refusal(scope: dict[str, Any], exc: BaseException, status: int) -> None:
    """A body the limit layer refused before the request reached a route (413 for its size, 503 for
    the body budget): counted as :func:`count_refusal` counts a refusal, for the model it names."""
    if "app" in scope:
        count_refusal(Request(scope), exc, status)


class GatewayApp(FastAPI):
    """FastAPI with :data:`LEAN_ROUTES` answered ahead of the middleware stack, unless FastAPI's own
    OpenTelemetry instrumentation is on when the stack is built (at the first request): its spans get
    their ``http.route`` from the router, so then every route goes through the stack."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            send = _one_line_failures(send)
        elif scope["type"] == "http" and scope["method"] == "HEAD":
            # RFC 9110 9.1, 9.3.2: HEAD wherever GET is served (FastAPI's GET routes answered it 405):
            # the app answers a GET, and the server, whose scope still says HEAD, sends no body
            scope = {**scope, "method": "GET"}
        await super().__call__(scope, receive, send)

    def build_middleware_stack(self) -> Any:
        stack = super().build_middleware_stack()
        telemetry = getattr(self, "_native_telemetry", None)
        if telemetry is not None and telemetry.enabled():
            log.info("FastAPI telemetry is on: the hot routes go through the middleware stack")
            return stack
        max_bytes, budget = self.state.settings.max_body_bytes, self.state.body_budget
        return lean.LeanRoutes(self, stack, max_bytes, LEAN_ROUTES, budget, count_body_refusal)


def _one_line_failures(send: Any) -> Any:
    """The lifespan's ``send``, with a :class:`LifespanFailed`'s message in place of the traceback
    Starlette sends in ``lifespan.*.failed`` (the server logs that message: now one line). A start-up
    a stop signal cut short (SIGTERM or Ctrl-C while the models loaded) is said in one info line:
    it was two errors, "gateway start-up failed: ..." and uvicorn's "Application startup failed.
    Exiting.", for a stop the operator asked for and that exits as a stop does."""

    async def one_line(message: dict[str, Any]) -> None:
        failure = sys.exc_info()[1]  # Starlette sends the failure while it handles the exception
        if message["type"].endswith(".failed") and isinstance(failure, LifespanFailed):
            if isinstance(failure.__cause__, LoadingStopped):
                log.info("gateway start-up stopped: %s", failure.__cause__)
                logging.getLogger("uvicorn.error").addFilter(_StoppedStartup())
                message = {key: value for key, value in message.items() if key != "message"}
            else:
                message = {**message, "message": str(failure)}
        await send(message)

    return one_line


class _StoppedStartup(logging.Filter):
    """Drops uvicorn's "Application startup failed. Exiting." once, after a start-up a stop signal cut
    short (:func:`_one_line_failures` has said so), then removes itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != "Application startup failed. Exiting.":
            return True
        logging.getLogger("uvicorn.error").removeFilter(self)
        return False


def _document_this_gateway(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI document with only the statuses handlers produce and this gateway's limits."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()  # cached by FastAPI in app.openapi_schema
            drop_framework_422(schema)
            v1.document_limits(schema, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    _schema_built_off_the_loop(app)


def _schema_built_off_the_loop(app: FastAPI) -> None:
    """``/openapi.json`` (what ``/docs`` loads) builds the schema on a thread the first time: FastAPI's
    route builds it inline, 50-380 ms of event loop here, every other request waiting for it. One build,
    which every request that comes meanwhile waits for: FastAPI caches the schema before this gateway's
    edits to it (:func:`_document_this_gateway`), and a second request served from that cache got the
    schema without its limits, or read it while the thread changed it."""
    route = next(r for r in app.router.routes if getattr(r, "path", None) == app.openapi_url)
    serve = route.app
    build: asyncio.Future | None = None

    async def schema_built_first(scope: Any, receive: Any, send: Any) -> None:
        nonlocal build
        if build is None:
            build = asyncio.ensure_future(asyncio.to_thread(app.openapi))  # cached: the route answers from it
        if not build.done():
            await asyncio.shield(build)  # (a request cut short leaves the build to the others)
        await serve(scope, receive, send)

    route.app = schema_built_first


def end_by_sigterm(_signum: int = signal.SIGTERM, _frame: FrameType | None = None) -> None:
    """End this process by SIGTERM, as a stop by SIGTERM ends (README, "Serving"), once the interpreter's
    exit handlers (``atexit``) have run; also SIGTERM's handler while the gateway runs, the one uvicorn
    hands back and calls again after its drain. By the signal's default action they never ran: each
    gateway process that had started its JSON helper left multiprocessing's temporary directory
    (``pymp-*``, the forkserver's socket) in TMPDIR at every stop, one per worker of ``--workers``.

    The signal's default action comes back first: a SIGTERM while they run ends the process at once.
    Handled here again, it ran every handler a second time from the start, and one that blocked (a
    flush to a collector that never answers) blocked again: no SIGTERM ended the gateway any more."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    atexit._run_exitfuncs()
    signal.raise_signal(signal.SIGTERM)


# How long after the SIGTERM a worker's parent sends it for a terminal's Ctrl-C that Ctrl-C's own SIGINT
# may come (both are sent as the key is pressed; measured apart by milliseconds)
ONE_CTRL_C_S = 2.0


class GatewayServer(uvicorn.Server):
    """uvicorn's server, whose drain stops the gRPC server taking calls at the same moment (GOAWAY, its
    listener closed): it went on accepting them until the HTTP drain was over, up to the grace, and
    only then drained for a grace of its own. The lifespan's stop waits on that same drain. Once it
    has started, ``kiln_open_connections`` reads the HTTP connections it holds. A worker of several
    counts them on the workers' board and hands each new one to the worker holding fewest
    (:mod:`serving.handoff`), and takes those handed to it once it serves.

    A stop that cuts work in flight (the grace ran out, or a second Ctrl-C) says how much in one line
    and sets :attr:`exit_status` to 1, as tritonserver exits 1 when its ``--exit-timeout-secs`` runs
    out with requests in flight: a supervisor can tell it from a clean drain."""

    cut_requests = 0  # HTTP requests the grace cut
    exit_status = 0  # 1 once the stop has cut work in flight
    _loop: asyncio.AbstractEventLoop | None = None
    _quit = False  # a second Ctrl-C has cut the work in flight
    _ctrl_c_with_sigterm = False  # a worker's Ctrl-C, come after the SIGTERM its parent sent for it
    _sigterm_at: float | None = None  # when the first SIGTERM came (time.monotonic)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await start_loop_threads()  # before the models' threads (serving.threads)
        state = getattr(self.config.app, "state", None)
        balancer = getattr(state, "balancer", None)
        serve = self.config.http_protocol_class
        if balancer is not None:
            self.server_state.connections = balancer.counted("http")

            def arriving(config: Any, server_state: Any, app_state: Any, _loop: Any = None) -> Any:
                protocol = partial(
                    serve, config=config, server_state=server_state, app_state=app_state, _loop=_loop
                )
                return balancer.arrival("http", protocol)

            self.config.http_protocol_class = arriving
        await super().startup(sockets)
        if balancer is not None and self.started:
            protocol = partial(
                serve, config=self.config, server_state=self.server_state, app_state=self.lifespan.state
            )
            balancer.adopt("http", protocol)
        metrics = getattr(state, "metrics", None)
        if metrics is not None:  # uvicorn keeps the HTTP connections it serves in its server state
            metrics.watch_connections("http", self.server_state.connections.__len__)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """uvicorn's signal handler; while the models load, it also tells the backend to stop loading
        them (without, a SIGTERM waited for every model to load, then for the ports to open). Once
        serving, a second Ctrl-C cuts the work in flight at once (:meth:`_quit_at_once`), at whatever
        step of the stop it comes; a third ends the process where the stop still waits (on a batch
        running its model, say)."""
        if self._quit and sig == signal.SIGINT:  # the stop still waits on something: end it now
            log.warning("third Ctrl-C: exiting now, the rest of the stop undone (exit status 1)")
            os._exit(1)
        if sig == signal.SIGTERM and self._sigterm_at is None:
            self._sigterm_at = time.monotonic()
        if sig == signal.SIGINT and self._after_parent_s_sigterm():
            # a terminal's Ctrl-C reaches a worker of --workers twice, itself and as the SIGTERM its
            # parent sends each worker for it (serving.workers), in either order: taken after that
            # SIGTERM it was uvicorn's second Ctrl-C, and one Ctrl-C cut the requests in flight (exit 1)
            self._ctrl_c_with_sigterm = True
            return
        super().handle_exit(sig, frame)
        if self.force_exit and self.started and self._loop is not None:
            self._loop.call_soon_threadsafe(self._quit_at_once)  # a signal handler may not touch the loop
        if not self.started:
            self._stop_loading(sig)

    def _after_parent_s_sigterm(self) -> bool:
        """Whether this process is a worker of ``--workers`` (whose parent sends it SIGTERM to stop it)
        and the one signal it has had is a SIGTERM, come with this SIGINT (within ``ONE_CTRL_C_S``): a
        Ctrl-C pressed later, after a SIGTERM of its own (``docker stop``, ``kill``), is the one that
        quits at once, as it is for a lone gateway, not a Ctrl-C taken in silence."""
        settings = getattr(getattr(self.config.app, "state", None), "settings", None)
        captured = getattr(self, "_captured_signals", [])  # uvicorn's, in order
        first = signal.SIGTERM in captured and signal.SIGINT not in captured and not self._ctrl_c_with_sigterm
        recent = self._sigterm_at is not None and time.monotonic() - self._sigterm_at < ONE_CTRL_C_S
        return first and recent and bool(getattr(settings, "reuse_port", False))

    def _stop_loading(self, sig: int) -> None:
        """A stop signal before the server serves: the backend stops loading models, and one not made
        yet (the repository still being read, the backend's modules imported) stops before its first
        (``stop_asked``, read by :func:`serving.lifespan.start_parts`): it loaded every model first."""
        state = getattr(self.config.app, "state", None)
        if state is None:
            return
        state.stop_asked = True
        self.stopped_loading_by = self.stopped_loading_by or sig
        stop_loading = getattr(getattr(state, "backend", None), "stop_loading", None)
        if stop_loading is not None:
            stop_loading()

    stopped_loading_by: int | None = None  # the signal that stopped the models' loading

    def exit_as_signalled(self) -> None:
        """After a start-up a signal stopped (uvicorn exits 3, a failed start-up): end as a stop ends,
        by SIGTERM, or with 0 after Ctrl-C (README, "Serving")."""
        if self.stopped_loading_by == signal.SIGTERM:
            end_by_sigterm()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.app
        balancer = getattr(getattr(app, "state", None), "balancer", None)
        if balancer is not None:  # draining: nothing more from the other workers
            balancer.stop_adopting()
        grpc_handle = self._grpc()
        if grpc_handle is not None:
            grpc_handle.begin_stop(app.state.settings.shutdown_grace_s)
        logging.getLogger("uvicorn.error").addFilter(QUIET_CUTS)
        await super().shutdown(sockets)
        if self.force_exit:
            self._quit_at_once()  # where the signal's callback has not run yet
            if _lifespan_skipped(self.lifespan):  # uvicorn's forced quit skips it: the parts still stop,
                await self.lifespan.shutdown()  # at once now that nothing is in flight
        if balancer is not None:
            balancer.close()
        self._tell_cut_work(grpc_handle)

    async def _wait_tasks_to_complete(self) -> None:
        """uvicorn's HTTP drain, bounded by the grace; the requests it cancels once the grace runs out
        are counted for :meth:`_tell_cut_work`."""
        try:
            await super()._wait_tasks_to_complete()
        except asyncio.CancelledError:  # the grace ran out: uvicorn cancels these next
            self.cut_requests = len(self.server_state.tasks)
            grace = self.config.timeout_graceful_shutdown or 0
            why = f"its shutdown grace ({grace:g} s) ran out before this request was answered"
            self._answer_cuts_503(why)
            raise

    def _answer_cuts_503(self, why: str) -> None:
        """The requests about to be cut whose answer has not begun are answered 503 JSON with
        ``Retry-After`` and ``connection: close`` (README, "Errors": a stopping gateway's answer), not
        uvicorn's plain-text 500 (its cycles) nor a connection closed without an answer (the lean
        routes': :meth:`~serving.protocol.http1_httptools.CoalescingHttpToolsProtocol._answer`). A client
        or load balancer retries a 503 elsewhere; a 500 says the request itself failed. Each cut task
        writes it as its cancellation reaches it."""
        settings = getattr(getattr(self.config.app, "state", None), "settings", None)
        retry_after = max(1, round(getattr(settings, "retry_after_s", 1.0)))
        refusal = error_response(f"the gateway is shutting down: {why}; retry it", 503)
        answer = (503, [*refusal.raw_headers, (b"retry-after", b"%d" % retry_after)], refusal.body)
        metrics = getattr(getattr(self.config.app, "state", None), "metrics", None)
        if metrics is not None:  # the requests cut from now on are counted as they are answered
            metrics.stop_cuts()
        for connection in list(self.server_state.connections):
            # the request being answered, which is not the connection's ``cycle`` (the last parsed)
            # where requests are pipelined behind it (serving.protocol.http1_httptools); h11 parses
            # none past the one it answers
            answering = getattr(connection, "answering", None)
            cycles = {id(c): c for c in (answering, getattr(connection, "cycle", None)) if c is not None}
            for cycle in cycles.values():
                _set_cut_answer(cycle, answer)

    def _grpc(self) -> Any:
        return getattr(getattr(self.config.app, "state", None), "grpc", None)

    def _quit_at_once(self) -> None:
        """A second Ctrl-C: the HTTP requests and gRPC calls in flight are cut now, in one warning line
        (uvicorn alone stopped waiting for them and left the loop's end to cancel them and the app's
        lifespan, a traceback each); the stop then goes on, with nothing left to wait for. It sets
        exit status 1 only where it cut something it could count (grpc.aio does not count its calls),
        and never lowers a status a grace that ran out before it set."""
        if self._quit:
            return
        self._quit = True
        tasks = list(self.server_state.tasks)
        grpc_handle = self._grpc()
        calls = grpc_handle.in_flight() if grpc_handle is not None else 0
        if tasks or calls:
            self.exit_status = 1
        cut = _work(len(tasks), calls)
        log.warning(
            "second Ctrl-C: quitting at once%s%s",
            f", cutting {cut} in flight" if cut else " (nothing in flight)",
            " (exit status 1)" if self.exit_status else "",
        )
        self._answer_cuts_503("a second Ctrl-C cut this request before it was answered")
        for task in tasks:
            task.cancel(msg="cut by a second Ctrl-C")
        if grpc_handle is not None:
            self._grpc_stop = asyncio.ensure_future(grpc_handle.server.stop(0))  # its drain ends with it

    _grpc_stop: asyncio.Future | None = None

    def _tell_cut_work(self, grpc_handle: Any) -> None:
        """After a grace that ran out: one line saying what it cut, and exit status 1 (not the signal
        uvicorn would raise again, which ends a clean stop)."""
        cut = _work(self.cut_requests, getattr(grpc_handle, "cut", 0))
        if cut:
            self.exit_status = 1
            log.warning(
                "gateway stopped with work cut: the shutdown grace (%g s) ran out with %s in flight; "
                "exit status 1",
                self.config.timeout_graceful_shutdown,
                cut,
            )
        if self.exit_status:
            self._captured_signals.clear()  # python -m serving exits with exit_status instead


def _set_cut_answer(cycle: Any, answer: tuple[int, list, bytes]) -> None:
    """``answer`` made the answer of ``cycle`` when the stop cuts it, unless its answer has begun."""
    if getattr(cycle, "response_complete", True) or getattr(cycle, "response_started", False):
        return  # answered, its answer begun, or no cycle the gateway knows
    if hasattr(cycle, "send_500_response"):  # uvicorn's cycle, which answers a cut request 500
        cycle.send_500_response = partial(_send_cut_answer, cycle, answer)
    elif hasattr(cycle, "cut_answer"):  # a lean route's (serving.protocol.http1_httptools)
        cycle.cut_answer = answer


async def _send_cut_answer(cycle: Any, answer: tuple[int, list, bytes]) -> None:
    """The ``send_500_response`` of a uvicorn cycle the stop cut (:meth:`GatewayServer._answer_cuts_503`)."""
    status, headers, body = answer
    closing = [*headers, (b"connection", b"close")]  # the connection's last answer
    await cycle.send({"type": "http.response.start", "status": status, "headers": closing})
    await cycle.send({"type": "http.response.body", "body": body, "more_body": False})


def _work(requests: int, calls: int | None) -> str:
    """``"1 HTTP request and 2 gRPC calls"``: the work a stop cut, empty when none."""
    parts = [f"{requests} HTTP request{'s' if requests != 1 else ''}"] if requests else []
    if calls is None:
        parts.append("any gRPC calls (grpc.aio does not count them)")
    elif calls:
        parts.append(f"{calls} gRPC call{'s' if calls != 1 else ''}")
    return " and ".join(parts)


def _lifespan_skipped(lifespan: Any) -> bool:
    """Whether the app's lifespan still waits for its shutdown (uvicorn's forced quit skips it)."""
    done = getattr(lifespan, "shutdown_event", None)
    return done is not None and not done.is_set()


class _QuietCuts(logging.Filter):
    """Drops uvicorn's traceback of a request the stop cut (its CancelledError): one per request,
    where the gateway says in one line how many it cut."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


QUIET_CUTS = _QuietCuts()  # one instance: adding it again is a no-op


def _install_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"error": ...}``; client mistakes keep their 4xx status."""

    async def serving_error(request: Request, exc: ServingError) -> JSONResponse:
        count_refusal(request, exc, exc.status)
        headers = dict(exc.headers or {})
        if exc.retry_after is not None:
            headers["Retry-After"] = f"{max(1, round(exc.retry_after))}"
        if exc.status == 501:  # a route the client chose that the gateway does not serve: its mistake
            log.info("request refused: %s", exc.message)
        elif exc.status >= 500 and exc.status not in (503, 504):
            log.error("request failed: %s", exc.message)
        return error_response(exc.message, exc.status, headers or None)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        count_refusal(request, exc, 422)
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error_response(f"invalid request: {problems}", 422)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        count_refusal(request, exc, exc.status_code)
        headers = exc.headers
        allow = (headers or {}).get("Allow", "").split(", ")
        if "GET" in allow and "HEAD" not in allow:  # a 405's methods: HEAD too wherever GET is
            headers = {**headers, "Allow": ", ".join((*allow, "HEAD"))}  # (GatewayApp.__call__)
        return error_response(str(exc.detail), exc.status_code, headers)

    async def client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        count_refusal(request, exc, request.scope.get(lean.ANSWERED_BY_PROTOCOL, CLIENT_LEFT))
        # the client closed the connection before its body ended: its mistake, and nobody to answer
        log.debug("a client disconnected before its request body ended")
        return error_response("the client disconnected before its request body ended", 400)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, RecursionError):  # only a client's deeply nested input recurses this far
            count_refusal(request, exc, 400)
            return error_response("request is nested too deeply", 400)
        count_refusal(request, exc, 500)
        log.exception("unexpected error while serving a request")
        return error_response(f"internal error: {type(exc).__name__}", 500)

    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, unexpected)
