"""The embedded backend loads several model versions at once (``OrtOptions.load_threads``): a replica an
autoscaler starts serves nothing until every model is loaded, and they loaded one after another, a core
busy and the others idle (33 small classifiers on 2 cores: 0.86 -> 0.58 s of loading).

Whatever order the loads end in, what a client and an operator see is what a serial load gives: the
load lines in the repository's order, each model's ONNX Runtime threads named after its place in it,
the same repository index and metadata, and a model that fails to load reported as before."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.execution import placement
from serving.execution.onnxruntime import LoadBudget, OnnxRuntimeBackend, ort_thread_name
from serving.execution.ort_options import OrtOptions
from serving.execution.repository import Repository
from serving.settings import Settings
from tests.repo_fixtures import IDENTITY_CONFIG, write_entry_without_model, write_identity_entries
from tests.waiting import DEADLINE_S

NAMES = [f"m{i}" for i in range(6)]  # sorted: the repository's order, "x_broken" after them
SLOW, QUICK = "m0", "m1"  # m0's session waits until m1 has loaded: the loads end out of order


def _thread_name() -> str:
    """The calling thread's OS name (what its ONNX Runtime threads take), or its Python name off Linux."""
    comm = Path(f"/proc/self/task/{threading.get_native_id()}/comm")
    return comm.read_text().strip() if sys.platform == "linux" else threading.current_thread().name


