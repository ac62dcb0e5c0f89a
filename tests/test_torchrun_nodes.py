"""A torchrun job on several nodes restarts (``--max-restarts``) after a rank died on one of them: every
rank of every node joins one process group in a store of the new attempt's own (training.attempt_store),
whatever restart count each node's agent gave its workers."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
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
WORLD = 2  # rank 0 and one other


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

    def wait(self, keys: list[str], timeout: timedelta = WAIT) -> None:
        self.waiting.set()
        self.store.wait(keys, timeout)


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
    thread = threading.Thread(target=lambda: found.append(find(job, HOST, WORLD)), daemon=True)
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
        assert find(job, HOST, WORLD) == current and not job.waiting.is_set()
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


@pytest.mark.parametrize("first", ["rank", "rank0"])
def test_a_rank_restarted_while_the_last_attempts_rank_0_lives_on_waits_for_the_next_rank_0(first, beacons):
    """torchrun's static rendezvous restarts a node's dead rank at once, while the last attempt's rank 0
    may still be alive, busy outside a collective: the restarted rank took its token, joined that
    attempt's finished group and failed, and its node's agent spent another restart on it (the job
    failed at --max-restarts 1, where the restart count it named the group by once had been right).
    The last attempt's rank 1 found its rank 0 before or after it announced."""
    job = JobStore()
    if first == "rank0":
        last = announce(job)  # the last attempt's rank 0, still alive: its beacon answers
        assert find(job, HOST, WORLD) == last  # that attempt's rank 1, since killed
    else:
        thread, found = find_in_thread(job)
        assert job.waiting.wait(10)
        last = announce(job)
        thread.join(10)
        assert found == [last]
        job.waiting.clear()
    thread, found = find_in_thread(job)  # rank 1 restarted at once
    assert job.waiting.wait(10), found  # it waits for the next rank 0
    shut(beacons[-1])  # the last rank 0 failed in its next collective
    current = announce(job)
    thread.join(10)
    assert found == [current]


def test_a_rank_that_cannot_reach_rank_0s_port_at_master_addr_says_where_it_asked_and_why(monkeypatch):
    """A MASTER_ADDR that reaches only the store's port (a NAT, a service) ended the run at its start in
    "rank 0 ... announced a port on <host> that does not answer: did it stop?", naming neither."""
    with socket.socket() as unreached:
        unreached.bind((HOST, 0))  # a port nothing answers on at this address
        monkeypatch.setattr(attempt_store, "beacon", lambda token: unreached)
        job, errors = JobStore(), []

        def ask() -> None:
            with pytest.raises(dist.DistNetworkError) as raised:
                find(job, HOST, WORLD)
            errors.append(str(raised.value))

        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        assert job.waiting.wait(10)
        announce(job)
        thread.join(10)
        port = unreached.getsockname()[1]
    assert len(errors) == 1 and f"port {port} of MASTER_ADDR {HOST}: it stopped, or" in errors[0], errors
    assert "firewall, NAT or service between the nodes must pass every port" in errors[0]


def test_a_rank_arriving_after_its_unreachable_rank_0_announced_says_so_instead_of_waiting_out_the_store(
    monkeypatch,
):
    """The same network, the rank arriving once its rank 0 had announced: it waited for a next rank 0
    for the whole of the store's timeout (``--dist-timeout``, 30 min by default), then a bare store
    timeout. It waits ``UNANSWERED_WAIT`` and names the address, the port and the way around."""
    with socket.socket() as unreached:
        unreached.bind((HOST, 0))
        monkeypatch.setattr(attempt_store, "beacon", lambda token: unreached)
        monkeypatch.setattr(attempt_store, "UNANSWERED_WAIT", timedelta(milliseconds=200))
        job = JobStore()
        announce(job)
        started = time.monotonic()
        with pytest.raises(dist.DistNetworkError) as raised:
            find(job, HOST, WORLD)
        assert time.monotonic() - started < WAIT.total_seconds() / 2  # not the store's whole timeout
        port = unreached.getsockname()[1]
    assert f"port {port} of MASTER_ADDR {HOST}" in str(raised.value)
    assert "KILN_ATTEMPT_BEACON=0" in str(raised.value)


def test_a_rank_whose_rank_0_does_not_answer_waits_no_longer_than_the_stores_own_timeout(monkeypatch):
    """A --dist-timeout under UNANSWERED_WAIT: the rank waited the longer UNANSWERED_WAIT for a next
    rank 0, past the timeout it was given."""
    with socket.socket() as unreached:
        unreached.bind((HOST, 0))
        monkeypatch.setattr(attempt_store, "beacon", lambda token: unreached)
        monkeypatch.setattr(attempt_store, "UNANSWERED_WAIT", WAIT)  # in place of its 2 min
        job = JobStore()
        job.set_timeout(timedelta(milliseconds=200))  # the store's (--dist-timeout): under UNANSWERED_WAIT
        announce(job)
        started = time.monotonic()
        with pytest.raises(dist.DistNetworkError):
            find(job, HOST, WORLD)
    assert time.monotonic() - started < WAIT.total_seconds() / 2


def test_kiln_attempt_beacon_0_joins_under_torchruns_restart_count_with_no_beacon(beacons):
    job = dist.HashStore()
    env = {"TORCHELASTIC_USE_AGENT_STORE": "True", "MASTER_ADDR": HOST, "KILN_ATTEMPT_BEACON": "0"}
    attempt_store.attempt_store(job, 0, WORLD, {**env, "TORCHELASTIC_RESTART_COUNT": "2"}).set("key", "v")
    assert job.get("kiln/attempt_restart_2/key") == b"v"
    assert not beacons and not job.check([COUNT_KEY])


def test_the_group_of_an_attempt_lives_under_its_rank_0s_token_or_in_a_store_started_for_it(beacons):
    job = dist.HashStore()
    job.set_timeout(WAIT)
    agent = {"TORCHELASTIC_USE_AGENT_STORE": "True", "MASTER_ADDR": HOST}
    store = attempt_store.attempt_store(job, 0, WORLD, agent)
    store.set("key", "value")
    token = job.get(written_key(1)).decode().split()[1]
    assert job.get(f"{attempt_store.group_prefix(token)}/key") == b"value"  # PrefixStore adds the /
    assert attempt_store.attempt_store(job, 1, WORLD, agent).get("key") == b"value"
    own = {"TORCHELASTIC_USE_AGENT_STORE": "False", "MASTER_ADDR": HOST}
    assert attempt_store.attempt_store(job, 1, WORLD, own) is job


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
