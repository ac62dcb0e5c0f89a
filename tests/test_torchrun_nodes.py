"""A torchrun job on several nodes restarts (``--max-restarts``) after a rank died on one of them: every
rank of every node joins one process group in a store of the new attempt's own (training.attempt_store),
whatever restart count each node's agent gave its workers."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist

from tests.torchrun import tiny_lenet, two_nodes
from training import attempt_store
from training.attempt_store import COUNT_KEY, announce, find, written_key
from training.checkpoint import load_checkpoint
from training.resume import load_resume
from training.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
WAIT = timedelta(seconds=10)


class JobStore:
    """A job's store (``dist.HashStore``) that sets ``waiting`` when a rank starts to wait in it, and
    whose writer dies (raises ``Died``) after ``writes`` writes, as a process killed there."""

    def __init__(self) -> None:
        self.store = dist.HashStore()
        self.store.set_timeout(WAIT)
        self.waiting = threading.Event()
        self.writes: int | None = None

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def _write(self) -> None:
        if self.writes is not None:
            if self.writes == 0:
                raise Died
            self.writes -= 1

    def set(self, key: str, value: str) -> None:
        self._write()
        self.store.set(key, value)

    def add(self, key: str, amount: int) -> int:
        if amount:
            self._write()
        return self.store.add(key, amount)

    def wait(self, keys: list[str]) -> None:
        self.waiting.set()
        self.store.wait(keys, WAIT)


class Died(Exception):
    """The process writing to a ``JobStore`` was killed."""


@pytest.fixture
def beacons(monkeypatch) -> Iterator[list[socket.socket]]:
    """Every beacon the test's rank 0s start, shut at its end (a process's would be as it ends)."""
    started: list[socket.socket] = []
    start = attempt_store.beacon
    monkeypatch.setattr(attempt_store, "beacon", lambda token: started.append(start(token)) or started[-1])
    yield started
    for server in started:
        shut(server)


def shut(server: socket.socket) -> None:
    """Stop a beacon: its port refuses connections, as once its process ended."""
    if server.fileno() != -1:
        server.shutdown(socket.SHUT_RDWR)
        server.close()


def earlier_rank0(job: JobStore, beacons: list[socket.socket], writes: int = 3) -> None:
    """An earlier attempt's rank 0, killed after ``writes`` writes to the job's store as it announced
    its beacon (3: all of them); its beacon went with it."""
    job.writes = writes
    with contextlib.suppress(Died):
        announce(job)
    job.writes = None
    shut(beacons[-1])


def find_in_thread(job: JobStore) -> tuple[threading.Thread, list[str]]:
    found: list[str] = []
    thread = threading.Thread(target=lambda: found.append(find(job, HOST)), daemon=True)
    thread.start()
    return thread, found


@pytest.mark.parametrize("writes", [0, 1, 2, 3], ids=["before", "after-address", "after-count", "announced"])
@pytest.mark.parametrize("first", ["rank", "rank0"])
def test_every_rank_takes_the_token_this_attempts_rank_0_announced_not_an_earlier_attempts(
    writes, first, beacons
):
    """However far an earlier attempt's rank 0 got before it was killed, and whether a rank of this
    attempt reads the job's store before its rank 0 announced (then it waits) or after: it takes the
    token of this attempt's rank 0."""
    job = JobStore()
    earlier_rank0(job, beacons)
    earlier_rank0(job, beacons, writes)
    if first == "rank0":
        current = announce(job)
        assert find(job, HOST) == current and not job.waiting.is_set()
        return
    thread, found = find_in_thread(job)
    assert job.waiting.wait(10)  # it read the count and no beacon answered: it waits for the next
    current = announce(job)
    thread.join(10)
    assert found == [current]


def test_an_announced_port_another_server_took_since_is_not_taken(beacons, monkeypatch):
    """Another job's beacon answers another token; a server that answers nothing is given up on."""
    job = JobStore()
    earlier_rank0(job, beacons)
    other = attempt_store.beacon("another-jobs-token")
    assert attempt_store.answered(HOST, f"{other.getsockname()[1]} abc".encode()) is None
    silent = socket.create_server((HOST, 0))
    monkeypatch.setattr(attempt_store, "ANSWER_TIMEOUT", timedelta(seconds=0.2))
    with silent:
        assert attempt_store.answered(HOST, f"{silent.getsockname()[1]} abc".encode()) is None
    job.set(written_key(2), f"{other.getsockname()[1]} abc")
    job.add(COUNT_KEY, 1)
    thread, found = find_in_thread(job)
    assert job.waiting.wait(10)
    current = announce(job)
    thread.join(10)
    assert found == [current]


def test_the_group_of_an_attempt_lives_under_its_rank_0s_token_or_in_a_store_started_for_it(beacons):
    job = dist.HashStore()
    job.set_timeout(WAIT)
    agent = {"TORCHELASTIC_USE_AGENT_STORE": "True", "MASTER_ADDR": HOST}
    store = attempt_store.attempt_store(job, 0, agent)
    store.set("key", "value")
    token = job.get(written_key(1)).decode().split()[1]
    assert job.get(f"{attempt_store.group_prefix(token)}/key") == b"value"  # PrefixStore adds the /
    assert attempt_store.attempt_store(job, 1, agent).get("key") == b"value"
    own = {"TORCHELASTIC_USE_AGENT_STORE": "False", "MASTER_ADDR": HOST}
    assert attempt_store.attempt_store(job, 1, own) is job


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_rank_killed_on_one_of_two_nodes_is_restarted_and_the_run_finishes(tmp_path):
    """Rank 1's node counted a restart, rank 0's restarted its healthy worker without counting one: the
    ranks took the store prefixes of different attempts, rank 0 the killed attempt's, and failed to
    connect ("Gloo connectFullMesh failed ... Connection refused") or waited until the job failed."""
    rendezvous = dist.TCPStore(HOST, 0, is_master=True, wait_for_workers=False, multi_tenant=True)
    out = tmp_path / "out"
    env = {"PYTHONPATH": str(ROOT), "KILN_TEST_KILL_AT": "training.classify_epoch:optimizer_step"}
    env["KILN_TEST_KILL_AFTER"] = str(tmp_path)  # there: killed at its first step
    args = ["-m", "tests.torchrun_restart", "training.classify", *tiny_lenet(out, 1), "--dist-timeout", "20"]
    launcher = ("--rdzv-id", "two-nodes", "--max-restarts", "1")
    nodes = two_nodes(
        args, tmp_path / "scratch", env, endpoint=f"{HOST}:{rendezvous.port}", launcher=launcher, timeout_s=60
    )
    errs = "\n".join(
        f"--- node {n}: exit {done.returncode}\n{done.stderr[-3000:]}" for n, done in enumerate(nodes)
    )
    assert [done.returncode for done in nodes] == [0, 0], errs
    assert "exitcode: -9" in errs and "torchrun restart 1 (--max-restarts)" in errs
    assert [r["epoch"] for r in read_metrics(out / "lenet.metrics.jsonl")] == [1]
    assert load_checkpoint(out / "lenet.pt")["metrics"]["epochs"] == 1
    assert load_resume(str(out / "lenet.pt"))["world_size"] == 2
