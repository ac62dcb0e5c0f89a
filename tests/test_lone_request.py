"""The lone-request session: a request that finds nothing else waiting runs with a thread per usable
CPU; merged batches and requests with others waiting run on the batch session; the answers are the same
either way. Usable CPUs: the affinity mask capped by a cgroup CPU quota."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serving.execution.base import InferRequest
from serving.execution.cpus import cgroup_cpu_quota, usable_cpus
from serving.execution.loaded_model import CROWDING_LIMIT, CROWDING_WEIGHT
from serving.execution.occupancy import Occupancy, create_board
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions, spin_entries
from serving.execution.repository import Repository
from tests.repo_fixtures import MAX_BATCH, SIZE, build_classifier_repository
from tests.waiting import DEADLINE_S, eventually


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    return build_classifier_repository(tmp_path_factory.mktemp("lone") / "repo")


class Sessions:
    """A session factory recording each session's options and each run's (threads, rows); a run of
    ``hold_rows`` rows waits for ``release`` once (so others can queue behind it)."""

    def __init__(self, hold_rows: int | None = None) -> None:
        self.options: list[tuple[int, str, str]] = []  # (intra-op threads, spinning, spin duration)
        self.runs: list[tuple[int, int]] = []
        self.threads: list[int] = []  # the thread each run ran on
        self.hold_rows, self.held, self.release = hold_rows, threading.Event(), threading.Event()

    def __call__(self, path, sess_options=None, providers=None):
        import onnxruntime as ort

        def entry(key: str) -> str:
            try:
                return sess_options.get_session_config_entry(key)
            except RuntimeError:  # not set: ORT's default
                return "0"

        threads = sess_options.intra_op_num_threads
        spinning, duration = (
            entry("session.intra_op.allow_spinning"),
            entry("session.intra_op.spin_duration_us"),
        )
        self.options.append((threads, spinning, duration))
        session = ort.InferenceSession(path, sess_options=sess_options, providers=providers)
        factory = self

        class Session:
            def __getattr__(self, name):
                return getattr(session, name)

            def run(self, names, feeds):
                rows = next(iter(feeds.values())).shape[0]
                factory.runs.append((threads, rows))
                factory.threads.append(threading.get_ident())
                if rows == factory.hold_rows and not factory.held.is_set():
                    factory.held.set()
                    factory.release.wait(DEADLINE_S)
                return session.run(names, feeds)

        return Session()


def images(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (rows, SIZE, SIZE, 1), dtype=np.uint8)


async def answers(root, options, factory, batches, occupancy=None):
    backend = OnnxRuntimeBackend(Repository(root), options, session_factory=factory, occupancy=occupancy)
    await backend.start()
    try:
        return [
            (await backend.infer(InferRequest("lenet", {"images": images(rows, i)}))).outputs
            for i, rows in enumerate(batches)
        ]
    finally:
        await backend.stop()


def test_a_lone_request_runs_on_the_wide_session_and_a_batch_on_the_batch_session(repository):
    sessions = Sessions()
    asyncio.run(answers(repository, OrtOptions(lone_request_threads=2), sessions, [1, 3]))
    # the batch session (1 thread) spins 20 us at most when idle, the lone one (2 threads) 1 ms
    import onnxruntime as ort

    def spins(spin_us):
        entries = spin_entries(spin_us, ort.__version__)
        return entries["session.intra_op.allow_spinning"], entries.get(
            "session.intra_op.spin_duration_us", "0"
        )

    assert sessions.options == [(1, *spins(20)), (2, *spins(1000))]
    assert sessions.runs == [(2, 1), (2, 1), (1, 3)]  # warm-up at load, the lone request, the batch


def test_the_answers_are_the_same_on_either_session(repository):
    batches = [1, 1, 2, 1]
    wide = asyncio.run(answers(repository, OrtOptions(lone_request_threads=2), Sessions(), batches))
    plain = asyncio.run(answers(repository, OrtOptions(lone_request_threads=0), Sessions(), batches))
    for got, want in zip(wide, plain, strict=True):
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


@contextlib.asynccontextmanager
async def holding_a_batch(repository, sessions):
    """A started backend (lone session of 2 threads) whose first batch, ``MAX_BATCH`` rows, is held in
    its run until ``sessions.release`` is set; yields the backend and that batch's task."""
    backend = OnnxRuntimeBackend(
        Repository(repository), OrtOptions(lone_request_threads=2), session_factory=sessions
    )
    await backend.start()
    try:
        first = asyncio.create_task(backend.infer(InferRequest("lenet", {"images": images(MAX_BATCH)})))
        assert await asyncio.to_thread(sessions.held.wait, DEADLINE_S)
        yield backend, first
    finally:
        await backend.stop()


