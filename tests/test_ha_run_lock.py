"""Two training runs under one --output-dir and --name at once: the second is refused in one line naming
the first (it used to train to the end beside it, exit 0, their metrics interleaved and each replacing
the other's resume state); a lock a killed run left behind refuses nothing, and a refused run leaves
no lock file or folder of its own behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from training import classify, classify_loop, translate
from training.run_lock import lock_path, run_lock

LINE = "another training run is writing there"


def _classify(out: Path, name: str, data: Path) -> int:
    # a folder that is not there: refused as the run reads its data, after the lock, without training
    return classify.main(
        [
            "--model",
            "lenet",
            "--dataset",
            "folder",
            "--data-path",
            str(data),
            "--output-dir",
            str(out),
            "--name",
            name,
        ]
    )


def _translate(out: Path, name: str, data: Path) -> int:
    return translate.main(
        [
            "--corpus",
            "tsv",
            "--data-path",
            str(data),
            "--output-dir",
            str(out),
            "--name",
            name,
            "--no-progress",
        ]
    )


@pytest.mark.parametrize("trainer", [_classify, _translate], ids=["classify", "translate"])
def test_a_second_run_under_a_name_being_written_is_refused_naming_the_first(
    trainer, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "ckpt"
    with run_lock(out, "net", writer=True):  # the first run, training
        code = trainer(out, "net", tmp_path / "missing")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert LINE in err and f"--output-dir {out} --name net" in err and f"pid {os.getpid()} on " in err
    assert "another --name or --output-dir" in err
    assert not lock_path(out, "net").exists()  # the first let go: nothing of the lock is left
    # another name in the same folder is not the first run's
    with run_lock(out, "net", writer=True):
        assert trainer(out, "other", tmp_path / "missing") == 2
    assert LINE not in capsys.readouterr().err


def test_a_lock_file_a_killed_run_left_refuses_nothing_and_a_refused_run_leaves_no_folder(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ckpt"
    out.mkdir()
    stale = lock_path(out, "net")
    stale.write_text("pid 1 on gone since 2026-01-01 00:00:00\n")  # no process holds its flock
    seen: list[bool] = []
    real = classify_loop.prepare

    def prepare(config, d):  # inside the run: its lock is held, its file fresh
        seen.append(lock_path(out, "net").read_text().startswith(f"pid {os.getpid()} on "))
        return real(config, d)

    monkeypatch.setattr(classify_loop, "prepare", prepare)
    assert _classify(out, "net", tmp_path / "missing") == 2
    err = capsys.readouterr().err
    assert LINE not in err and "data path does not exist" in err
    assert seen == [True] and not stale.exists()
    # a run refused under folders it would have made leaves none of them
    assert _translate(tmp_path / "new" / "dir", "sub/net", tmp_path / "missing.tsv") == 2
    assert "no such corpus file" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
