"""The suite's shared session fixtures are built once for all of a run's xdist workers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.session_cache import built_once


def test_a_caller_arriving_while_the_first_builds_waits_and_reads_its_value_back(tmp_path: Path) -> None:
    started, release = threading.Event(), threading.Event()
    builds: list[Path] = []
    results: dict[str, object] = {}

    def slow_build(directory: Path) -> dict[str, str]:
        builds.append(directory)
        (directory / "repo").mkdir()
        started.set()
        assert release.wait(30)
        return {"repo": str(directory / "repo")}

    def call(key: str) -> None:
        results[key] = built_once(tmp_path, "exports", slow_build)

    first = threading.Thread(target=call, args=("first",))
    first.start()
    assert started.wait(30)
    second = threading.Thread(target=call, args=("second",))  # its lock is taken: it waits for the build
    second.start()
    release.set()
    first.join(30)
    second.join(30)

    assert len(builds) == 1 and builds[0].parent == tmp_path and builds[0].name.startswith("exports-")
    assert results["first"] == results["second"] == {"repo": str(builds[0] / "repo")}


def test_a_build_that_raised_is_built_again_in_a_directory_of_its_own(tmp_path: Path) -> None:
    directories: list[Path] = []

    def failing(directory: Path) -> None:
        directories.append(directory)
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError, match="export failed"):
        built_once(tmp_path, "exports", failing)
    assert built_once(tmp_path, "exports", lambda directory: directory.name) != directories[0].name
    assert built_once(tmp_path, "exports", failing) != directories[0].name  # recorded now: not built again
    assert len(directories) == 1
