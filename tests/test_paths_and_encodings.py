"""Paths and text encodings that do not depend on where or under which locale Kiln runs: a classifier
records its ``--data-path`` absolute, as the translator does, so ``--resume`` finds the data from any
working directory (a resume state written before, holding the path as given, still resumes from the
directory it ran in); every text file Kiln reads or writes is UTF-8 whatever the locale's encoding
(a guard over the source); and a classifier with non-ASCII class names trains, exports and serves
under ``LC_ALL=C python -X utf8=0``, whose encoding is ASCII."""

from __future__ import annotations

import ast
import json
import mmap
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_training_hangs_and_changed_data import write_class
from training import classify
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data.images import load_splits
from training.resume import load_resume

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "lenet", "--dataset", "folder", "--image-size", "12", "--batch-size", "4"]
TINY += ["--no-progress", "--device", "cpu"]


@pytest.fixture
def places(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(the directory a run ran in, another directory), the data at ``rel/dir`` of the first, and the
    working directory the first."""
    work, other = tmp_path / "work", tmp_path / "other"
    other.mkdir()
    for name in "abc":
        write_class(work / "rel" / "dir", name, 5)
    monkeypatch.chdir(work)
    return work, other


def test_a_classifier_records_a_relative_data_path_absolute_and_resumes_from_another_directory(
    places, monkeypatch
):
    work, other = places
    assert classify.main([*TINY, "--data-path", "rel/dir", "--epochs", "1", "--output-dir", "out"]) == 0
    data = str(work / "rel" / "dir")
    state = load_resume(str(work / "out" / "lenet.pt"))
    assert state["data"]["data_path"] == data and state["train_config"]["data_path"] == data
    monkeypatch.chdir(other)
    # was: "the interrupted run's data at rel/dir is gone", the data where it always was
    assert classify.main(["--resume", str(work / "out" / "lenet.pt"), "--epochs", "2", "--no-progress"]) == 0
    ckpt = load_checkpoint(work / "out" / "lenet.pt")
    assert ckpt["metrics"]["epochs"] == 2 and ckpt["train_config"]["data_path"] == data
    assert ckpt["data"]["data_path"] == data  # export and bench rebuild the split from here
    assert len(load_splits(ckpt["data"])[1]) == ckpt["data"]["n_val"]


def test_a_resume_state_written_with_a_relative_data_path_resumes_from_the_directory_it_ran_in(
    places, monkeypatch, capsys
):
    work, other = places
    assert classify.main([*TINY, "--data-path", "rel/dir", "--epochs", "1", "--output-dir", "out"]) == 0
    path = work / "out" / "lenet.resume.pt"
    state = load_resume(str(path))
    state["data"]["data_path"] = state["train_config"]["data_path"] = "rel/dir"  # as runs recorded it
    save_checkpoint(state, path)
    monkeypatch.chdir(other)  # elsewhere it cannot be found: one line saying how to give its place
    capsys.readouterr()
    assert classify.main(["--resume", str(path), "--epochs", "2", "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(
        f"error: --resume {path}: the interrupted run's data at rel/dir is gone ({other / 'rel' / 'dir'} "
        "does not exist): if it moved, give its new place with --data-path"
    )
    monkeypatch.chdir(work)
    assert classify.main(["--resume", str(path), "--epochs", "2", "--no-progress"]) == 0
    assert load_resume(str(path))["data"]["data_path"] == str(work / "rel" / "dir")  # absolute from then on


# Calls that open, read or write a file: the positional index of their mode, as a function
# (``open(file, mode)``, ``io.open``, ``os.fdopen``; a method's, ``path.open(mode)``, is 0).
FILE_CALLS = {"open": 1, "fdopen": 1, "read_text": None, "write_text": None}
# Modules whose ``.open`` opens no text file (an image, a file descriptor).
NOT_TEXT_OPENERS = {"os", "Image"}
# Kernel files read in the locale's encoding on purpose: the fields Kiln reads of them are ASCII (a
# pid, a size, a state, a CPU count), whatever the locale. /proc/<pid>/maps is no such file: it holds
# the paths of mapped files, in any bytes, and is read as bytes.
KERNEL_FILES = ("/proc", "/sys", "PROC")
KERNEL_READS = {
    ("serving/execution/cpus.py", "v2"): "cgroup v2 cpu.max under /sys/fs/cgroup",
    ("serving/execution/cpus.py", "v1 / 'cpu.cfs_quota_us'"): "cgroup v1 CPU quota",
    ("serving/execution/cpus.py", "v1 / 'cpu.cfs_period_us'"): "cgroup v1 CPU period",
    ("bench/frontend_cost.py", "task / 'comm'"): "a thread's name under /proc/<pid>/task (Kiln names them)",
    ("bench/frontend_cost.py", "task / 'schedstat'"): "a thread's CPU time under /proc/<pid>/task",
    ("bench/frontend_cost.py", "task / 'children'"): "child pids under /proc/<pid>/task",
    ("serving/process_tree.py", "task / 'children'"): "child pids under /proc/<pid>/task",
    ("bench/machine.py", "index / 'type'"): "a CPU cache's kind under /sys/devices/system/cpu",
    ("bench/machine.py", "index / 'level'"): "a CPU cache's level under /sys/devices/system/cpu",
    ("bench/machine.py", "index / 'size'"): "a CPU cache's size under /sys/devices/system/cpu",
}
SOURCES = ("training", "export", "serving", "bench", "kiln", "deploy")


def locale_dependent_calls(path: Path) -> list[tuple[int, str, str]]:
    """(line, the file's expression, the call) of each text-mode open, read or write in ``path`` that
    names no encoding: Python then uses the locale's (ASCII under a C locale)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name not in FILE_CALLS or any(k.arg == "encoding" for k in node.keywords):
            continue
        method = isinstance(func, ast.Attribute)
        receiver = func.value.id if method and isinstance(func.value, ast.Name) else None
        if name == "open" and receiver in NOT_TEXT_OPENERS:
            continue
        function = not method or receiver in ("io", "os")
        target = node.args[0] if function and node.args else func.value if method else None
        if name in ("open", "fdopen"):
            at = FILE_CALLS[name] if function else 0
            mode = next((k.value for k in node.keywords if k.arg == "mode"), None)
            mode = mode or (node.args[at] if len(node.args) > at else None)
            if isinstance(mode, ast.Constant) and "b" in str(mode.value):
                continue
        found.append((node.lineno, ast.unparse(target) if target is not None else "", ast.unparse(node)))
    return found


def test_every_text_file_kiln_reads_or_writes_names_its_encoding():
    unnamed = []
    for source in SOURCES:
        for path in sorted((ROOT / source).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line, target, call in locale_dependent_calls(path):
                kernel = any(mark in target for mark in KERNEL_FILES) and not re.search(r"\bmaps\b", target)
                if not kernel and (rel, target) not in KERNEL_READS:
                    unnamed.append(f"{rel}:{line}: {call}")
    assert not unnamed, "text files read or written in the locale's encoding: " + "; ".join(unnamed)


def test_the_guard_finds_text_calls_without_an_encoding_and_passes_the_others(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "open(p)\nopen(p, 'w')\nopen(p, mode='a')\npath.read_text()\npath.write_text(s)\npath.open()\n"
        "io.open(p)\nos.fdopen(fd, 'w')\n"
        "open(p, 'rb')\nopen(p, encoding='utf-8')\npath.read_text(encoding='utf-8')\npath.open('wb')\n"
        "os.open(p, 0)\nImage.open(p)\nos.fdopen(fd, 'wb')\npath.read_bytes()\n",
        encoding="utf-8",
    )
    assert [line for line, _, _ in locale_dependent_calls(sample)] == list(range(1, 9))


def write_png(folder: bytes, name: str, seed: int) -> None:
    """A grey 12x12 PNG at ``folder/name`` (bytes paths: any locale can write them)."""
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 12), dtype=np.uint8))
    with open(os.path.join(folder, name.encode()), "wb") as file:
        image.save(file, format="PNG")


