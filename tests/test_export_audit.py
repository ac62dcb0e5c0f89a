"""Export audit: a diverged checkpoint is one line naming it, and the beam settings a translator's
entries depend on make them stale when they change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from export.freeze import FreezeError, freeze
from export.parity import ParityReport
from export.pipeline import export_checkpoint
from export.results import Entry, ExportContext, ExportOptions
from tests.repo_fixtures import _tiny_checkpoint
from training.checkpoint import save_checkpoint


def _diverged_checkpoint(tmp_path: Path) -> Path:
    """A tiny LeNet checkpoint whose first convolution's weights are NaN, as a diverged run saves them."""
    path = _tiny_checkpoint(tmp_path / "ckpts" / "lenet.pt", "lenet", seed=0)
    ckpt = torch.load(path, weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.endswith("weight"))
    ckpt["state_dict"][key] = torch.full_like(ckpt["state_dict"][key], float("nan"))
    return save_checkpoint(ckpt, path)


def test_freezing_a_model_with_nan_weights_names_them_instead_of_blaming_freezing():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[3].weight[0, 0] = float("nan")
    with pytest.raises(FreezeError) as caught:
        freeze(model, (torch.randn(2, 1, 4, 4),))
    message = str(caught.value)
    assert "NaN or inf before freezing" in message and "'3.weight'" in message
    assert "freezing changed the outputs" not in message


def test_the_cli_reports_a_diverged_checkpoint_in_one_line_naming_it_and_writes_nothing(tmp_path, capsys):
    from export.__main__ import main

    ckpt = _diverged_checkpoint(tmp_path)
    assert main([str(ckpt), "--repository", str(tmp_path / "repo"), "--tensorrt", "off"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = [line for line in captured.err.splitlines() if "export failed" in line]
    assert len(lines) == 1 and lines[0].startswith(f"export failed: {ckpt}: "), captured.err
    assert "non-finite weights in ['features.0.0.weight']" in lines[0]
    assert not (tmp_path / "repo").exists()  # made by the export, nothing written: removed again


def test_a_new_beam_size_rebuilds_the_decoder_whose_max_batch_size_it_sets(
    exported_translator_models, tmp_path_factory
):
    from tests.test_translate_serving import exported_translators

    repo = exported_translators(exported_translator_models, tmp_path_factory, "beam_size", ("gru_attention",))
    ckpt = repo.parent / "checkpoints" / "gru_attention.pt"
    options = {"max_batch_size": 16, "beam_sentences": 8, "tensorrt": "off"}  # the session export's
    decoder = repo / "gru_attention_decoder"
    assert json.loads((decoder / "kiln.json").read_text())["max_batch_size"] == 16 * 4  # beam 4: default
    narrow = export_checkpoint(ckpt, repo, beam_size=2, **options)
    assert [r.status for r in narrow] == ["written"] * 3
    assert json.loads((decoder / "kiln.json").read_text())["max_batch_size"] == 16 * 2
    assert "max_batch_size: 32" in (decoder / "config.pbtxt").read_text()
    again = export_checkpoint(ckpt, repo, beam_size=2, **options)
    assert [r.status for r in again] == ["up to date"] * 3


def _translator_context(repo: Path, **options: object) -> ExportContext:
    ckpt = {"task": "translate", "model": {"name": "gru_attention", "args": {}}}
    return ExportContext(
        path=repo.parent / "t.pt",
        ckpt=ckpt,
        model=nn.Identity(),
        sha256="0" * 64,
        repository=repo,
        options=ExportOptions(precisions=("fp32", "int8"), **options),
        name="t",
    )


def test_an_int8_refusal_measured_on_other_held_out_sentences_is_gated_again(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    refused = _translator_context(repo, beam_sentences=20)
    refused.refuse(Entry("t_int8", "int8"), ParityReport(float("inf")), "int8 agreement 90.00%")
    assert not refused.needs_rebuild(Entry("t_int8", "int8"))  # same settings: remembered
    more = _translator_context(repo, beam_sentences=500)
    assert more.needs_rebuild(Entry("t_int8", "int8"))
    wider = _translator_context(repo, beam_sentences=20, beam_size=8)
    assert wider.needs_rebuild(Entry("t_int8", "int8"))


def test_translator_entries_written_at_the_default_beam_settings_record_none_and_stay_current(tmp_path):
    context = _translator_context(tmp_path)
    assert "beam_size" not in context.settings("fp32")
    assert "beam_sentences" not in context.settings("int8")
    assert _translator_context(tmp_path, beam_sentences=50).settings("fp32") == context.settings("fp32")


@pytest.mark.parametrize("content", ["[]", "7", '"kiln"', "null"])
def test_an_entry_whose_kiln_json_is_not_an_object_is_foreign_and_refused_in_one_line(
    tmp_path, content
) -> None:
    """It was an AttributeError traceback (``meta.get`` on a list) out of check_not_foreign."""
    from export.repository import RepositoryError, check_not_foreign, read_kiln_json

    entry = tmp_path / "lenet"
    entry.mkdir()
    (entry / "kiln.json").write_text(content)
    assert read_kiln_json(entry) is None
    with pytest.raises(RepositoryError, match="is not a Kiln export"):
        check_not_foreign(entry)
