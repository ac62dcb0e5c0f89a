"""Two ``python -m serving.triton`` given one ``--workdir``: the second replaced the first's flavour under
its running server and truncated its log (the first's log then held the second's lines, reproduced with
the real server), and two started together failed the later one on "[Errno 17] File exists". A server
now holds its work directory from its start to its stop, and a second is refused in one line naming it,
before it writes anything there."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.triton import server as server_module
from serving.triton.server import TritonError, TritonServer


class _Install:
    binary = Path("/nonexistent/tritonserver")


@pytest.fixture
def no_binary_needed(monkeypatch) -> None:
    """start() runs up to its flavour without a tritonserver binary; the flavour step then stops it."""
    monkeypatch.setattr(server_module, "find_triton", lambda: _Install())


def test_a_second_server_on_a_held_workdir_is_refused_before_writing_there(
    tmp_path: Path, no_binary_needed: None, monkeypatch
) -> None:
    workdir = tmp_path / "work"
    first = TritonServer(tmp_path / "repo", workdir)
    workdir.mkdir()
    first._hold_workdir()  # the first server, started and serving
    (workdir / "tritonserver.log").write_text("the first server's log\n")
    derived = []
    monkeypatch.setattr(server_module, "derive_python_flavour", lambda *a, **k: derived.append(a))
    second = TritonServer(tmp_path / "repo", workdir)
    with pytest.raises(TritonError, match=r"work directory .*work is in use by another tritonserver"):
        second.start()
    assert derived == []  # nothing derived over the first's flavour
    assert (workdir / "tritonserver.log").read_text() == "the first server's log\n"
    first.stop()  # stopped: the work directory is free again
    flavour_failed = RuntimeError("flavour step reached")

    def derive(*_: object, **__: object) -> None:
        raise flavour_failed

    monkeypatch.setattr(server_module, "derive_python_flavour", derive)
    with pytest.raises(RuntimeError) as reached:
        second.start()
    assert reached.value is flavour_failed
    third = TritonServer(tmp_path / "repo", workdir)  # a failed start let the directory go too
    with pytest.raises(RuntimeError):
        third.start()
