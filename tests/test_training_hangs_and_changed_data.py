"""Training runs that hang or resume on changed data: a torchrun rank that stops answering ends the run
after ``--dist-timeout`` with one line naming the flag (not gloo's traceback after torch's 30 minutes),
its resume state whole; and ``--resume`` on an image folder whose classes or images changed since is
refused naming the change (a model of the old classes trained on the new labels, or a traceback)."""

from __future__ import annotations

import datetime
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from tests.torchrun import torchrun_env
from training import classify, classify_loop, cli, dist_timeout, runtime, translate, translate_loop
from training.data.images import DataSpec, contents_differences, make_splits
from training.resume import load_resume

ROOT = Path(__file__).resolve().parents[1]
GLOO_RECV = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting "
    "3000ms for recv operation to complete"
)
GLOO_SEND = "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:129] Timed out waiting 3000ms for send operation to complete"
STORE_WAIT = "wait timeout after 3000ms, keys: /kiln/attempt_3f9c2a//0//1//cpu//0/1"


@pytest.mark.parametrize(
    "error",
    [RuntimeError(GLOO_RECV), RuntimeError(GLOO_SEND), dist.DistStoreError(STORE_WAIT)],
    ids=["gloo-recv", "gloo-send", "joining-a-group"],
)
def test_a_process_groups_timeout_is_told_apart_from_other_errors(error):
    assert dist_timeout.is_collective_timeout(error)
    assert not dist_timeout.is_collective_timeout(RuntimeError("Connection closed by peer [127.0.0.1]:4242"))
    assert not dist_timeout.is_collective_timeout(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not dist_timeout.is_collective_timeout(dist.DistNetworkError("Connection reset by peer"))
    assert not dist_timeout.is_collective_timeout(ValueError("Timed out waiting 5ms for recv operation"))


def test_a_timed_out_collective_becomes_one_line_naming_the_flag_and_what_is_left():
    with (
        pytest.raises(dist_timeout.CollectiveTimeout) as caught,
        dist_timeout.collective_timeouts(7.5, "cpu", lambda: "the files are kept"),
    ):
        raise RuntimeError(GLOO_RECV)
    line = str(caught.value)
    assert "waited 7.5 s (--dist-timeout)" in line and line.endswith("the files are kept")
    assert "\n" not in line and "unbound_buffer" not in line
    with (
        pytest.raises(dist_timeout.CollectiveTimeout, match=r"waited 1800 s \(--dist-timeout\)"),
        dist_timeout.collective_timeouts(None, "cpu", lambda: ""),  # unset: torch's gloo default
    ):
        raise dist.DistStoreError(STORE_WAIT)
    with (
        pytest.raises(RuntimeError, match="^Connection closed by peer$"),  # any other error as it was
        dist_timeout.collective_timeouts(7.5, "cpu", lambda: ""),
    ):
        raise RuntimeError("Connection closed by peer")


def test_the_default_timeouts_are_torchs_own():
    from torch.distributed import constants

    assert dist_timeout.DEFAULT_DIST_TIMEOUT_S["gloo"] == constants.default_pg_timeout.total_seconds()
    if constants.default_pg_nccl_timeout is not None:  # a CPU build of torch has no NCCL
        assert (
            dist_timeout.DEFAULT_DIST_TIMEOUT_S["nccl"] == constants.default_pg_nccl_timeout.total_seconds()
        )


def test_ddps_own_process_group_gets_the_runs_timeout_not_torchs_default(monkeypatch):
    made = {}
    monkeypatch.setattr(runtime.dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(runtime.dist, "new_group", lambda **kwargs: made.update(kwargs) or "group")
    monkeypatch.setattr(runtime, "DDP", lambda module, **kwargs: (module, kwargs["process_group"]))
    timeout = datetime.timedelta(seconds=9)
    module = torch.nn.Linear(1, 1)
    assert runtime.wrap_ddp(module, runtime.Dist(0, 2, torch.device("cpu"), timeout)) == (module, "group")
    assert made == {"backend": "gloo", "timeout": timeout}


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "1e12"])
@pytest.mark.parametrize("trainer", [classify, translate], ids=["classify", "translate"])
def test_a_dist_timeout_that_is_not_a_sensible_number_of_seconds_is_one_error_line(
    trainer, value, tmp_path, monkeypatch, capsys
):
    for loop in (classify_loop, translate_loop):
        monkeypatch.setattr(loop, "run", lambda *args: pytest.fail("started the run"))
    argv = ["--dist-timeout", value, "--output-dir", str(tmp_path), "--device", "cpu"]
    assert trainer.main(argv) == 2
    assert f"error: --dist-timeout must be a number of seconds in (0, 604800], got {float(value)}" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("rank", ["0", "1"])
