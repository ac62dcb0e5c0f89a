"""docs/kiln-json.md, "Versions": a checkpoint exported again as the version it already holds finds it
up to date. Once another version had been written last (a rollback: the old checkpoint exported again,
its kiln.json then describing version 1), exporting the retrained checkpoint again rebuilt its version 2
from scratch, and the old one then rebuilt 1: every run of either rewrote its version (a full export,
and a Triton polling the repository reloading it), since only kiln.json's top level was compared."""

from __future__ import annotations

from pathlib import Path

from export.repository import is_up_to_date, version_dir, write_entry, writing_version
from kiln.versions import EXPORT_VERSION


def _fill(text: str, sha: str, policy: str | None = None):
    def fill(directory: Path) -> dict:
        (version_dir(directory) / "model.onnx").write_text(text, encoding="utf-8")
        (directory / "config.pbtxt").write_text(
            'name: "m"\nversion_policy { latest { num_versions: 1 } }\n', encoding="utf-8"
        )
        export = {"export_version": EXPORT_VERSION, "max_batch_size": 8}
        export |= {"version_policy": policy} if policy else {}
        return {"task": "classify", "source_checkpoint": {"path": "m.pt", "sha256": sha}, "export": export}

    return fill


def _settings(**extra) -> dict:
    return {"export_version": EXPORT_VERSION, "max_batch_size": 8, **extra}


def test_a_version_written_before_the_last_one_is_up_to_date_for_its_own_checkpoint(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    write_entry(repository, "m", _fill("old", "one"))
    with writing_version("2"):
        write_entry(repository, "m", _fill("new", "two"))  # the rollout
    with writing_version("1", "specific:1"):
        entry = write_entry(repository, "m", _fill("old", "one", policy="specific:1"))  # the rollback
    with writing_version("1"):
        assert is_up_to_date(entry, "one", _settings(), "lenet")  # the one kiln.json describes, as before
    with writing_version("2"):
        assert is_up_to_date(entry, "two", _settings(), "lenet")  # was False: rebuilt on every run
        assert is_up_to_date(entry, "two", _settings(version_policy="specific:1"), "lenet")  # the entry's
        assert not is_up_to_date(entry, "two", _settings(version_policy="all"), "lenet")  # another policy
        assert not is_up_to_date(entry, "one", _settings(), "lenet")  # another checkpoint's version
        assert not is_up_to_date(entry, "two", _settings(max_batch_size=16), "lenet")  # other settings
    with writing_version("3"):
        assert not is_up_to_date(entry, "two", _settings(), "lenet")  # no such version
    (entry / "2" / "model.onnx").write_text("edited", encoding="utf-8")
    with writing_version("2"):
        assert not is_up_to_date(entry, "two", _settings(), "lenet")  # its files no longer hash right
