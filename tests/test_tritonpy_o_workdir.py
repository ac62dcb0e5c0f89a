"""A Triton work directory whose path holds a character outside ASCII (``/home/jörg/...``, a
``TMPDIR`` of ``/tmp/données``): Triton's python backend stubs run an isolated Python that reads paths
as ASCII, so every model failed to load (``UnicodeEncodeError``) and ``python -m serving.triton``
printed "tritonserver exited with code 1" over a stub traceback that never named the directory. Found
on the real Triton 2.51 (``--workdir /tmp/s71/O/wörk``); refused now before anything starts, as a path
with whitespace already was. The repository's own path may hold either: it is copied."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.inputs import RUNS_TRITON, triton_dir_problem
from serving.triton.server import TritonError, TritonServer


def test_a_work_directory_outside_ascii_is_refused_at_once_naming_the_characters(tmp_path: Path) -> None:
    workdir = tmp_path / "wörk" / "triton"
    server = TritonServer(tmp_path / "repository", workdir, ready_timeout_s=600)
    with pytest.raises(TritonError, match=r"has characters outside ASCII in its path \(ö\)"):
        server.start()
    assert not (tmp_path / "wörk").exists()


def test_ascii_and_whitespace_paths_read_as_before(tmp_path: Path) -> None:
    from serving.triton.server import workdir_path_problem

    assert workdir_path_problem(tmp_path / "work") == ""
    assert workdir_path_problem(tmp_path / "my work") == "has whitespace in its path"


def test_the_bench_names_a_non_ascii_output_as_what_it_is(tmp_path: Path) -> None:
    """The bench's own check said "has whitespace" for any refused --output."""
    problem = triton_dir_problem(tmp_path / "résultats", set(RUNS_TRITON))
    assert problem is not None and "outside ASCII in its path (é)" in problem
