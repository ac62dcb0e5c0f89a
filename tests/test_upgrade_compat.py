"""What an upgraded Kiln makes of the entries an older Kiln exported: the files are written here as the
older exports wrote them (kiln.json with its ``export_version``, a python entry's copies of model.py),
small, so no older Kiln is needed at test time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from export.pipeline import stale_entries
from export.repository import EXPORT_VERSION, VERSION
from export.translator_entries import runtime_sources
from training.checkpoint import file_sha256

SHA = "ab" * 32  # the checkpoint's sha256, today as when the older Kiln exported it


def _old_entry(
    repo: Path, name: str, checkpoint: Path, model: str, version: int, files: dict[str, bytes], **meta: Any
) -> Path:
    """An entry as an export at ``version`` left it: its files, and a kiln.json naming them."""
    entry = repo / name
    for rel, data in files.items():
        (entry / rel).parent.mkdir(parents=True, exist_ok=True)
        (entry / rel).write_bytes(data)
    kiln = {
        "kiln_format": 1,
        "name": name,
        "version": VERSION,
        "model": {"name": model, "args": {}},
        "source_checkpoint": {"path": str(checkpoint), "sha256": SHA},
        "export": {"export_version": version, "max_batch_size": 64},
        "artifacts": {rel: file_sha256(entry / rel) for rel in files},
        **meta,
    }
    (entry / "kiln.json").write_text(json.dumps(kiln, indent=2) + "\n")
    return entry


def _current_runtime() -> dict[str, bytes]:
    """A translator python entry's copies of model.py and the beam search modules as export makes them now."""
    return {
        f"{VERSION}/{rel}": path.read_bytes() for rel, path in runtime_sources().items() if path.is_file()
    }


def test_entries_an_older_kiln_exported_from_the_checkpoint_and_not_asked_for_this_run_are_reported_stale(
    tmp_path,
):
    repo, checkpoint = tmp_path / "repo", tmp_path / "checkpoints" / "lenet.pt"
    graph = {f"{VERSION}/model.onnx": b"graph"}
    _old_entry(repo, "lenet", checkpoint, "lenet", 8, graph, precision="fp32")  # rewritten this run
    _old_entry(repo, "lenet_int8", checkpoint, "lenet", 8, graph, precision="int8")  # before version 11
    _old_entry(repo, "lenet_fp16", checkpoint, "lenet", EXPORT_VERSION, graph, precision="fp16")  # current
    _old_entry(repo, "other_int8", tmp_path / "other.pt", "lenet", 8, graph, precision="int8")  # not ours

    stale = stale_entries(repo, checkpoint, SHA, {"lenet", "lenet_trt"})

    assert [(r.entry, r.precision, r.status, r.path) for r in stale] == [
        ("lenet_int8", "int8", "stale", repo / "lenet_int8")
    ]
    assert f"older Kiln (export version 8, now {EXPORT_VERSION})" in stale[0].message
    assert "export its precision again or remove it" in stale[0].message
    assert (repo / "lenet_int8" / "kiln.json").is_file()  # reported, never removed


def test_an_entry_of_a_model_no_export_version_changed_since_is_not_reported(tmp_path):
    repo, checkpoint = tmp_path / "repo", tmp_path / "gru_attention.pt"
    _old_entry(  # version 10 changed translators last: a gru_attention entry of version 10 is current
        repo, "gru_attention_encoder_int8", checkpoint, "gru_attention", 10, {f"{VERSION}/model.onnx": b"g"}
    )

    assert stale_entries(repo, checkpoint, SHA, {"gru_attention", "gru_attention_encoder"}) == []


def test_a_translator_python_entry_holding_an_older_kilns_copies_of_model_py_is_reported_stale(tmp_path):
    repo, checkpoint = tmp_path / "repo", tmp_path / "transformer.pt"
    older = {**_current_runtime(), f"{VERSION}/model.py": b"# model.py as an older Kiln copied it\n"}
    for name, files in (("transformer_int8", older), ("transformer_fp16", _current_runtime())):
        _old_entry(repo, name, checkpoint, "transformer", EXPORT_VERSION, files, platform="python")

    stale = stale_entries(
        repo, checkpoint, SHA, {"transformer", "transformer_encoder", "transformer_decoder"}
    )

    assert [r.entry for r in stale] == ["transformer_int8"]
    assert "other copies of model.py and the beam search modules" in stale[0].message