@pytest.mark.parametrize("trainer", [classify, translate], ids=["classify", "translate"])
def test_a_trainer_whose_collective_times_out_exits_1_with_one_line_on_every_rank_that_waited(
    trainer, rank, tmp_path, monkeypatch, capsys
):
    """It ended in gloo's RuntimeError traceback on every waiting rank. Each says so in one line, rank 0
    too: the hung rank may be rank 0, whose line would never come."""
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(cli, "reports_errors", lambda env: rank == "0")  # one of two ranks

    def hung_peer(*args):
        raise RuntimeError(GLOO_RECV)

    monkeypatch.setattr(classify_loop, "prepare", hung_peer)
    monkeypatch.setattr(translate_loop, "_train", hung_peer)
    argv = ["--epochs", "1", "--output-dir", str(tmp_path), "--device", "cpu", "--dist-timeout", "42"]
    argv += ["--model", "lenet"] if trainer is classify else []
    assert trainer.main(argv) == 1
    err = capsys.readouterr().err
    lines = [
        line for line in err.splitlines() if line.startswith("error" if rank == "0" else "error (rank 1):")
    ]
    assert len(lines) == 1 and "waited 42 s (--dist-timeout)" in lines[0], err
    assert "Traceback" not in err
    assert "no epoch had finished" in lines[0]


# A launcher for the trainer (``python -m stoprank <trainer module> <args>``): rank 1 writes its pid to
# KILN_TEST_STOPPED_PID and SIGSTOPs itself at its first call of ``optimizer_step`` once the first
# epoch's resume state exists, as a rank stuck in I/O or stopped by a debugger never answers again.
STOP_RANK_1 = """
import functools, os, runpy, signal, sys
from pathlib import Path
from training import classify_epoch

original, after = classify_epoch.optimizer_step, Path(os.environ["KILN_TEST_STOP_AFTER"])


@functools.wraps(original)
def wrapped(*args, **kwargs):
    if os.environ["RANK"] == "1" and after.exists():
        Path(os.environ["KILN_TEST_STOPPED_PID"]).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGSTOP)
    return original(*args, **kwargs)


classify_epoch.optimizer_step = wrapped
trainer, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(trainer, run_name="__main__", alter_sys=True)
"""


