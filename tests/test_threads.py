"""The gateway's threads carry their names to the OS (``top -H``, ``ps -L``, ``/proc/<pid>/task``)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from serving.threads import NAME_BYTES, name_os_thread

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc/<pid>/task/<tid>/comm is Linux's")


def _os_name(thread: threading.Thread) -> str:
    return Path(f"/proc/self/task/{thread.native_id}/comm").read_text().strip()


def test_a_thread_takes_its_python_name_or_the_one_given_cut_to_whole_characters_linux_keeps():
    seen: dict[str, object] = {}
    named = threading.Event()
    done = threading.Event()

    def body(name: str | None) -> None:
        seen["ok"] = name_os_thread(name)
        seen["os"] = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()
        named.set()
        done.wait(timeout=30)

    for given, python_name, want in (
        (None, "kiln-decode-transformer", "kiln-decode-tra"),
        ("kiln-x", "ignored", "kiln-x"),
        ("é" * 10, "t", "é" * 7),  # 2 bytes each: whole characters within the 15 bytes
    ):
        named.clear(), done.clear()
        thread = threading.Thread(target=body, args=(given,), name=python_name)
        thread.start()
        assert named.wait(timeout=30)
        assert seen == {"ok": True, "os": want} and _os_name(thread) == want  # read from outside too
        done.set()
        thread.join(timeout=30)
    assert len("kiln-decode-tra") == NAME_BYTES


def test_the_batchers_execution_threads_name_themselves():
    from serving.execution.batcher import BatchPolicy, DynamicBatcher

    async def scenario() -> tuple[list[str], list[str]]:
        batcher = DynamicBatcher(
            "resnet18", lambda instance, inputs: {"y": inputs["x"]}, BatchPolicy(max_batch_size=4)
        )
        batcher.start()
        try:  # an answered request: its instance thread has run past its first statement
            await batcher.submit({"x": np.zeros((1, 1), np.float32)})
            return [_os_name(thread) for thread in batcher._threads], batcher.thread_names
        finally:
            await batcher.stop(grace_s=5)

    seen, names = asyncio.run(scenario())
    assert seen == names and len(seen) == 1, (seen, names)
    serial, _, model = seen[0].removeprefix("kbat").partition(".0-")  # kbat<n>.<instance>-<model>
    assert serial.isdigit() and model and "resnet18".startswith(model), seen


_POLICY_PROBE = """
import os, sys, threading
from serving.threads import set_cpu_policy
names = {os.SCHED_BATCH: "batch", os.SCHED_OTHER: "normal"}
before = names.get(os.sched_getscheduler(0))
go, seen = threading.Event(), {}
def read(key):
    go.wait(30)
    seen[key] = names.get(os.sched_getscheduler(0))
earlier = threading.Thread(target=read, args=("earlier",))  # running before the policy is set
earlier.start()
result = set_cpu_policy(sys.argv[1])
later = threading.Thread(target=read, args=("later",))
later.start()
go.set(); earlier.join(); later.join()
print(before, result, names.get(os.sched_getscheduler(0)), seen["earlier"], seen["later"], os.nice(0))
"""


@pytest.mark.parametrize("policy", ["batch", "normal"])
def test_the_cpu_policy_holds_for_every_thread_running_and_started_after(policy):
    """In a process of its own: the policy must not reach this test process's threads."""
    import subprocess

    nice = os.nice(0)
    done = subprocess.run(
        [sys.executable, "-c", _POLICY_PROBE, policy], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["normal", policy, policy, policy, policy, str(nice)]  # nice unchanged


@pytest.mark.parametrize("policy", ["batch", "normal", "auto"])
def test_a_gateway_runs_every_thread_under_its_cpu_policy(tmp_path, policy):
    """``python -m serving`` sets the policy before its first thread: the event loop, model loading,
    batch and ONNX Runtime threads of a running gateway all read it back (``auto``: the system's
    ``SCHED_OTHER`` while no translation decodes; this repository has none)."""
    import socket

    from kiln.processes import running
    from tests.repo_fixtures import build_classifier_repository

    repository = build_classifier_repository(tmp_path / "repo")
    held = []
    for _ in range(2):  # held (SO_REUSEPORT, not listening) while the gateway binds them too
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
    http, grpc = (sock.getsockname()[1] for sock in held)
    cmd = [sys.executable, "-m", "serving", "--model-repository", str(repository), "--host", "127.0.0.1"]
    cmd += ["--http-port", str(http), "--grpc-port", str(grpc), "--reuse-port", "--cpu-policy", policy]
    wanted = os.SCHED_BATCH if policy == "batch" else os.SCHED_OTHER  # auto: idle, so the system's
    try:
        with running(
            cmd, f"http://127.0.0.1:{http}/v2/health/ready", log_path=tmp_path / "gateway.log"
        ) as gw:
            seen = {}
            for task in Path(f"/proc/{gw.pid}/task").iterdir():
                try:
                    seen[(task / "comm").read_text().strip() + "/" + task.name] = os.sched_getscheduler(
                        int(task.name)
                    )
                except (ProcessLookupError, FileNotFoundError):  # a thread that ended meanwhile
                    continue
    finally:
        for sock in held:
            sock.close()
    assert len(seen) > 2 and set(seen.values()) == {wanted}, seen
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # this test process was never touched


def test_an_unknown_cpu_policy_is_refused():
    from serving.threads import set_cpu_policy

    with pytest.raises(ValueError, match="expected 'batch' or 'normal'"):
        set_cpu_policy("fifo")  # type: ignore[arg-type]


def test_the_busy_loop_policy_holds_batch_while_any_decode_thread_is_busy():
    """On a thread of its own (never this test's): SCHED_BATCH from the first busy holder to the last
    idle one, SCHED_OTHER again after; one policy per thread id."""
    from serving.threads import busy_loop_policy

    started, parked, tid = threading.Event(), threading.Event(), []

    def park() -> None:
        tid.append(threading.get_native_id())
        started.set()
        parked.wait(timeout=30)

    thread = threading.Thread(target=park)
    thread.start()
    try:
        assert started.wait(timeout=30)
        policy = busy_loop_policy(tid[0])
        assert busy_loop_policy(tid[0]) is policy and policy.available
        assert os.sched_getscheduler(tid[0]) == os.SCHED_OTHER
        policy.busy()  # first decode thread starts stepping
        policy.busy()  # a second one
        assert os.sched_getscheduler(tid[0]) == os.SCHED_BATCH
        policy.idle()  # one still busy
        assert os.sched_getscheduler(tid[0]) == os.SCHED_BATCH
        policy.idle()
        assert os.sched_getscheduler(tid[0]) == os.SCHED_OTHER
    finally:
        parked.set()
        thread.join(timeout=30)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # this thread untouched
