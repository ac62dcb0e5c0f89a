"""The python flavour's disk: its large files are hard links to the repository's, never written through,
and the bench keeps a flavour only where its Triton run failed (no Triton started here).

Every flavour copied every model file (94 MB of the demo repository per Triton start; 1.2 GB after six
bench runs, each keeping one per Triton beside its log).
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
from contextlib import ExitStack, nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest

from serving.triton import TritonServer, derive_python_flavour
from serving.triton.flavour import LINK_MIN_BYTES

CONFIG = """name: "%s"
platform: "onnxruntime_onnx"
max_batch_size: 4
input { name: "x" data_type: TYPE_FP32 dims: 3 }
output { name: "y" data_type: TYPE_FP32 dims: 3 }
"""
BIG = b"\x07" * LINK_MIN_BYTES  # a stand-in graph: the flavour copies or links it, never parses it


def _entry(root: Path, name: str = "tiny") -> Path:
    """An ONNX entry whose graph and external data are large, and whose labels are small."""
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(CONFIG % name)
    (root / name / "labels.txt").write_text("a\nb\nc\n")
    (root / name / "1" / "model.onnx").write_bytes(BIG)
    (root / name / "1" / "model.onnx.data").write_bytes(BIG + b"weights")
    return root


def test_the_flavour_links_the_large_model_files_and_copies_the_small_ones(tmp_path):
    repository = _entry(tmp_path / "repo")
    derive_python_flavour(repository, tmp_path / "out")
    source, flavour = repository / "tiny", tmp_path / "out" / "tiny"
    for name in ("1/model.onnx", "1/model.onnx.data"):
        assert (flavour / name).samefile(source / name), name
    assert not (flavour / "labels.txt").samefile(source / "labels.txt")
    assert (flavour / "1" / "model.py").stat().st_nlink == 1  # the flavour's own
    assert 'backend: "python"' in (flavour / "config.pbtxt").read_text()


def test_a_read_only_repository_keeps_its_modes_and_its_flavour_is_removable(tmp_path):
    """Root chmods any file: making a linked file writable changed the user's exported file."""
    repository = _entry(tmp_path / "repo")
    for path in [*repository.rglob("*")]:
        path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)
    derive_python_flavour(repository, tmp_path / "out")
    graph = repository / "tiny" / "1" / "model.onnx"
    assert (tmp_path / "out" / "tiny" / "1" / "model.onnx").samefile(graph)
    assert stat.S_IMODE(graph.stat().st_mode) == 0o444
    assert stat.S_IMODE((repository / "tiny" / "1" / "model.onnx.data").stat().st_mode) == 0o444
    derive_python_flavour(repository, tmp_path / "out")  # the next start replaces it
    for path in [*repository.rglob("*")]:  # back to writable, for tmp_path's removal
        path.chmod(stat.S_IMODE(path.stat().st_mode) | 0o200)


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP])
def test_a_refused_link_is_a_copy(tmp_path, monkeypatch, code):
    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", refused)
    repository = _entry(tmp_path / "repo")
    derive_python_flavour(repository, tmp_path / "out")
    copied = tmp_path / "out" / "tiny" / "1" / "model.onnx.data"
    assert copied.stat().st_nlink == 1 and copied.read_bytes() == BIG + b"weights"


def test_a_model_py_in_the_repository_is_never_written_through(tmp_path):
    """The flavour writes its own model.py into each version directory: a large one the entry had is
    linked, and writing over it in place would have replaced the user's file."""
    repository = _entry(tmp_path / "repo")
    theirs = repository / "tiny" / "1" / "model.py"
    theirs.write_bytes(b"# theirs\n" + BIG)
    derive_python_flavour(repository, tmp_path / "out")
    assert theirs.read_bytes() == b"# theirs\n" + BIG
    assert b"onnxruntime" in (tmp_path / "out" / "tiny" / "1" / "model.py").read_bytes()