def stderr_lines(process: subprocess.Popen) -> queue.Queue:
    """The process's stderr, line by line, as it comes (None at its end)."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def read_until(lines: queue.Queue, seen: list[str], done, deadline: float) -> bool:
    """Collect lines into ``seen`` until one satisfies ``done``, the stream ends or ``deadline`` passes."""
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return False
        if line is None:
            return False
        seen.append(line)
        if done(line):
            return True
    return False


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_stopped_torchrun_rank_ends_the_run_after_dist_timeout_with_one_line_and_the_resume_state_whole(
    tmp_path,
):
    hooks, out, pid_file = tmp_path / "hooks", tmp_path / "out", tmp_path / "stopped.pid"
    hooks.mkdir()
    (hooks / "stoprank.py").write_text(STOP_RANK_1)
    args = ["--model", "lenet", "--epochs", "2", "--limit-train", "64", "--limit-val", "16"]
    args += ["--image-size", "16", "--batch-size", "16", "--no-progress", "--device", "cpu"]
    args += ["--output-dir", str(out), "--dist-timeout", "15"]
    env = {**os.environ, **torchrun_env(tmp_path / "scratch")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(hooks), str(ROOT)]),
        KILN_TEST_STOP_AFTER=str(out / "lenet.resume.pt"),
        KILN_TEST_STOPPED_PID=str(pid_file),
    )
    (tmp_path / "scratch").mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    process = subprocess.Popen(
        [*cmd, "-m", "stoprank", "training.classify", *args], stderr=subprocess.PIPE, text=True, env=env
    )
    seen: list[str] = []
    try:
        lines = stderr_lines(process)
        deadline = time.monotonic() + 90
        assert read_until(lines, seen, lambda line: line.startswith("error:"), deadline), "".join(seen)
        # torchrun now stops the stopped rank: its SIGTERM waits for a SIGCONT (else 30 s, then SIGKILL)
        read_until(lines, seen, lambda line: "SIGTERM" in line, time.monotonic() + 10)
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGCONT)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    err = "".join(seen) + process.stderr.read()
    assert process.returncode != 0
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "waited 15 s (--dist-timeout)" in errors[0] and "holds the run after epoch 1, whole" in errors[0]
    assert "Timed out waiting" not in err and "RuntimeError" not in err, err
    assert load_resume(str(out / "lenet.resume.pt"))["epoch"] == 1 and not (out / "lenet.pt").exists()


# --- --resume on a folder whose classes or images changed -------------------------------------------


def write_class(data: Path, name: str, count: int, start: int = 0) -> None:
    """``count`` grey 12x12 images in ``data/name``, numbered from ``start``."""
    rng = np.random.default_rng(start + len(name))
    (data / name).mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(data / name / f"{i}.png")


def interrupted_run(tmp_path: Path) -> tuple[Path, Path]:
    """A folder of classes a, b, c (5 images each) and the resume state of a lenet run's first epoch
    of two (as if stopped there); returns (data folder, resume state)."""
    data, out = tmp_path / "data", tmp_path / "out"
    for name in "abc":
        write_class(data, name, 5)
    argv = ["--model", "lenet", "--dataset", "folder", "--data-path", str(data), "--image-size", "12"]
    argv += [
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--no-progress",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
    ]
    assert classify.main(argv) == 0
    return data, out / "lenet.resume.pt"


CHANGES = {
    "a class added": (lambda data: write_class(data, "0", 5), "1 class(es) added (0)"),
    "a class removed": (lambda data: shutil.rmtree(data / "b"), "1 class(es) gone (b)"),
    "a class renamed": (
        lambda data: (data / "c").rename(data / "cat"),
        "1 class(es) added (cat); 1 class(es) gone (c)",
    ),
    "images added": (
        lambda data: write_class(data, "a", 3, start=5),
        "images per class a: 8 (the interrupted run's: 5)",
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_resume_on_a_folder_whose_classes_or_images_changed_is_refused_naming_the_change(
    change, tmp_path, capsys
):
    """A class added put labels past the old head ("IndexError: Target 3 is out of bounds"); one removed
    or renamed trained the old head on labels that meant other classes, and saved it with the new
    names; images added drew another split, validating on images the run had trained on."""
    data, resume = interrupted_run(tmp_path)
    mutate, named = CHANGES[change]
    mutate(data)
    capsys.readouterr()
    assert classify.main(["--resume", str(resume), "--epochs", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --resume {resume}: the data at {data} changed since the interrupted run: ")
    assert named in err and "(3 classes)" in err and "Traceback" not in err
    assert load_resume(str(resume))["epoch"] == 1


def test_resume_on_the_same_folder_trains_on_and_records_what_it_read(tmp_path):
    data, resume = interrupted_run(tmp_path)
    assert load_resume(str(resume))["contents"] == {"classes": ["a", "b", "c"], "class_sizes": [5, 5, 5]}
    assert classify.main(["--resume", str(resume), "--epochs", "2", "--no-progress"]) == 0
    assert load_resume(str(resume))["epoch"] == 2


def test_a_resume_state_written_before_it_recorded_its_data_still_resumes(tmp_path):
    data, resume = interrupted_run(tmp_path)
    state = torch.load(resume, weights_only=True)
    del state["contents"]
    torch.save(state, resume)
    write_class(data, "a", 3, start=5)  # nothing to compare it with: the flags alone decide, as before
    assert classify.main(["--resume", str(resume), "--epochs", "2", "--no-progress"]) == 0


def test_the_contents_of_a_split_are_those_of_the_whole_dataset_as_read(tmp_path):
    for name, count in (("a", 6), ("b", 4)):
        write_class(tmp_path, name, count)
    train, val = make_splits(DataSpec("folder", str(tmp_path), image_size=12, limit_train=3, limit_val=1))
    whole = {"classes": ["a", "b"], "class_sizes": [6, 4]}
    assert train.contents() == val.contents() == whole
    assert contents_differences(whole, {"classes": ["b", "a"], "class_sizes": [4, 6]}) == [
        "its classes in another order"
    ]
    assert contents_differences(whole, whole) == []
