"""Review of ``python -m export --version``: what a rollout leaves served when a gate refuses, and what
kiln.json then says (docs/kiln-json.md, "Versions")."""

from __future__ import annotations

import json
from pathlib import Path

from export.parity import ParityReport
from export.repository import write_entry, writing_version
from export.results import Entry, ExportContext, ExportOptions
from serving.execution.version_policy import served_version
from tests.test_hb2_export_versions import _fill


def test_a_version_its_gate_now_refuses_is_taken_out_and_the_others_served(tmp_path: Path) -> None:
    """Version 2 of an int8 twin, written by an earlier run, refused by a stricter gate (or a rerun with
    ``--data-path``): the entry was kept whole, so the refused model went on being served as the newest
    (latest:1), while the summary said "version 2 not written". Only version 2 goes; 1 is served as it
    was, and kiln.json describes it."""
    repository = tmp_path / "repo"
    entry = write_entry(repository, "m_int8", _fill("int8 v1", sha="one"))
    inode = (entry / "1" / "model.onnx").stat().st_ino
    with writing_version("2"):
        write_entry(repository, "m_int8", _fill("int8 v2", sha="two"))
    assert served_version(str(entry)) == str(entry / "2")
    options = ExportOptions(precisions=("fp32", "int8"), version="next")
    ctx = ExportContext(Path("m.pt"), {"task": "classify"}, None, "two", repository, options, "m")
    with writing_version("2"):
        result = ctx.refuse(Entry("m_int8", "int8"), ParityReport(tolerance=1e-4), "top-1 dropped 3 points")
    assert result.status == "rejected" and "version 2 removed; version(s) 1 kept" in result.message
    assert not (entry / "2").exists()
    assert served_version(str(entry)) == str(entry / "1")
    assert (entry / "1" / "model.onnx").read_text(encoding="utf-8") == "int8 v1"
    assert (entry / "1" / "model.onnx").stat().st_ino == inode  # the very file, not rewritten
    meta = json.loads((entry / "kiln.json").read_text(encoding="utf-8"))
    assert meta["version"] == "1" and meta["source_checkpoint"]["sha256"] == "one"
    assert list(meta["versions"]) == ["1"] and not any(a.startswith("2/") for a in meta["artifacts"])


def test_the_old_checkpoint_exported_again_rolls_back_to_its_own_version(tmp_path: Path) -> None:
    """docs/kiln-json.md: "roll back by exporting either checkpoint again with --version-policy
    specific:1". Exported again without --version, the old checkpoint was written as version 2, the one
    written last, which holds the retrained model: refused, pointing at --replace-version (which would
    have written the old model over version 2). It is written as its own version 1."""
    from export.pipeline import version_to_write

    repository = tmp_path / "repo"
    write_entry(repository, "m", _fill("old", sha="one"))
    with writing_version("2"):
        write_entry(repository, "m", _fill("new", sha="two"))  # the rollout: 2 served, 1 kept
    options = ExportOptions(version_policy="specific:1")
    version = version_to_write(repository, ("m",), options, Path("m.pt"), "one")
    assert version == "1"
    assert version_to_write(repository, ("m",), options, Path("m.pt"), "two") == "2"  # the new one: its own
    with writing_version(version, options.version_policy):
        entry = write_entry(repository, "m", _fill("old", sha="one"))
    assert served_version(str(entry)) == str(entry / "1")
    assert (entry / "2" / "model.onnx").read_text(encoding="utf-8") == "new"


def _classifier_fill(text: str, sha: str, mean: float, size: int = 8):
    inner = _fill(text, sha=sha)

    def fill(directory: Path) -> dict:
        meta = inner(directory)
        meta["preprocessing"] = {"input_size": [size, size], "channels": 1, "mean": [mean], "std": [0.3]}
        return meta

    return fill


def test_a_model_retrained_on_new_data_is_a_version_and_its_normalization_recorded(tmp_path: Path) -> None:
    """A classifier retrained on more data has other channel statistics (kiln.json ``preprocessing``
    mean and std), which its own graph applies; no server reads them. Such a rollout, the usual one,
    was refused as "preprocessing differ"; an input size that differs is refused, and named."""
    import pytest

    from export.repository import RepositoryError

    repository = tmp_path / "repo"
    entry = write_entry(repository, "m", _classifier_fill("v1", "one", 0.5))
    with writing_version("2"):
        write_entry(repository, "m", _classifier_fill("v2", "two", 0.52))
    meta = json.loads((entry / "kiln.json").read_text(encoding="utf-8"))
    assert [meta["versions"][v]["preprocessing"]["mean"] for v in ("1", "2")] == [[0.5], [0.52]]
    with (
        writing_version("3"),
        pytest.raises(RepositoryError, match=r"version 3 .* its preprocessing\.input_size differ"),
    ):
        write_entry(repository, "m", _classifier_fill("v3", "three", 0.5, size=16))
