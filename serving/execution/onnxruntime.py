"""The embedded backend: ONNX Runtime sessions behind one dynamic batcher per model version.

Instance count and device come from the config's ``instance_group``; batching from its
``dynamic_batching`` block. Requests are validated against the config (names, datatypes, shapes,
batch size) before they are queued, so a client's mistake is a 400 naming the input, never a 500.
Classification (Triton's extension) is requested with ``InferRequest.classification =
{output_name: count}`` and answered here with BYTES ``"score:index:label"`` strings. How one session is
opened (its file, options and shared weights) is :mod:`serving.execution.ort_sessions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from serving.errors import BadRequest, ModelNotFound, Unavailable, mark_models_answer
from serving.execution import placement
from serving.execution.base import (
    GraphChoice,
    InferRequest,
    InferResponse,
    LoadingStopped,
    ModelMetadata,
    Runner,
)
from serving.execution.batch_policy import BatchPolicy
from serving.execution.batcher import DynamicBatcher
from serving.execution.config_json import config_json
from serving.execution.cpus import usable_cpus
from serving.execution.datatypes import classification
from serving.execution.loaded_model import LoadedModel, Sessions, unlisted_inputs
from serving.execution.occupancy import Occupancy
from serving.execution.ort_options import OrtOptions, resident_request, spin_entries
from serving.execution.ort_sessions import SessionOpener, warm_up
from serving.execution.repository import (
    ONNX_PLATFORMS,
    Repository,
    RepositoryEntry,
    check_not_replaced,
    version_problem,
)
from serving.execution.runner import session_runner
from serving.execution.validation import classification_counts, reshaped, validate_inputs
from serving.threads import name_os_thread, os_name

log = logging.getLogger(__name__)


# Classes written as strings on the event loop; more in a thread (64 rows of 1000 classes, a legal
# class_count, were 139 ms of loop here, every other request of the gateway waiting for them).
INLINE_CLASSES = 1024


async def _classified(scores: Any, count: int, labels: list[str] | None, batched: bool) -> Any:
    """Triton's classification of an output the model made: a type it cannot rank (FP16, BOOL, BYTES)
    is refused as the model's answer (serving.errors.MODELS_ANSWER), as Triton refuses it filling the
    model's response, so a stream's error answer names the model (it came with the id alone)."""
    rows = scores.shape[0] if batched and scores.ndim else 1
    try:
        if rows * min(count, scores.size // max(rows, 1)) <= INLINE_CLASSES:
            return classification(scores, count, labels, batched=batched)
        return await asyncio.to_thread(classification, scores, count, labels, batched=batched)
    except BadRequest as error:
        mark_models_answer(error)
        raise


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
        self.options = options or OrtOptions()
        self._opener = SessionOpener(self.options, session_factory)
        self._opener.stopping = lambda: self._stopping
        self.metrics = metrics
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._failed: dict[str, str] = dict(repository.errors)
        self._metadata: dict[tuple[str, str], ModelMetadata] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._load_budget = LoadBudget(MAX_LOAD_BYTES)
        self._started = False
        self._stopping = False

    async def start(self) -> None:
        """Create the sessions (in threads, they can take a while; :func:`load_threads` versions at once)
        and start one batcher per version."""
        servable = [e for e in self.repository.entries.values() if self._servable(e)]
        for entry in servable:
            problem = version_problem(entry)
            if problem:  # never loads: reported as a failed load, so the server is not ready
                log.error("model %s failed to load: %s", entry.name, problem)
                self._failed[entry.name] = problem
        plans = [(e, v) for e in servable for v in e.versions]
        # Only for loading (each batcher runs its batches on execution threads of its own): up to
        # load_threads() model versions load at once, ONNX Runtime's session creation (most of it
        # the weight store's optimization) running without the GIL. Their outcomes are taken in the
        # repository's order, so the load lines, the failures and the models' threads' names are
        # the same whatever order the loads end in.
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, min(load_threads(self.options), len(plans))),
            thread_name_prefix="kiln-ort-load",
            initializer=name_os_thread,
        )
        loop = asyncio.get_running_loop()
        if plans:
            self._opener.open_weight_store()
        loads = [
            loop.run_in_executor(self._executor, self._load_unless_stopped, index, entry, version)
            for index, (entry, version) in enumerate(plans)
        ]
        skipped: set[str] = set()
        try:
            for index, ((entry, version), load) in enumerate(zip(plans, loads, strict=True)):
                try:
                    sessions = await load
                except LoadingStopped:  # stopped between its instances' sessions, or waiting for a GPU
                    sessions = None
                except Exception as exc:  # noqa: BLE001 - one broken model must not stop the others
                    log.error("model %s version %s failed to load: %s", entry.name, version, exc)
                    self._failed[entry.name] = str(exc)
                    continue
                if sessions is None:  # a stop signal while loading: the rest are not worth the wait
                    skipped.add(entry.name)
                    continue
                self._log_loaded(index, entry, version, sessions)
                self._models[(entry.name, version)] = self._make_model(entry, version, sessions)
        except BaseException:  # a failed or cancelled start-up: the loads not begun are not worth the wait
            self._stopping = True
            raise
        finally:  # none left loading, whatever ended this
            await asyncio.gather(*loads, return_exceptions=True)
        if skipped:
            raise LoadingStopped(
                f"a stop signal arrived while the models loaded; not loaded: {', '.join(sorted(skipped))}"
            )
        self._executor.shutdown(wait=False)  # its threads end: nothing more to load
        self._started = True
        log.info("onnxruntime backend serving %s", sorted({name for name, _ in self._models}))
        if self._models:  # top -H, py-spy and perf show only the OS names, cut to 15 bytes
            log.info("batch threads %s", batch_threads(self._models))

    def stop_loading(self) -> None:
        """Asked to stop while :meth:`start` loads (a signal): it stops once the models it is loading are
        loaded (those of several instances: once the instance it is opening is)."""
        self._stopping = True

    async def stop(self) -> None:
        """Finish queued and running requests, then release the sessions."""
        self._stopping = True
        await asyncio.gather(*(m.batcher.stop(self.options.shutdown_grace_s) for m in self._models.values()))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._models.clear()
        self.occupancy.close()
        self._opener.close()

    def list_models(self) -> list[str]:
        return self.repository.names()

    def is_live(self) -> bool:
        return not self._stopping

    async def is_ready(self) -> bool:
        return self._started and not self._stopping and not self._failed

    async def model_ready(self, name: str, version: str = "") -> bool:
        if name in self.repository.errors:  # listed but unreadable: not ready, as Triton says, not unknown
            return False
        entry = self.repository.get(name)
        try:
            version = self._version(entry, version)
        except ModelNotFound:
            return False
        return self._started and not self._stopping and (name, version) in self._models

    def load_error(self, name: str) -> str:
        return self._failed.get(name, "")

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
        model = self._models.get((name, self._version(entry, version)))
        if model is not None:
            config["parameters"] = {**config.get("parameters", {}), **model.placement.config_parameters()}
            made = model.placement.instance_group(entry.name)
            if not entry.config.instance_group:
                config["instance_group"] = [config_json(made)]
            for group in config["instance_group"]:  # a GPU export's group lists none: Triton fills them in
                if group.get("kind") == "KIND_GPU" and not group.get("gpus"):
                    group["gpus"] = list(made.gpus)
        return config

    async def infer(self, request: InferRequest) -> InferResponse:
        model = self._loaded(request.model, request.version)
        classify = classification_counts(request)
        wanted = request.outputs or model.output_names
        if not model.output_set.issuperset(wanted):
            unknown = sorted(set(wanted) - model.output_set)
            raise BadRequest(
                f"model {request.model!r} has no output(s) {unknown}; outputs: {model.output_names}"
            )
        inputs = validate_inputs(model.entry, request.inputs, model.rules)
        # the server's limit bounds the client's; only the request's own timeout may shorten a queue's
        timeout = request.time_limit(self.options.default_timeout_s)
        outputs = await model.batcher.submit(
            inputs, timeout, own_timeout_s=request.timeout_s, priority=request.priority
        )
        result = {}
        for name in wanted:
            value = outputs[name]
            if name in model.output_dims:  # as the config's dims say, not as the model made it
                value = reshaped(value, model.output_dims[name], model.batched)
            if name in classify:
                value = await _classified(value, classify[name], model.entry.labels.get(name), model.batched)
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
        version = self._version(entry, "")
        model = self._models.get((name, version))
        if model is None:
            raise RuntimeError(f"entry {name!r} is not loaded: {self._failed.get(name, 'unknown reason')}")
        import onnxruntime as ort

        path = entry.model_file(version)
        graph = graph if graph is not None else self.graphs.get(entry.task)
        session, source, chosen = self._opener.open_chosen(entry, path, model.placement, graph, 1)
        run = onnxruntime_runner(session, self.occupancy)
        # what a compiled decoder step needs to open the same model the same way (CPU: ort_step.c): the
        # file this session opened, and whether it is the weight store's graph (optimized already,
        # its weights and their pre-packed copies mapped by every session of every worker)
        run.model_file = source  # type: ignore[attr-defined]
        run.optimized = source != chosen and source != path  # type: ignore[attr-defined]
        run.on_cpu = model.placement.provider == placement.CPU  # type: ignore[attr-defined]
        if entry.task == "translate_decoder":  # a GPU decoder's steps keep its cache on the device
            run.resident = resident_request(model.placement, entry.config, entry.model_file(version))  # type: ignore[attr-defined]
        run.session_config = spin_entries(self.options.spin_us, ort.__version__)  # type: ignore[attr-defined]
        return run

    def _servable(self, entry: RepositoryEntry) -> bool:
        if entry.task == "translate":
            return False  # served by the translator pool over its encoder/decoder entries
        if not entry.platform:
            self._failed.setdefault(entry.name, unnamed_platform(entry))
            log.error("model %s: %s", entry.name, self._failed[entry.name])
            return False
        if entry.platform not in ONNX_PLATFORMS:
            log.info(
                "model %s: platform %r is not served by the onnxruntime backend", entry.name, entry.platform
            )
            self._failed.setdefault(entry.name, f"platform {entry.platform!r} needs the triton backend")
            return False
        return True

    def _load_unless_stopped(self, index: int, entry: RepositoryEntry, version: str) -> Sessions | None:
        """:meth:`_open_named_sessions` on a loading thread; None, opening nothing, once a stop signal
        came (:meth:`stop_loading`): the loads under way end, those not begun are not worth the wait.
        It waits while the models loading hold :data:`MAX_LOAD_BYTES` of files (:class:`LoadBudget`)."""
        with self._load_budget.held(version_bytes(entry, version)):
            if self._stopping:
                return None
            return self._open_named_sessions(index, entry, version)

    def _open_named_sessions(self, index: int, entry: RepositoryEntry, version: str) -> Sessions:
        """:meth:`_open_sessions` on the loading thread named :func:`ort_thread_name` meanwhile: ONNX
        Runtime's intra-op (and inter-op) threads take the name of the thread that opens their session,
        and each model's were all ``kiln-ort-load_0`` (a lone-request session's, one per CPU, for every
        model: 3 000 such threads for 200 models on 16 cores, none saying whose)."""
        name_os_thread(ort_thread_name(index, entry.name))
        try:
            return self._open_sessions(entry, version)
        finally:
            name_os_thread()  # the loading thread's own name again

    def _open_sessions(self, entry: RepositoryEntry, version: str) -> Sessions:
        """One session per bucket (one in all when bucketing is off) per instance of ``instance_group``."""
        import onnxruntime as ort  # imported lazily: nothing heavy at import time

        path = entry.model_file(version)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        where = placement.plan(entry.config, ort.get_available_providers())
        graph = self.graphs.get(entry.task)
        # models on a GPU load one at a time, as all did before they loaded side by side: a CUDA graph's
        # capture (the warm-up run of its bucket) is process-wide in ONNX Runtime ("cuda graph can only
        # work with a single thread"), so another thread's CUDA allocations or copies during it broke it
        with _CUDA_LOADS if where.provider == placement.CUDA else contextlib.nullcontext():
            if self._stopping:  # a stop signal while it waited for another GPU model's load: not begun
                raise LoadingStopped(f"model {entry.name!r}: a stop signal arrived before it loaded")
            return self._open_placed(entry, version, path, where, graph)

    def _open_placed(
        self, entry: RepositoryEntry, version: str, path: Path, where: placement.Placement, graph: Any
    ) -> Sessions:
        """:meth:`_open_sessions` once the model's placement is known."""
        try:
            per_instance = self._opener.bucket_sessions(entry, path, where, graph)
        except LoadingStopped:
            raise
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
            per_instance = self._opener.bucket_sessions(entry, path, where, graph)
        unlisted = unlisted_inputs(entry.config, Sessions(where, per_instance).default(0))
        made = sorted({n for b in entry.config.batch_input for n in b.target_name} & set(unlisted))
        if made:  # Triton feeds these itself (ragged batching): it loads such a model, this backend cannot
            raise ValueError(
                f"{entry.path / 'config.pbtxt'} does not match {path}: the graph's inputs {made} are the "
                "config's batch_input, which the embedded backend does not make: use --backend triton"
            )
        if unlisted and not entry.config.input:  # Triton completes them from the graph, by default
            raise ValueError(
                f"{entry.path / 'config.pbtxt'} lists no input: the gateway does not complete a config from "
                f"the model file as Triton does by default; list the graph's inputs {unlisted} and its outputs"
            )
        if unlisted:
            raise ValueError(
                f"{entry.path / 'config.pbtxt'} does not match {path}: the graph's inputs {unlisted} are not "
                f"in the config, which must list every input the graph requires (Triton refuses it too)"
            )
        threads = self._lone_request_threads(entry, where)
        lone = None
        if threads:
            lone = [
                self._opener.open_session(
                    path, where, threads, spin_us=self.options.lone_spin_us, shared=True
                )[0]
                for _ in per_instance
            ]
            for session in lone:  # planned before the first lone request
                warm_up(session, 1, entry.name)
        check_not_replaced(entry)  # an export meanwhile: the graph opened may be the new one
        return Sessions(where, per_instance, lone)

    def _log_loaded(self, index: int, entry: RepositoryEntry, version: str, sessions: Sessions) -> None:
        """The load line of the ``index``-th model version loaded, written in the repository's order
        once its sessions are open (:meth:`start` loads several at once)."""
        where = sessions.placement
        threads = self._lone_request_threads(entry, where)
        ort_threads = ort_thread_name(index, entry.name)
        pooled = threads > 1 or self.options.intra_op_threads != 1 or self.options.inter_op_threads > 1
        log.info(
            "model %s version %s: provider %s, device %s, buckets %s, lone-request threads %s%s, weights %s",
            entry.name,
            version,
            where.provider,
            where.device,
            list(where.buckets) or "off",
            threads or "off",
            f", ONNX Runtime threads {ort_threads}" if pooled else "",
            "shared" if entry.model_file(version) in self._opener.shared else "one copy a session",
        )

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
            version=version,
        )
        model.batcher.start()
        return model

    def latest_version(self, name: str) -> str:
        """The version a call for ``name`` without a version reaches (:meth:`_version`): what labels
        such a call's statistics, which went to a newest version that failed its load while the
        version before it answered the call."""
        return self._version(self.repository.get(name), "")

    def _version(self, entry: RepositoryEntry, version: str) -> str:
        """The version a call for ``version`` reaches: the one asked for or, asked for none, as Triton
        answers "latest": the newest version that loaded. Under a policy serving several versions, a
        newest one that failed its load left every call without a version a 503 (Triton answers them
        with the version before it); where none loaded, the newest selected, whose load error is told.
        An entry with no version at all (an ensemble's empty ``1/``) is the metadata's 404, its reason
        told (it was "has no servable version", hiding why)."""
        if not entry.versions and entry.name in self._failed:
            raise ModelNotFound(
                f"model {entry.name!r} has no available versions: it failed to load: {self._failed[entry.name]}"
            )
        if not version:
            loaded = [v for v in entry.versions if (entry.name, v) in self._models]
            if loaded:
                return loaded[-1]
        return entry.resolve_version(version)

    def _loaded(self, name: str, version: str) -> LoadedModel:
        entry = self.repository.get(name)
        version = self._version(entry, version)
        model = self._models.get((name, version))
        if model is None or self._stopping:
            reason = self._failed.get(name, "the gateway is starting or stopping")
            raise Unavailable(
                f"model {name!r} version {version} is not ready: {reason}",
                retry_after=self.options.retry_after_s,
            )
        return model