class Loads:
    """A session factory that opens real sessions, holding the first model's until the second's is
    open (at most ``wait_s``: one after another, it never is; 0: not held), and records each file's
    loading thread."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.quick_opened = threading.Event()
        self.threads: dict[str, str] = {}

    def __call__(self, path: str, sess_options: Any = None, providers: Any = None) -> Any:
        name = Path(path).parent.parent.name
        self.threads[name] = _thread_name()
        if name == SLOW and self.wait_s and not self.quick_opened.wait(self.wait_s):
            raise RuntimeError(f"{QUICK} did not load while {SLOW} loaded")
        session = ort.InferenceSession(path, sess_options=sess_options, providers=providers)
        if name == QUICK:
            self.quick_opened.set()
        return session


def _serve(root: Path, load_threads: int, wait_s: float, caplog: Any) -> dict[str, Any]:
    """Start a gateway over ``root`` loading ``load_threads`` models at once; what it showed."""
    loads = Loads(wait_s)
    options = OrtOptions(lone_request_threads=0, load_threads=load_threads)
    backend = OnnxRuntimeBackend(Repository(root), options, session_factory=loads)
    caplog.clear()
    settings = Settings(model_repository=root, grpc_port=0)
    logged = caplog.at_level("INFO", logger="serving.execution.onnxruntime")
    with logged, TestClient(create_app(settings, backend=backend)) as client:
        shown = {
            "index": client.post("/v2/repository/index", json={}).json(),
            "metadata": {n: client.get(f"/v2/models/{n}").json() for n in NAMES},
            "ready": client.get("/v2/health/ready").status_code,
            "x_broken": client.get("/v2/models/x_broken/ready").status_code,
            "load_error": backend.load_error("x_broken"),
        }
    shown["lines"] = [
        r.getMessage()
        for r in caplog.records
        if r.name == "serving.execution.onnxruntime" and "version 1" in r.getMessage()
    ]
    shown["threads"] = loads.threads
    return shown


def test_models_load_at_once_and_report_as_one_after_another(tmp_path, caplog) -> None:
    write_identity_entries(tmp_path, NAMES)
    write_entry_without_model(tmp_path, "x_broken", IDENTITY_CONFIG.format(name="x_broken"))

    together = _serve(tmp_path, load_threads=4, wait_s=DEADLINE_S, caplog=caplog)
    # m0's load waited for m1's: they loaded at once, and m0 still loaded
    assert [e["name"] for e in together["index"]] == [*NAMES, "x_broken"]
    assert all(e["state"] == "READY" for e in together["index"] if e["name"] != "x_broken"), together["index"]
    # in the repository's order, though m1 loaded first; the failure where serial loading writes it
    assert [line.split()[1] for line in together["lines"]] == [*NAMES, "x_broken"], together["lines"]
    assert together["lines"][-1].startswith("model x_broken version 1 failed to load: ")
    for index, name in enumerate(NAMES):  # each model's threads named after its place, not its turn
        assert together["threads"][name] == ort_thread_name(index, name)

    one_by_one = _serve(tmp_path, load_threads=1, wait_s=0.0, caplog=caplog)  # m0 not held
    # as a serial load shows them: the broken model, the index, every metadata, the lines, the threads
    assert together["ready"] == one_by_one["ready"] == 400
    assert together["x_broken"] == one_by_one["x_broken"] == 400
    assert together["load_error"] == one_by_one["load_error"]
    assert "does not exist" in together["load_error"]
    assert together["index"] == one_by_one["index"]
    assert together["metadata"] == one_by_one["metadata"]
    assert together["lines"] == one_by_one["lines"]
    assert together["threads"] == one_by_one["threads"]


@pytest.mark.parametrize("load_threads", [1, 3])
def test_every_model_loads_whatever_the_threads(tmp_path, caplog, load_threads) -> None:
    """Twelve tiny models, each loaded, named and listed once, in order, with one thread or several."""
    names = [f"n{i:02d}" for i in range(12)]
    write_identity_entries(tmp_path, names)
    options = OrtOptions(lone_request_threads=0, load_threads=load_threads)
    backend = OnnxRuntimeBackend(Repository(tmp_path), options)
    app = create_app(Settings(model_repository=tmp_path, grpc_port=0), backend=backend)
    with caplog.at_level("INFO", logger="serving.execution.onnxruntime"), TestClient(app) as client:
        assert client.get("/v2/health/ready").status_code == 200
        index = client.post("/v2/repository/index", json={}).json()
    assert [(e["name"], e["state"]) for e in index] == [(n, "READY") for n in names]
    lines = [r.getMessage() for r in caplog.records if "version 1: provider" in r.getMessage()]
    assert [line.split()[1] for line in lines] == names


def test_a_model_over_the_byte_budget_loads_alone() -> None:
    """Small models load side by side; one larger than the budget waits until none is loading (its
    load holds its weights about twice: several such at once could take the replica's memory)."""
    budget = LoadBudget(100)
    small_in, large_in, release = threading.Event(), threading.Event(), threading.Event()
    seen: list[int] = []  # what the large load found held while it ran (asserted here, not in its thread)

    def small() -> None:
        with budget.held(60):
            small_in.set()
            release.wait(DEADLINE_S)

    def large() -> None:
        with budget.held(500):
            seen.append(budget.used)
            large_in.set()

    first = threading.Thread(target=small)
    first.start()
    assert small_in.wait(DEADLINE_S)
    with budget.held(40):  # fits beside it
        assert budget.used == 100
    second = threading.Thread(target=large)
    second.start()
    assert not large_in.wait(0.05)  # waits for the small one
    release.set()
    first.join(DEADLINE_S)
    second.join(DEADLINE_S)
    assert large_in.is_set() and seen == [100] and budget.used == 0


@pytest.mark.parametrize(("provider", "together"), [(placement.CUDA, 1), (placement.CPU, 2)])
def test_models_placed_on_a_gpu_load_one_at_a_time(
    provider: str, together: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ONNX Runtime captures a CUDA graph process-wide (its warm-up run): another thread's CUDA work
    # during it broke the capture, so GPU models load as they did before loads went side by side
    backend = OnnxRuntimeBackend(Repository(write_identity_entries(tmp_path, ["a", "b"])), OrtOptions())
    device = "cuda:0" if provider == placement.CUDA else "cpu"
    monkeypatch.setattr(placement, "plan", lambda config, providers: placement.Placement(provider, device))
    # passed only where the two loads run at once: a loaded machine may start the second one late (CPU),
    # while the one-at-a-time loads (CUDA) wait it out, once each
    both = threading.Barrier(2, timeout=DEADLINE_S if together == 2 else 0.3)
    inside, most, lock = [0], [0], threading.Lock()

    def opened(entry, version, path, where, graph) -> str:  # noqa: ANN001 - OnnxRuntimeBackend._open_placed
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            both.wait()
        except threading.BrokenBarrierError:
            pass
        finally:
            with lock:
                inside[0] -= 1
        return entry.name

    monkeypatch.setattr(backend, "_open_placed", opened)
    entries = backend.repository.entries
    loads = [threading.Thread(target=backend._open_sessions, args=(entries[n], "1")) for n in ("a", "b")]
    for load in loads:
        load.start()
    for load in loads:
        load.join(DEADLINE_S)
    assert most[0] == together
