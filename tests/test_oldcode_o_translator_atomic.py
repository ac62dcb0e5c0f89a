"""A translator's entries are swapped in together: an export that fails while writing them (a full disk
at the decoder's graph) leaves the translator exported before it whole and served, and no staging
directory behind (export/repository.py ``written_together``)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

import export.translator_entries as translator_entries
from export.pipeline import export_checkpoint
from export.repository import write_entry, written_together
from tests.test_export_translate import SENTENCES, _translator_checkpoint
from tests.test_translate_serving import exported_translators

NAMES = ("gru_attention", "gru_attention_decoder", "gru_attention_encoder")


def _sources(repo: Path) -> dict[str, str]:
    return {
        name: json.loads((repo / name / "kiln.json").read_text())["source_checkpoint"]["sha256"]
        for name in NAMES
    }


def _hidden_leftovers(repo: Path) -> list[str]:
    return sorted(p.name for p in (*repo.parent.iterdir(), *repo.iterdir()) if p.name.startswith("."))


def test_a_translator_export_failing_at_its_decoder_leaves_the_earlier_entries_untouched(
    exported_translator_models, tmp_path_factory, tmp_path, monkeypatch
) -> None:
    # The translator exported before: the session's gru_attention export (conftest), copied.
    repo = exported_translators(exported_translator_models, tmp_path_factory, "atomic", ("gru_attention",))
    before = _sources(repo)
    assert len(set(before.values())) == 1
    retrained = _translator_checkpoint("gru_attention", tmp_path, max_positions=24)  # other weights
    real = translator_entries._write_graph

    def disk_full_at_the_decoder(ctx, spec, *args, **kwargs):
        if spec.name.endswith("_decoder"):
            raise OSError(errno.ENOSPC, "No space left on device", str(ctx.repository))
        return real(ctx, spec, *args, **kwargs)

    monkeypatch.setattr(translator_entries, "_write_graph", disk_full_at_the_decoder)
    with pytest.raises(OSError, match="No space left"):
        export_checkpoint(
            retrained, repo, validation=SENTENCES, tensorrt="off", beam_sentences=2, max_batch_size=4
        )
    assert _sources(repo) == before  # not a new encoder beside the old decoder
    assert sorted(p.name for p in repo.iterdir()) == sorted(NAMES)
    assert _hidden_leftovers(repo) == []


def _fill(text: str):
    def fill(tmp: Path) -> dict:
        (tmp / "1").mkdir()
        (tmp / "1" / "model.txt").write_text(text)
        return {"task": "translate_encoder"}

    return fill


def _failing(tmp: Path) -> dict:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_entries_written_together_are_all_kept_as_they_were_when_one_fails(tmp_path) -> None:
    repo = tmp_path / "repo"
    write_entry(repo, "a", _fill("old a"))
    write_entry(repo, "b", _fill("old b"))
    with pytest.raises(OSError), written_together(repo):
        write_entry(repo, "a", _fill("new a"))
        write_entry(repo, "b", _failing)
    assert (repo / "a" / "1" / "model.txt").read_text() == "old a"
    assert (repo / "b" / "1" / "model.txt").read_text() == "old b"
    assert _hidden_leftovers(repo) == []
    with written_together(repo):
        write_entry(repo, "a", _fill("new a"))
        write_entry(repo, "b", _fill("new b"))
        assert (repo / "a" / "1" / "model.txt").read_text() == "old a"  # swapped in at the end
    assert [(repo / n / "1" / "model.txt").read_text() for n in "ab"] == ["new a", "new b"]
    assert _hidden_leftovers(repo) == []