def test_a_one_item_request_with_others_waiting_runs_on_the_batch_session(repository):
    sessions = Sessions(hold_rows=MAX_BATCH)

    async def scenario():
        async with holding_a_batch(repository, sessions) as (backend, first):
            infer = backend.infer
            # queued behind the held batch: one item, then a full batch that cannot join it
            lone = asyncio.create_task(infer(InferRequest("lenet", {"images": images(1)})))
            full = asyncio.create_task(infer(InferRequest("lenet", {"images": images(MAX_BATCH)})))
            model = backend._models[("lenet", "1")]
            assert await asyncio.to_thread(eventually, lambda: model.batcher.queue_depth == 2)
            sessions.release.set()
            await asyncio.gather(first, lone, full)

    asyncio.run(scenario())
    # warm-up, the held batch, the one-item request (a batch waited behind it), the last batch
    assert sessions.runs == [(2, 1), (1, MAX_BATCH), (1, 1), (1, MAX_BATCH)]


@pytest.mark.parametrize(
    ("options", "bucketed"),
    [
        (OrtOptions(lone_request_threads=0), False),
        (OrtOptions(intra_op_threads=2, lone_request_threads=2), False),
        (OrtOptions(lone_request_threads=2), True),
    ],
    ids=["switched-off", "not-wider-than-the-batch-session", "bucketed"],
)
def test_no_lone_request_session_where_it_cannot_help_or_must_not_exist(
    repository, tmp_path, options, bucketed
):
    root = repository
    if bucketed:  # a bucketed session must only ever see its own shapes
        root = tmp_path / "bucketed"
        shutil.copytree(repository, root)
        path = root / "lenet" / "config.pbtxt"
        cfg = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        cfg.dynamic_batching.preferred_batch_size.append(4)
        cfg.parameters["kiln_bucketing"].string_value = "1"
        path.write_text(text_format.MessageToString(cfg))
    sessions = Sessions()
    asyncio.run(answers(root, options, sessions, [1]))
    assert len(sessions.options) == (2 if bucketed else 1)  # buckets 4 and 8 here, and no lone session
    assert all(threads == options.intra_op_threads for threads, _, _ in sessions.options)


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
    ids=["v2-unlimited", "v2-one-and-a-half", "v1-two", "v1-unlimited", "no-cgroup"],
)
def test_a_cgroup_cpu_quota_caps_the_threads_a_lone_request_may_use(tmp_path, files, quota):
    import os

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == quota
    cores = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == (cores if quota is None else max(1, min(cores, int(quota))))


def test_a_lone_request_runs_on_the_batch_session_while_another_worker_runs_a_model(repository, tmp_path):
    board = create_board(2)
    other = Occupancy(board, 1)  # the other worker, running a batch of its own
    sessions, second = Sessions(), Sessions()
    other.enter()
    try:
        asyncio.run(
            answers(repository, OrtOptions(lone_request_threads=2), sessions, [1], Occupancy(board, 0))
        )
        other.leave()
        asyncio.run(answers(repository, OrtOptions(lone_request_threads=2), second, [1], Occupancy(board, 0)))
    finally:
        other.close()
        board.unlink()  # in /dev/shm: nothing else removes it
    assert sessions.runs == [(2, 1), (1, 1)]  # warm-up at load, then the narrow session
    assert second.runs == [(2, 1), (2, 1)]  # the other worker idle: the wide one