def test_non_ascii_class_names_train_export_and_serve_under_a_c_locale(tmp_path):
    """Under ``LC_ALL=C python -X utf8=0`` training refused each class folder as "not valid UTF-8"
    (Python names files in ASCII there: ``caf\\udcc3\\udca9``), export failed writing labels.txt
    ("'ascii' codec can't encode character"), the gateway failed to load a config.pbtxt edited in
    UTF-8, and a mapped file named in non-ASCII bytes failed procfs's sweeps."""
    classes = ["café", "naïve", "日本"]
    data = os.fsencode(tmp_path / "data")
    for index, name in enumerate(classes):
        folder = os.path.join(data, name.encode())
        os.makedirs(folder)
        for i in range(5):
            write_png(folder, f"{i}.png", 10 * index + i)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "PYTHONUTF8", "PYTHONIOENC"))}
    env.update(LC_ALL="C", LANG="C", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    script = [sys.executable, "-X", "utf8=0", str(ROOT / "tests" / "c_locale_run.py")]
    done = subprocess.run(
        [*script, str(tmp_path), str(tmp_path / "data")], env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")[-3000:]
    seen = json.loads(done.stdout.decode("ascii").splitlines()[-1])
    assert seen["encoding"].lower() in ("ansi_x3.4-1968", "ascii", "us-ascii"), seen  # the locale's
    assert seen["filesystem"] == "ascii", seen
    assert seen["labels"] == classes  # the class folders' names, not their bytes escaped
    assert seen["labels_txt"] == "café\nnaïve\n日本\n"
    assert seen["parity_data"] == "validation split"  # export read the data it was trained on
    assert sorted(seen["served"]) == sorted(classes)
    assert seen["mapped"] == [os.path.join(str(tmp_path / "mapped"), "modèle.bin")]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="no procfs: its readers are Linux's")
def test_procfs_readers_take_a_mapped_file_named_with_a_carriage_return_whole(tmp_path):
    """/proc/<pid>/maps writes a name's line feed as ``\\012`` and its carriage return as it is: split
    there too, the name's rest read as a line of six fields failed the gateway's start (a ValueError
    from ``forget_gone_processes``, which never fails) and the sweep took the name cut at it."""
    from serving import metrics
    from serving.triton import shm_regions

    path = tmp_path / "m\rb c d e f g"
    path.write_bytes(b"\0" * mmap.PAGESIZE)
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ):
        found = metrics._mapped_files()
        mapped = shm_regions.mapped_files(str(tmp_path))
        assert metrics.forget_gone_processes(tmp_path, own=True) == []
    assert found is not None and (path.stat().st_dev, path.stat().st_ino) in found
    assert mapped == {str(path)}