# Model versions a backend loads at once by default, at most; and the bytes of model files they may hold
# at once (LoadBudget): each holds its weights about twice while the weight store optimizes it, so
# small models load side by side (a small model's load is mostly ONNX Runtime's fixed costs: 33 of
# them on 2 cores, 0.86 -> 0.58 s), and one larger than the budget alone, as all did before.
MAX_LOAD_THREADS = 4
MAX_LOAD_BYTES = 256 << 20
_CUDA_LOADS = (
    threading.Lock()
)  # models placed on a GPU load one at a time (OnnxRuntimeBackend._open_sessions)


class LoadBudget:
    """Bytes of model files the loads under way hold, at most ``limit``: a load waits until its bytes
    fit beside theirs; one larger than ``limit`` waits until it loads alone."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._changed = threading.Condition()

    @contextmanager
    def held(self, size: int) -> Iterator[None]:
        size = min(size, self.limit)
        with self._changed:
            self._changed.wait_for(lambda: self.used + size <= self.limit)
            self.used += size
        try:
            yield
        finally:
            with self._changed:
                self.used -= size
                self._changed.notify_all()


def version_bytes(entry: RepositoryEntry, version: str) -> int:
    """The bytes of the files in a model version's directory (its graph, external weights, a fused
    twin): what its load reads, for :class:`LoadBudget`."""
    total = 0
    for path in (entry.path / version).rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:  # gone or unreadable: its load says so
            continue
    return total


def load_threads(options: OrtOptions) -> int:
    """Model versions :meth:`OnnxRuntimeBackend.start` loads at once: ``options.load_threads``, by
    default the CPUs this process may use, at most :data:`MAX_LOAD_THREADS`."""
    if options.load_threads is not None:
        return max(1, options.load_threads)
    return min(usable_cpus(), MAX_LOAD_THREADS)


def onnxruntime_runner(session: Any, occupancy: Occupancy | None = None) -> Runner:
    """A :data:`Runner` over an ONNX Runtime session (or a path to a .onnx file, opened on CPU):
    :func:`serving.execution.runner.session_runner`. With ``occupancy``, each run is counted in
    it (a lone classify request then leaves the cores alone)."""
    if isinstance(session, str | Path):
        import onnxruntime as ort  # lazy: nothing heavy at import time

        session = ort.InferenceSession(str(session), providers=["CPUExecutionProvider"])
    return session_runner(session, occupancy)


TRANSLATOR_PARTS = ("translate_encoder", "translate_decoder")  # kiln.json tasks of a translator's graphs


def _arena_releases(entry: RepositoryEntry, sessions: Sessions) -> bool:
    """Whether an idle instance may shrink its batch session's arena: a model that merges batches (so
    it grows past one row's needs), on plain CPU sessions (a bucket's session keeps its shape's memory
    on purpose, and the CUDA provider's arena is the device's)."""
    where = sessions.placement
    return entry.max_batch_size > 0 and where.provider == placement.CPU and not where.buckets


def ort_thread_name(index: int, name: str) -> str:
    """The OS name of the ONNX Runtime threads of the ``index``-th model version loaded, of model
    ``name``: ``kort<index>-<name>`` cut to 15 bytes, the number (which makes it unique) always whole
    (as :func:`serving.execution.batcher.batch_thread_name`)."""
    return os_name(f"kort{index}-{name}")


def batch_threads(models: Mapping[tuple[str, str], LoadedModel]) -> str:
    """ "resnet18 v1: kbat0.0-resnet1; resnet18_int8 v1: kbat1.0-resnet1, kbat1.1-resnet1": each
    model version's execution threads by their OS names (what top -H, py-spy and perf show), for the
    start-up line: cut to 15 bytes, the names alone do not say which model they serve."""
    return "; ".join(
        f"{name} v{version}: {', '.join(model.batcher.thread_names)}"
        for (name, version), model in sorted(models.items())
    )


def unnamed_platform(entry: RepositoryEntry) -> str:
    """Why an entry whose config.pbtxt names no platform or backend (an empty one, say) is not served:
    it was "platform '' needs the triton backend", which sent its owner to another backend."""
    config_path = entry.path / "config.pbtxt"
    empty = not config_path.read_text(encoding="utf-8", errors="replace").strip()
    return (
        f"{config_path} {'is empty' if empty else 'names no platform or backend'}: the gateway does not "
        f'complete a config from the model file as Triton does; write platform: "{ONNX_PLATFORMS[0]}" '
        "for an ONNX model"
    )
