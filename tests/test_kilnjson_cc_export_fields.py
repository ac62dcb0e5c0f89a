"""What export writes into kiln.json against docs/kiln-json.md: every field documented, and an int8
entry's ``export`` block holding only its own task's gate thresholds (another task's threshold changed
re-quantized and re-gated it for nothing)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from export.beam_parity import HeldOut, SearchSettings, _identity_report
from export.freeze import FreezeReport
from export.pipeline import export_checkpoint
from export.quantize import AgreementGate, GateResult, MalformedGraph, TranslationGate
from export.repository import current_settings
from export.results import ExportContext, ExportOptions
from tests.classifier_exports import tiny_images, write_checkpoint

DOC = (Path(__file__).resolve().parents[1] / "docs" / "kiln-json.md").read_text(encoding="utf-8")
INT8 = ("fp32", "int8")


def _context(task: str, **options) -> ExportContext:
    opts = ExportOptions(precisions=INT8, **options)
    return ExportContext(Path("m.pt"), {"task": task}, None, "0" * 64, Path("repo"), opts, "m")


def test_an_int8_entry_records_its_own_tasks_gate_thresholds_only():
    classifier, translator = _context("classify"), _context("translate")
    assert "int8_max_drop" in classifier.settings("int8")
    assert not {"int8_min_agreement", "int8_max_bleu_drop"} & set(classifier.settings("int8"))
    assert {"int8_min_agreement", "int8_max_bleu_drop"} <= set(translator.settings("int8"))
    assert "int8_max_drop" not in translator.settings("int8")
    # the other task's threshold changes nothing; the entry's own does
    looser_bleu = _context("classify", int8_max_bleu_drop=5.0, int8_min_agreement=0.5)
    assert looser_bleu.settings("int8") == classifier.settings("int8")
    assert _context("translate", int8_max_drop=3.0).settings("int8") == translator.settings("int8")
    assert _context("classify", int8_max_drop=3.0).settings("int8") != classifier.settings("int8")


def test_entries_that_recorded_every_tasks_thresholds_stay_current_until_their_own_changes():
    old = {
        "export_version": 12,
        "max_batch_size": 64,
        "int8_max_drop": 0.5,
        "int8_min_agreement": 0.995,
        "int8_max_bleu_drop": 0.2,
    }
    for task in ("classify", "translate"):
        assert current_settings(old, _context(task).settings("int8"), "resnet18")
    assert not current_settings(old, _context("classify", int8_max_drop=1.0).settings("int8"), "resnet18")
    loose = _context("translate", int8_max_bleu_drop=1.0).settings("int8")
    assert not current_settings(old, loose, "gru_attention")
    assert not current_settings({**old, "max_batch_size": 8}, _context("classify").settings("int8"), "x")


@pytest.fixture(scope="module")
def lenet_int8(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("kilnjson_cc")
    ckpt = write_checkpoint(root, "lenet")
    export_checkpoint(ckpt, root / "repo", precisions=INT8, tensorrt="off", validation=tiny_images())
    return ckpt, root / "repo"


def test_a_translator_gate_threshold_leaves_a_classifiers_int8_entry_up_to_date(lenet_int8):
    ckpt, repo = lenet_int8
    other = {"int8_max_bleu_drop": 1.0, "int8_min_agreement": 0.9}
    results = export_checkpoint(
        ckpt, repo, precisions=INT8, tensorrt="off", validation=tiny_images(), **other
    )
    assert {r.entry: r.status for r in results}["lenet_int8"] == "up to date"


def _keys(value, skip=("outputs", "max_abs_diff", "sizes", "args", "artifacts", "roles", "dtypes")):
    """Every dict key in ``value``, nested, except those of maps keyed by tensor, axis or file names."""
    if isinstance(value, list):
        return {k for item in value for k in _keys(item, skip)}
    if not isinstance(value, dict):
        return set()
    return set(value) | {k for key, item in value.items() if key not in skip for k in _keys(item, skip)}


def _undocumented(keys) -> list[str]:
    shown = (re.sub(r"^batch\d+_ms_per_item$", "batch<max_batch_size>_ms_per_item", k) for k in keys)
    return sorted(k for k in shown if f"`{k}`" not in DOC and f'"{k}"' not in DOC)


def test_every_field_of_a_classifiers_kiln_json_is_documented(lenet_int8):
    _, repo = lenet_int8
    keys = set()
    for entry in ("lenet", "lenet_int8"):
        keys |= _keys(json.loads((repo / entry / "kiln.json").read_text(encoding="utf-8")))
    assert _undocumented(keys) == []


def test_every_field_the_translator_and_gate_reports_write_is_documented():
    held = HeldOut([[5, 6]], None, "given sentences")
    beams = _identity_report([[5]], [[5]], held, SearchSettings(4, 14), "x", ("a", "b")).as_dict()
    gates = [
        TranslationGate(1.0, 1, 100.0, 100.0, "fp32 translations").as_dict(),
        GateResult(0.9, 0.9, 0.5).as_dict(),
        AgreementGate(1.0, 8, 0.5, "random").as_dict(),
        MalformedGraph(()).as_dict(),
    ]
    settings = [_context(task).settings("int8") for task in ("classify", "translate")]
    keys = _keys([beams, FreezeReport().as_dict(), *gates, *settings])
    assert _undocumented(keys) == []
