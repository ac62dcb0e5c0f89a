"""The embedded backend: ONNX Runtime sessions behind one dynamic batcher per model version.

Instance count and device come from the config's ``instance_group``; batching from its
``dynamic_batching`` block. Requests are validated against the config (names, datatypes, shapes,
batch size) before they are queued, so a client's mistake is a 400 naming the input, never a 500.
Classification (Triton's extension) is requested with ``InferRequest.classification =
{output_name: count}`` and answered here with BYTES ``"score:index:label"`` strings.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from serving.errors import BadRequest, ModelNotFound, Unavailable
from serving.execution import placement
from serving.execution.base import GraphChoice, InferRequest, InferResponse, ModelMetadata, Runner
from serving.execution.batch_policy import BatchPolicy
from serving.execution.batcher import DynamicBatcher
from serving.execution.bound_session import BoundSession
from serving.execution.cpus import usable_cpus
from serving.execution.datatypes import classification
from serving.execution.loaded_model import LoadedModel, Sessions
from serving.execution.occupancy import Occupancy
from serving.execution.ort_options import OrtOptions, resident_request, spin_entries
from serving.execution.repository import ONNX_PLATFORMS, Repository, RepositoryEntry
from serving.execution.runner import session_runner
from serving.execution.shared_weights import WeightStore, shared_options
from serving.execution.validation import classification_counts, reshaped, validate_inputs
from serving.threads import name_os_thread

log = logging.getLogger(__name__)


class OnnxRuntimeBackend:
    """Serve every ONNX entry of a model repository in-process."""

    # Translate entries are decoded by the gateway's scheduler over this backend's runners.
    runs_translators_in_gateway = True

    def __init__(
        self,
        repository: Repository,
        options: OrtOptions | None = None,
        *,
        metrics: Any = None,
        session_factory: Any = None,
        occupancy: Occupancy | None = None,
        graphs: Mapping[str, GraphChoice] | None = None,
    ) -> None:
        """``session_factory(path, sess_options=, providers=)`` replaces ``ort.InferenceSession`` (tests, bench);
        ``occupancy`` counts this backend's runs, shared with the other workers where it has a board.
        ``graphs``: per kiln.json task, the file a CPU session of such an entry opens instead of its
        model file, batch sessions and runners alike. The app passes the decoding layer's fused-
        attention graphs for a translator's encoder and decoder, so an entry's KServe batch session
        maps the one copy of the weights its decode workers map, not a second graph's."""
        self.repository = repository
        self.graphs = dict(graphs or {})
        self.occupancy = occupancy or Occupancy()
        self.session_factory = session_factory
        self.options = options or OrtOptions()
        self.metrics = metrics
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._failed: dict[str, str] = dict(repository.errors)
        self._metadata: dict[tuple[str, str], ModelMetadata] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._weights: WeightStore | None = None
        self._shared: set[Path] = set()  # model files whose sessions map one copy of the weights
        self._started = False
        self._stopping = False

    async def start(self) -> None:
        """Create the sessions (in a thread, they can take a while) and start one batcher per version."""
        plans = [(e, v) for e in self.repository.entries.values() if self._servable(e) for v in e.versions]
        # Only for loading: each batcher runs its batches on execution threads of its own.
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="kiln-ort-load", initializer=name_os_thread
        )
        loop = asyncio.get_running_loop()
        # a session factory (tests' fakes) is handed the entry's own file
        if self.options.share_weights and self.session_factory is None and plans:
            self._weights = WeightStore(self.options.weights_dir)
        for entry, version in plans:
            try:
                sessions = await loop.run_in_executor(self._executor, self._open_sessions, entry, version)
            except Exception as exc:  # noqa: BLE001 - one broken model must not stop the others
                log.error("model %s version %s failed to load: %s", entry.name, version, exc)
                self._failed[entry.name] = str(exc)
                continue
            self._models[(entry.name, version)] = self._make_model(entry, version, sessions)
        self._started = True
        log.info("onnxruntime backend serving %s", sorted({name for name, _ in self._models}))

    async def stop(self) -> None:
        """Finish queued and running requests, then release the sessions."""
        self._stopping = True
        await asyncio.gather(*(m.batcher.stop(self.options.shutdown_grace_s) for m in self._models.values()))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._models.clear()
        self.occupancy.close()
        if self._weights is not None:
            self._weights.close()

    def list_models(self) -> list[str]:
        return self.repository.names()

    def is_live(self) -> bool:
        return not self._stopping

    async def is_ready(self) -> bool:
        return self._started and not self._stopping and not self._failed

    async def model_ready(self, name: str, version: str = "") -> bool:
        entry = self.repository.get(name)
        try:
            version = entry.resolve_version(version)
        except ModelNotFound:
            return False
        return self._started and not self._stopping and (name, version) in self._models

    def metadata(self, name: str, version: str = "") -> ModelMetadata:
        """Built once per (name, version) asked for: the HTTP infer route asks on every request."""
        found = self._metadata.get((name, version))
        if found is None:
            # unknown names raise: only real entries are cached
            found = self._metadata[(name, version)] = self.repository.get(name).metadata(version)
        return found

    def config(self, name: str, version: str = "") -> dict[str, Any]:
        """The config as Triton shows it, plus where it runs (``kiln_provider/device/buckets`` parameters)."""
        entry = self.repository.get(name)
        config = entry.config_dict()
        model = self._models.get((name, entry.resolve_version(version)))
        if model is not None:
            config["parameters"] = {**config.get("parameters", {}), **model.placement.config_parameters()}
        return config

    async def infer(self, request: InferRequest) -> InferResponse:
        model = self._loaded(request.model, request.version)
        classify = classification_counts(request, model.entry)
        wanted = request.outputs or model.output_names
        if not model.output_set.issuperset(wanted):
            unknown = sorted(set(wanted) - model.output_set)
            raise BadRequest(
                f"model {request.model!r} has no output(s) {unknown}; outputs: {model.output_names}"
            )
        inputs = validate_inputs(model.entry, request.inputs, model.rules)
        # the server's limit bounds the client's; only the request's own timeout may shorten a queue's
        timeout = request.time_limit(self.options.default_timeout_s)
        outputs = await model.batcher.submit(inputs, timeout, own_timeout_s=request.timeout_s)
        result = {}
        for name in wanted:
            value = outputs[name]
            if name in model.output_dims:  # as the config's dims say, not as the model made it
                value = reshaped(value, model.output_dims[name], model.batched)
            if name in classify:
                labels = model.entry.labels.get(name)
                value = classification(value, classify[name], labels, batched=model.batched)
            result[name] = value
        return InferResponse(request.model, model.version, result, request.request_id)

    def runner(self, name: str, graph: GraphChoice | None = None) -> Runner:
        """A Runner over a session of its own for an encoder/decoder entry (one per decode worker).

        Each call opens a new session with one intra-op thread: a decode worker is one thread
        stepping its own batch (CTranslate2's ``inter_threads``), so workers never queue on a shared
        session and no intra-op pool competes with the decode threads for the cores, whatever
        ``--intra-op-threads`` the batchers' sessions use. ``graph``: the file a CPU session opens
        instead of the entry's model file (the fused-attention graph of an encoder or decoder; by
        default the backend's ``graphs`` for the entry's task). On the CPU provider the session opens
        the weight store's optimized graph of that file, whose weights every decode worker's sessions
        (and the compiled step's, told by ``run.optimized``) and the entry's batch session map once.
        """
        entry = self.repository.get(name)
        version = entry.resolve_version("")
        model = self._models.get((name, version))
        if model is None:
            raise RuntimeError(f"entry {name!r} is not loaded: {self._failed.get(name, 'unknown reason')}")
        import onnxruntime as ort

        path = entry.model_file(version)
        graph = graph if graph is not None else self.graphs.get(entry.task)
        session, source, chosen = self._open_chosen(entry, path, model.placement, graph, 1)
        run = onnxruntime_runner(session, self.occupancy)
        # what a compiled decoder step needs to open the same model the same way (CPU: ort_step.c): the
        # file this session opened, and whether it is the weight store's graph (optimized already,
        # its weights and their pre-packed copies mapped by every session of every worker)
        run.model_file = source  # type: ignore[attr-defined]
        run.optimized = source != chosen and source != path  # type: ignore[attr-defined]
        if entry.task == "translate_decoder":  # a GPU decoder's steps keep its cache on the device
            run.resident = resident_request(model.placement, entry.config, entry.model_file(version))  # type: ignore[attr-defined]
        run.session_config = spin_entries(self.options.spin_us, ort.__version__)  # type: ignore[attr-defined]
        return run

    def _servable(self, entry: RepositoryEntry) -> bool:
        if entry.task == "translate":
            return False  # served by the translator pool over its encoder/decoder entries
        if entry.platform not in ONNX_PLATFORMS:
            log.info(
                "model %s: platform %r is not served by the onnxruntime backend", entry.name, entry.platform
            )
            self._failed.setdefault(entry.name, f"platform {entry.platform!r} needs the triton backend")
            return False
        return True

    def _open_sessions(self, entry: RepositoryEntry, version: str) -> Sessions:
        """One session per bucket (one in all when bucketing is off) per instance of ``instance_group``."""
        import onnxruntime as ort  # imported lazily: nothing heavy at import time

        path = entry.model_file(version)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        where = placement.plan(entry.config, ort.get_available_providers())
        try:
            per_instance = self._bucket_sessions(entry, path, where)
        except Exception as exc:  # noqa: BLE001 - only a graph's capture is retried; the rest re-raises
            if not where.cuda_graphs:
                raise
            # a graph needs fixed shapes and every node on the CUDA provider; the model still serves
            log.warning(
                "model %s: its CUDA graphs could not be captured (%s); its buckets run without them",
                entry.name,
                exc,
            )
            where = placement.without_cuda_graphs(where)
            per_instance = self._bucket_sessions(entry, path, where)
        threads = self._lone_request_threads(entry, where)
        lone = None
        if threads:
            lone = [
                self._open_session(path, where, threads, spin_us=self.options.lone_spin_us, shared=True)[0]
                for _ in per_instance
            ]
            for session in lone:  # planned before the first lone request
                session.run(None, placement.zero_inputs(session, 1))
        log.info(
            "model %s version %s: provider %s, device %s, buckets %s, lone-request threads %s, weights %s",
            entry.name,
            version,
            where.provider,
            where.device,
            list(where.buckets) or "off",
            threads or "off",
            "shared" if path in self._shared else "one copy a session",
        )
        return Sessions(where, per_instance, lone)

    def _lone_request_threads(self, entry: RepositoryEntry, where: placement.Placement) -> int:
        """Intra-op threads of the lone-request session (0: none). Only for batching models on the CPU
        provider without buckets (a bucketed session must only ever see its own shape), and not for a
        translator's encoder and decoder: the decode workers run them on sessions of their own, so a
        lone session there would hold the weights once more for the rare direct KServe call."""
        wanted = self.options.lone_request_threads
        if wanted is None:
            wanted = usable_cpus()
        batch_threads = self.options.intra_op_threads or wanted
        usable = entry.max_batch_size > 0 and where.provider == placement.CPU and not where.buckets
        usable = usable and entry.task not in TRANSLATOR_PARTS
        return wanted if usable and wanted > batch_threads else 0

    def _bucket_sessions(
        self, entry: RepositoryEntry, path: Path, where: placement.Placement
    ) -> list[dict[int, Any]]:
        """Each instance's session per bucket (one, keyed 0, when bucketing is off), each bucket warmed
        at its one shape: planned, or captured as a CUDA graph, before the first request."""
        graph = self.graphs.get(entry.task)
        per_instance = []
        for _ in range(_instance_count(entry.config)):
            sessions = {}
            for size in where.buckets or (0,):
                sessions[size] = self._open_chosen(entry, path, where, graph)[0]
                if where.cuda_graphs:
                    sessions[size] = _bound(sessions[size], size, where, entry.name)
                if size:
                    sessions[size].run(None, placement.zero_inputs(sessions[size], size))
            per_instance.append(sessions)
        return per_instance

    def _open_chosen(
        self,
        entry: RepositoryEntry,
        path: Path,
        where: placement.Placement,
        graph: GraphChoice | None,
        intra_op_threads: int | None = None,
    ) -> tuple[Any, Path, Path]:
        """A shared session of the file ``graph`` chooses for the entry's model file ``path`` on the CPU
        provider (``path`` itself elsewhere, or without a graph), falling back to ``path`` with a warning
        when that file does not open; with the file the session opened and the one chosen."""
        chosen = graph.path(path) if graph is not None and where.provider == placement.CPU else path
        if chosen != path:
            try:
                session, source = self._open_session(
                    chosen, where, intra_op_threads, graph=graph, shared=True
                )
                if chosen in self._shared:  # the entry's sessions map one copy, of the chosen graph
                    self._shared.add(path)
                return session, source, chosen
            except Exception as exc:  # noqa: BLE001 - the entry's own file still serves, slower
                log.warning(
                    "entry %s: %s did not open (%s); using %s", entry.name, chosen.name, exc, path.name
                )
        session, source = self._open_session(path, where, intra_op_threads, shared=True)
        return session, source, path

    def _open_session(
        self,
        path: Path,
        where: placement.Placement,
        intra_op_threads: int | None = None,
        *,
        spin_us: int | None = -1,
        graph: GraphChoice | None = None,
        shared: bool = False,
    ) -> tuple[Any, Path]:
        """One ONNX Runtime session on the placement's providers (``intra_op_threads`` and ``spin_us``
        override the options; a ``spin_us`` of -1 keeps ``OrtOptions.spin_us``; ``graph`` prepares the
        options for the file it chose), and the file it opened. ``shared``: on the CPU provider, the
        session opens the weight store's optimized graph of ``path`` and maps the weights every other
        shared session of ``path`` maps (``OrtOptions.share_weights``); else ``path`` itself."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = (
            self.options.intra_op_threads if intra_op_threads is None else intra_op_threads
        )
        opts.inter_op_num_threads = self.options.inter_op_threads
        if graph is not None:
            graph.prepare(path, opts)
        spin = self.options.spin_us if spin_us == -1 else spin_us
        for key, value in spin_entries(spin, ort.__version__).items():
            opts.add_session_config_entry(key, value)
        if where.provider == placement.CUDA:
            placement.load_cuda_libraries(ort)
        source = path
        if shared and self._weights is not None and where.provider == placement.CPU:
            prepare = None if graph is None else functools.partial(graph.prepare, path)
            optimized = self._weights.graph_for(path, where.providers(), prepare)
            if optimized is not None:
                shared_options(opts)
                source = optimized
                self._shared.add(path)
        factory = self.session_factory or ort.InferenceSession
        session = factory(str(source), sess_options=opts, providers=where.providers())
        placement.check_session(session, where, path.parent.parent.name)
        return session, source

    def _make_model(self, entry: RepositoryEntry, version: str, sessions: Sessions) -> LoadedModel:
        if self.metrics is not None:
            self.metrics.set_placement(entry.name, version, sessions.placement)
        policy = BatchPolicy.from_config(
            entry.config,
            max_queue_size=self.options.max_queue_size,
            instances=len(sessions.per_instance),
        )
        model = LoadedModel(entry, version, sessions, None, self.occupancy)  # type: ignore[arg-type]
        model.batcher = DynamicBatcher(
            entry.name,
            model.run,
            policy,
            observer=self.metrics,
            retry_after_s=self.options.retry_after_s,
            inline=model.may_run_inline if sessions.lone is not None else None,
            release=model.release if _arena_releases(entry, sessions) else None,
            release_idle_s=self.options.release_idle_s,
        )
        model.batcher.start()
        return model

    def _loaded(self, name: str, version: str) -> LoadedModel:
        entry = self.repository.get(name)
        version = entry.resolve_version(version)
        model = self._models.get((name, version))
        if model is None or self._stopping:
            reason = self._failed.get(name, "the gateway is starting or stopping")
            raise Unavailable(
                f"model {name!r} version {version} is not ready: {reason}",
                retry_after=self.options.retry_after_s,
            )
        return model


def onnxruntime_runner(session: Any, occupancy: Occupancy | None = None) -> Runner:
    """A :data:`Runner` over an ONNX Runtime session (or a path to a .onnx file, opened on CPU):
    :func:`serving.execution.runner.session_runner`. With ``occupancy``, each run is counted in
    it (a lone classify request then leaves the cores alone)."""
    if isinstance(session, str | Path):
        import onnxruntime as ort  # lazy: nothing heavy at import time

        session = ort.InferenceSession(str(session), providers=["CPUExecutionProvider"])
    return session_runner(session, occupancy)


def _bound(session: Any, rows: int, where: placement.Placement, name: str) -> BoundSession:
    """A bucket's session on bound device buffers, replayed as a CUDA graph (``kiln_cuda_graphs``)."""
    device = "cuda" if where.provider == placement.CUDA else "cpu"
    device_id = int(where.device.partition(":")[2] or 0)
    try:
        return BoundSession(session, rows, device, device_id)
    except ValueError as exc:
        raise placement.PlacementError(f"model {name!r}: kiln_cuda_graphs: {exc}") from exc


TRANSLATOR_PARTS = ("translate_encoder", "translate_decoder")  # kiln.json tasks of a translator's graphs


def _instance_count(config: Any) -> int:
    return sum(max(1, g.count) for g in config.instance_group) or 1


def _arena_releases(entry: RepositoryEntry, sessions: Sessions) -> bool:
    """Whether an idle instance may shrink its batch session's arena: a model that merges batches (so
    it grows past one row's needs), on plain CPU sessions (a bucket's session keeps its shape's memory
    on purpose, and the CUDA provider's arena is the device's)."""
    where = sessions.placement
    return entry.max_batch_size > 0 and where.provider == placement.CPU and not where.buckets
