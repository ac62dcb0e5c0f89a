"""Repository entries as files on disk: their modes, and what a killed export leaves behind."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from export import repository
from export.repository import write_entry
from training.checkpoint import file_sha256


def _fill(tmp: Path) -> dict[str, Any]:
    (repository.version_dir(tmp) / "model.onnx").write_bytes(b"graph")
    (tmp / "config.pbtxt").write_text('name: "m"\n')
    return {"task": "classify"}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_written_entry_directory_has_the_mode_a_plain_mkdir_gives_it(tmp_path):
    entry = write_entry(tmp_path / "repo", "m", _fill)
    expected = 0o777 & ~_umask()
    assert stat.S_IMODE(entry.stat().st_mode) == expected
    assert stat.S_IMODE((entry / "1").stat().st_mode) == expected
    for path in entry.rglob("*"):  # readable by whoever can read the repository
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask(), path


def test_a_rewritten_entry_keeps_that_mode(tmp_path):
    write_entry(tmp_path / "repo", "m", _fill)
    entry = write_entry(tmp_path / "repo", "m", _fill)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o777 & ~_umask()
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["m"]


def test_writing_an_entry_sweeps_what_a_killed_export_of_it_left_behind(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    host, dead = repository._HOST, _dead_pid()
    killed = repo / f".m.tmp-{host}-{dead}-0badf00d"
    swapped = repo / f".m.old-{host}-{dead}-0badf00d"
    legacy = repo / ".m.tmp-abc_123x"  # an older Kiln's mkdtemp name: swept once a day old
    for leftover in (killed, swapped, legacy):
        (leftover / "1").mkdir(parents=True)
    os.utime(legacy, (0, 0))
    live = repo / f".m.tmp-{host}-{os.getppid()}-0badf00d"  # a running export's: kept
    fresh = repo / ".m.tmp-zzz_9999"  # no owner to check, and recent: kept
    other = repo / f".other.tmp-{host}-{dead}-0badf00d"  # another entry's: not this write's business
    for kept in (live, fresh, other):
        kept.mkdir()
    write_entry(repo, "m", _fill)
    assert sorted(p.name for p in repo.iterdir()) == sorted(["m", live.name, fresh.name, other.name])


def test_an_entry_swapped_out_by_an_export_killed_between_its_renames_is_put_back(tmp_path):
    repo = tmp_path / "repo"
    write_entry(repo, "m", _fill)
    swapped = repo / f".m.old-{repository._HOST}-{_dead_pid()}-0badf00d"
    os.replace(repo / "m", swapped)
    assert repository.sweep_leftovers(repo, "m") == [swapped]
    assert json.loads((repo / "m" / "kiln.json").read_text())["name"] == "m"
    assert not swapped.exists()


def test_entries_an_earlier_run_wrote_from_other_weights_of_the_checkpoint_are_reported_stale(tmp_path):
    from export.pipeline import export_checkpoint
    from tests.classifier_exports import tiny_images, write_checkpoint

    ckpt, repo = write_checkpoint(tmp_path, "lenet"), tmp_path / "repo"

    def earlier(path: Path, sha256: str) -> Callable[[Path], dict[str, Any]]:
        def fill(tmp: Path) -> dict[str, Any]:
            return {
                **_fill(tmp),
                "precision": "int8",
                "source_checkpoint": {"path": str(path), "sha256": sha256},
            }

        return fill

    write_entry(repo, "lenet_int8", earlier(ckpt, "0" * 64))  # an earlier run's, other weights
    write_entry(repo, "lenet_fp16", earlier(ckpt, file_sha256(ckpt)))  # same weights: current
    write_entry(repo, "other_int8", earlier(tmp_path / "other.pt", "0" * 64))  # another checkpoint's
    results = export_checkpoint(ckpt, repo, validation=tiny_images(), tensorrt="off")
    stale = [r for r in results if r.status == "stale"]
    assert [(r.entry, r.precision, r.path) for r in stale] == [("lenet_int8", "int8", repo / "lenet_int8")]
    assert "not requested this run, still served" in stale[0].message
    assert (repo / "lenet_int8").is_dir()  # reported, never removed


def test_an_entry_is_staged_outside_the_repository_since_triton_loads_hidden_directories_too(tmp_path):
    repo, seen = tmp_path / "repo", {}
    write_entry(repo, "m", _fill)

    def watching(tmp: Path) -> dict[str, Any]:
        seen["staging"] = tmp
        seen["repository"] = sorted(p.name for p in repo.iterdir() if p.is_dir())
        return _fill(tmp)

    write_entry(repo, "m", watching)
    assert seen["repository"] == ["m"]  # what a polling Triton lists meanwhile: the served entry alone
    assert seen["staging"].parent == tmp_path / f".repo{repository.STAGING_SUFFIX}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # the empty staging area is tidied
    assert json.loads((repo / "m" / "kiln.json").read_text())["name"] == "m"


def test_a_killed_exports_leftovers_in_the_staging_area_are_swept_and_its_entry_put_back(tmp_path):
    repo = tmp_path / "repo"
    write_entry(repo, "m", _fill)
    area, dead = tmp_path / f".repo{repository.STAGING_SUFFIX}", _dead_pid()
    killed = area / f".m.tmp-{repository._HOST}-{dead}-0badf00d"
    (killed / "1").mkdir(parents=True)
    swapped = area / f".m.old-{repository._HOST}-{dead}-0badf00d"
    os.replace(repo / "m", swapped)
    assert sorted(repository.sweep_leftovers(repo, "m")) == sorted([killed, swapped])
    assert json.loads((repo / "m" / "kiln.json").read_text())["name"] == "m"
    assert sorted(area.iterdir()) == []


def test_a_repository_no_rename_from_beside_it_reaches_is_staged_inside_with_a_warning(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(repository, "_reaches", lambda area, repo: False)  # a mount point's root
    repo, seen = tmp_path / "repo", {}

    def watching(tmp: Path) -> dict[str, Any]:
        seen["staging"] = tmp
        return _fill(tmp)

    with caplog.at_level("WARNING", logger="export.repository"):
        write_entry(repo, "m", watching)
    assert seen["staging"].parent == repo.resolve() and seen["staging"].name.startswith(".m.tmp-")
    assert "a Triton polling the repository may log a failed load" in caplog.text
    assert sorted(p.name for p in repo.iterdir()) == ["m"]


def test_probing_a_repository_leaves_no_directory_in_it_for_triton_to_load(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    made: list[Path] = []
    mkdir = Path.mkdir

    def recording(self: Path, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", recording)
    repository.check_repository(repo)
    write_entry(repo, "m", _fill)
    inside = [p for p in made if p.resolve().parent == repo.resolve()]
    assert [p.name for p in inside] == []  # the entry arrives by rename, never made in place


def test_an_area_another_export_tidied_away_during_the_probe_is_made_again(tmp_path, monkeypatch):
    repo, area, touch = tmp_path / "repo", tmp_path / f".repo{repository.STAGING_SUFFIX}", Path.touch
    raced: list[Path] = []

    def racing(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.parent == area and not raced:
            raced.append(self)
            area.rmdir()  # the other export's _tidy, between this one's mkdir and its probe
        touch(self, *args, **kwargs)

    monkeypatch.setattr(Path, "touch", racing)
    repo.mkdir()
    assert repository.staging_area(repo) == area.resolve() and raced


def _fill_saying(text: str) -> Callable[[Path], dict[str, Any]]:
    """A fill whose config.pbtxt says ``text``, to tell an old entry from its replacement."""

    def fill(tmp: Path) -> dict[str, Any]:
        meta = _fill(tmp)
        (tmp / "config.pbtxt").write_text(text)
        return meta

    return fill


def _config_seen(entry: Path) -> str | None:
    try:
        return (entry / "config.pbtxt").read_text()
    except OSError:
        return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2(RENAME_EXCHANGE) is Linux's")
def test_a_replaced_entry_is_exchanged_so_a_polling_server_never_finds_it_missing(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    entry = write_entry(repo, "m", _fill_saying("old"))
    seen: list[tuple[str, str | None]] = []  # (call, the entry's config.pbtxt then), before and after
    removed: list[tuple[str | None, str | None]] = []  # (the removed tree's config, the entry's)
    replace, rmtree = os.replace, shutil.rmtree

    def watched_replace(src: Any, dst: Any) -> None:
        seen.append(("replace", _config_seen(entry)))
        replace(src, dst)
        seen.append(("replaced", _config_seen(entry)))

    def watched_rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).exists():
            removed.append((_config_seen(Path(path)), _config_seen(entry)))
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(os, "replace", watched_replace)
    monkeypatch.setattr(shutil, "rmtree", watched_rmtree)
    write_entry(repo, "m", _fill_saying("new"))
    assert [config for _, config in seen if config is None] == []  # never absent between two renames
    assert removed == [("old", "new")]  # the old tree goes once the new one is in place
    assert _config_seen(entry) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # staging area tidied


def _einval(*args: Any) -> int:
    """libc's renameat2 on a filesystem that cannot exchange: -1 with errno EINVAL."""
    ctypes.set_errno(errno.EINVAL)
    return -1


@pytest.mark.parametrize(
    ("renameat2", "why"),
    [(None, "renameat2 unavailable"), (_einval, "Invalid argument")],
    ids=["no renameat2 in libc", "a filesystem refusing the exchange"],
)
def test_where_no_exchange_is_possible_an_entry_is_replaced_by_two_renames_with_a_debug_note(
    tmp_path, monkeypatch, caplog, renameat2, why
):
    monkeypatch.setattr(repository, "_renameat2", lambda: renameat2)
    repo = tmp_path / "repo"
    entry = write_entry(repo, "m", _fill_saying("old"))
    with caplog.at_level("DEBUG", logger="export.repository"):
        write_entry(repo, "m", _fill_saying("new"))
    assert _config_seen(entry) == "new"
    assert why in caplog.text and "two renames" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]
    assert sorted(p.name for p in repo.iterdir()) == ["m"]