def test_a_lone_request_right_after_a_run_joined_by_new_work_runs_on_the_batch_session(repository):
    sessions = Sessions(hold_rows=MAX_BATCH)

    async def scenario():
        async with holding_a_batch(repository, sessions) as (backend, first):
            infer = backend.infer
            joined = asyncio.create_task(infer(InferRequest("lenet", {"images": images(1)})))
            model = backend._models[("lenet", "1")]
            assert await asyncio.to_thread(eventually, lambda: model.batcher.queue_depth == 1)
            sessions.release.set()
            await asyncio.gather(first, joined)  # found the queue empty, but came while a run ran
            for i in range(alone_after + 2):  # a closed loop of one client: no run is joined any more
                await infer(InferRequest("lenet", {"images": images(1, i)}))

    # runs alone before the share of joined runs is back under the limit
    crowding, alone_after = CROWDING_WEIGHT * (1 - CROWDING_WEIGHT), 0  # after the joined item's run
    while crowding >= CROWDING_LIMIT:
        crowding, alone_after = crowding * (1 - CROWDING_WEIGHT), alone_after + 1
    asyncio.run(scenario())
    narrow = [(1, 1)] * (1 + alone_after)  # the joined item, then the clean runs it takes
    assert sessions.runs == [(2, 1), (1, MAX_BATCH), *narrow, (2, 1), (2, 1)]


@pytest.mark.parametrize(("max_s", "on_the_loop"), [(60.0, True), (0.0, False)])
def test_a_quiet_lone_request_runs_on_the_event_loop_once_its_runs_are_known_short(
    repository, monkeypatch, max_s, on_the_loop
):
    import serving.execution.batcher as batcher
    import serving.execution.loaded_model as loaded_model

    monkeypatch.setattr(loaded_model, "INLINE_MAX_S", max_s)  # what "short" means here
    # this client sends its next request at once, with no network round trip in between: not backlogged
    monkeypatch.setattr(batcher, "INLINE_GAP_S", 0.0)
    sessions = Sessions()

    async def scenario():
        backend = OnnxRuntimeBackend(
            Repository(repository), OrtOptions(lone_request_threads=2), session_factory=sessions
        )
        await backend.start()
        try:
            for i in range(3):
                await backend.infer(InferRequest("lenet", {"images": images(1, i)}))
        finally:
            await backend.stop()
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    # warm-up at load, the first lone request (its run time unknown yet), then two more
    assert sessions.runs == [(2, 1)] * 4
    assert sessions.threads[1] != loop_thread
    assert [t == loop_thread for t in sessions.threads[2:]] == [on_the_loop] * 2


def test_a_merged_batch_counts_as_crowded(repository):
    sessions = Sessions()
    asyncio.run(answers(repository, OrtOptions(lone_request_threads=2), sessions, [3, 1]))
    assert sessions.runs == [(2, 1), (1, 3), (1, 1)]  # after a batch of 3, a lone one runs narrow


@pytest.mark.parametrize(
    ("task", "lone"),
    [("classify", True), (None, True), ("translate_encoder", False), ("translate_decoder", False)],
)
def test_a_translators_encoder_and_decoder_get_no_lone_request_session(tmp_path, task, lone):
    """The decode workers run those graphs on sessions of their own: a lone session there would only
    hold the weights once more (classifiers and plain ONNX models keep theirs)."""
    from types import SimpleNamespace

    from serving.execution import placement

    backend = OnnxRuntimeBackend(Repository(tmp_path), OrtOptions(lone_request_threads=2))
    entry = SimpleNamespace(task=task, max_batch_size=8)
    cpu = placement.Placement(placement.CPU, "cpu")
    assert backend._lone_request_threads(entry, cpu) == (2 if lone else 0)
