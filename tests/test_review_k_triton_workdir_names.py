"""The launcher's sweep of killed launchers' work directories (``serving.triton.__main__.sweep_workdirs``)
removes only names its own launches make: a ``--workdir /tmp/kiln-triton-8000`` the user named, or an older
launcher's ``mkdtemp`` name whose random tail happened to be all digits, read as a dead pid's and was
removed, live or kept for reading (reproduced)."""

from __future__ import annotations

from pathlib import Path

from serving import process_tree
from serving.triton.__main__ import sweep_workdirs


def test_a_user_named_or_older_work_directory_is_never_swept(tmp_path: Path) -> None:
    named = [tmp_path / "kiln-triton-8000", tmp_path / "kiln-triton-12345678"]
    for path in named:
        path.mkdir()
        (path / "tritonserver.log").write_text("log\n")
    dead = process_tree.make_held_dir("kiln-triton-", tmp_path)
    process_tree.release(dead)  # as the kernel does once a launcher is killed
    assert sweep_workdirs(tmp_path) == [dead]
    assert all((path / "tritonserver.log").is_file() for path in named)