def test_an_export_replacing_an_entry_leaves_the_running_flavour_as_it_was(tmp_path):
    """Export renames a staged entry in (``export.repository``): the old files live on in the flavour."""
    from export.repository import write_entry

    def fill(content: bytes):
        def write(staging: Path) -> dict:
            _entry(staging.parent, staging.name)  # the whole entry into the staging directory
            (staging / "1" / "model.onnx.data").write_bytes(content)
            return {}

        return write

    repository = tmp_path / "repo"
    write_entry(repository, "tiny", fill(BIG + b"old"))
    derive_python_flavour(repository, tmp_path / "out")
    write_entry(repository, "tiny", fill(BIG + b"new"))
    assert (repository / "tiny" / "1" / "model.onnx.data").read_bytes() == BIG + b"new"
    assert (tmp_path / "out" / "tiny" / "1" / "model.onnx.data").read_bytes() == BIG + b"old"


# A stand-in tritonserver: says it is ready once its SIGTERM handler is set, then exits with ``code`` on it.
STAND_IN = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(%d))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def _served(tmp_path: Path, *, keep: bool, code: int = 0, fail: bool = False, died: bool = False) -> Path:
    """A ``with TritonServer`` block over a stand-in process; the work directory it leaves."""
    workdir = tmp_path / "work"
    server = TritonServer(tmp_path, workdir, keep_repository=keep)

    def start() -> TritonServer:
        (server.repository_path / "tiny").mkdir(parents=True)
        server.log_path.write_text("I tritonserver log\n")
        server.process = subprocess.Popen(
            [sys.executable, "-c", STAND_IN % code], stdout=subprocess.PIPE, start_new_session=True
        )
        assert server.process.stdout.readline() == b"ready\n"
        return server

    server.start = start  # type: ignore[method-assign]
    with pytest.raises(RuntimeError) if fail else nullcontext(), server:
        if died:
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(10)
        if fail:
            raise RuntimeError("the bench's load failed")
    server.process and server.process.stdout.close()
    return workdir


def test_a_clean_run_removes_its_flavour_and_keeps_its_log_where_asked(tmp_path):
    workdir = _served(tmp_path, keep=False)
    assert sorted(p.name for p in workdir.iterdir()) == ["tritonserver.log"]


@pytest.mark.parametrize(
    "how",
    [
        {"keep": True},
        {"keep": False, "fail": True},
        {"keep": False, "code": 1},
        {"keep": False, "died": True},
    ],
)
def test_a_failed_run_or_a_kept_one_leaves_its_flavour(tmp_path, how):
    """The default (``python -m serving.triton --workdir``), a failure in the block, Triton exiting 1
    (requests in flight at its exit timeout) or dead before the stop: the flavour stays beside the log."""
    workdir = _served(tmp_path, **how)
    assert sorted(p.name for p in workdir.iterdir()) == ["model_repository", "tritonserver.log"]


class _Recorded(Exception):
    pass


@pytest.mark.parametrize("keep", ["", "1"])
def test_every_bench_triton_asks_to_drop_its_flavour_unless_told_to_keep_it(tmp_path, monkeypatch, keep):
    import serving.triton as triton
    from bench import servers, translation_gateway, triton_layouts

    asked: list[bool] = []

    class Recording:
        def __init__(self, *args: object, keep_repository: bool = True, **kwargs: object) -> None:
            asked.append(keep_repository)

        def __enter__(self) -> None:
            raise _Recorded

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setenv(triton_layouts.KEEP_REPOSITORY_ENV, keep)
    monkeypatch.setattr(triton, "TritonServer", Recording)
    monkeypatch.setattr(triton, "find_triton", lambda: object())
    layouts = triton_layouts.triton_layouts(2)
    with pytest.raises(_Recorded):
        triton_layouts.start_layouts(ExitStack(), ExitStack(), tmp_path, tmp_path, layouts)
    with pytest.raises(_Recorded):
        translation_gateway.triton_rows(tmp_path, [], (4,), 1, 1, tmp_path)
    run = SimpleNamespace(
        repository=tmp_path, workdir=tmp_path, threads=1, results={"errors": {}}, progress=print
    )
    servers._triton_targets(run)  # type: ignore[arg-type]
    assert asked == [bool(keep)] * 3
