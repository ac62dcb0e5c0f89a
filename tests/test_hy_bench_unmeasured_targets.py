"""The translation targets of a bench run some of whose rows did not run (CTranslate2 not importable, no
int8 entry in the repository, Triton absent): each such target reads "–", never "yes", its note says
which row is missing and why, and the log says so when it happens; the rows that ran are still measured.
Nothing is measured for real: every engine of :func:`bench.translation.run` is replaced by rows."""

from __future__ import annotations

import logging
import math
from collections import Counter
from types import SimpleNamespace

from bench import translation
from bench.targets import targets
from bench.translation_gateway import gateway_engine

TEXTS = ["un", "deux"]
HYPS = ["one", "two"]


def _row(engine: str, tokens_per_s: float, concurrency: int = 32, **extra) -> dict:
    return {"engine": engine, "beam": 4, "concurrency": concurrency, "tokens_per_s": tokens_per_s} | {
        "hyps": list(HYPS),
        "p50_ms": 1.0,
        **extra,
    }


def _run(monkeypatch, tmp_path, prepare=lambda *a: []):
    """translation.run with CTranslate2 failing to import, Triton not installed, no transformer_int8."""
    repository = tmp_path / "repo"
    (repository / "transformer").mkdir(parents=True)  # no transformer_int8 beside it
    workload = SimpleNamespace(
        model="transformer",
        checkpoint=tmp_path / "transformer.pt",
        ckpt={},
        texts=TEXTS,
        refs=HYPS,
        count=Counter(),
        max_length=8,
    )
    monkeypatch.setattr(translation.Workload, "load", staticmethod(lambda *a: workload))
    monkeypatch.setattr(translation.identity, "prepare", prepare)

    def gateway_rows(*args, layouts, **kwargs):
        return [_row(gateway_engine("", w), 4000.0 * w, c, workers=w) for w in layouts for c in (1, 32)]

    def no_ctranslate2(*args):
        raise ImportError("No module named 'ctranslate2'")

    def no_triton(*args):
        raise RuntimeError("the tritonserver binary from nvidia-pytriton is not installed")

    monkeypatch.setattr(translation, "gateway_rows", gateway_rows)
    monkeypatch.setattr(translation, "engine_rows", lambda *a: [_row("kiln engine (batch 32)", 3000.0)])
    monkeypatch.setattr(translation, "pytorch_rows", lambda *a, **k: [_row("pytorch (kv cache)", 1000.0)])
    monkeypatch.setattr(translation, "pytorch_parallel_row", lambda *a, **k: None)
    monkeypatch.setattr(translation, "ctranslate2_rows", no_ctranslate2)
    monkeypatch.setattr(translation, "triton_rows", no_triton)
    monkeypatch.setattr(translation, "arithmetic", lambda *a: None)
    args = SimpleNamespace(
        repository=repository,
        checkpoints=tmp_path,
        translator="transformer",
        identity_translators=None,
        gateway_workers=2,
        threads=2,
    )
    profile = {"sentences": 2, "beams": (4,), "translate_concurrency": (1, 32), "paired_rounds": 5}
    return translation.run(args, profile, tmp_path / "out", progress=lambda line: None)


def test_a_target_whose_rows_did_not_run_reads_a_dash_and_says_which_row_and_why(monkeypatch, tmp_path):
    result = _run(monkeypatch, tmp_path)
    found = {t["target"]: t for t in targets({"translation": result}, "resnet18")}
    ct2 = found["gateway (2 workers) c=32 beam 4 tokens/s >= 0.5x CTranslate2 fp32 at its best layout"]
    assert math.isnan(ct2["measured"]) and ct2["met"] == "–"
    assert ct2["note"] == (
        "not measured: this run has no ctranslate2 fp32 (best layout) row "
        "(ctranslate2: No module named 'ctranslate2')"
    )
    int8 = found["int8 entry through the gateway >= 0.7x CTranslate2 fp32 at its best layout"]
    assert int8["met"] == "–" and int8["note"] == (
        "not measured: this run has no int8 entry (gateway, c=32, beam 4) row and no ctranslate2 fp32 "
        "(best layout) row (ctranslate2: No module named 'ctranslate2'; int8 entry: "
        f"{tmp_path}/repo/transformer_int8 is not in the repository (export writes it where it passes "
        "its gate))"
    )
    assert "int8 entry" not in result["errors"]  # a repository without one is no error
    latency = found["batch-1 latency p50 (beam 4) <= 2x CTranslate2 fp32 at 1 thread"]
    assert (
        latency["met"] == "–"
        and "no kiln engine (scheduler) batch-1 row and no ctranslate2" in latency["note"]
    )
    # the row that ran is still measured against the one it compares with
    pytorch = found["gateway (2 workers) c=32 beam 4 >= 4x the PyTorch reference with KV cache (best layout)"]
    assert pytorch["measured"] == 8.0 and pytorch["met"] == "yes"


def test_the_identity_target_reads_a_dash_not_yes_where_triton_did_not_run(monkeypatch, tmp_path):
    found = {t["target"]: t for t in targets({"translation": _run(monkeypatch, tmp_path)}, "resnet18")}
    identity = found["`transformer` through the gateway and Triton identical to the PyTorch reference (%)"]
    assert math.isnan(identity["measured"]) and identity["met"] == "–"
    assert identity["note"] == (
        "not measured: this run has no Triton row (triton: the tritonserver binary from nvidia-pytriton "
        "is not installed); the gateway alone: 4 of 4 gateway/Triton rows identical; 0 translations "
        "differ in all, worst 100.00 %"
    )


def test_a_part_of_the_translation_section_that_failed_is_a_warning_in_the_log(monkeypatch, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="bench.translation"):
        _run(monkeypatch, tmp_path)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "translation: ctranslate2 not measured: No module named 'ctranslate2'" in warned
    assert any(w.startswith("translation: triton not measured: the tritonserver binary") for w in warned)


def test_a_classification_target_of_a_part_left_out_says_so():
    rows = targets({"translation": {"targets": []}, "servers": {}}, "resnet18")  # --only servers translation
    found = {t["target"]: t for t in rows}
    assert len(rows) == 8 and all(t["met"] == "–" for t in rows)
    assert found["ORT fp32 >= 2x PyTorch eager at batch 1 (resnet18)"]["note"] == (
        "not measured: this run left out engines (--only)"
    )
    assert found["gateway c=64 (best client) >= 0.8x ORT best-batch direct"]["note"].endswith(
        "out engines (--only)"
    )
    # a part that ran and measured nothing is not said to be left out
    assert "note" not in found["gateway c=64 >= 5x naive baseline (both over Kiln's HTTP client)"]
    alone = {t["target"]: t for t in targets({"translation": {"targets": []}}, "resnet18")}
    assert alone["perf_analyzer gRPC c=64: gateway >= 1.0x Triton"]["note"] == (
        "not measured: this run left out servers (--only)"
    )
    assert alone["perf_analyzer c=1 gateway p50 - ORT batch-1 p50 <= 1 ms"]["note"] == (
        "not measured: this run left out servers and engines (--only)"
    )
    open_loop = alone["p99 <= 2x p50 at half of peak (gateway, open loop)"]
    assert open_loop["note"] == "not measured: this run left out servers (--only)"


def test_an_identity_translator_that_could_not_be_prepared_keeps_its_target_row_with_why(
    monkeypatch, tmp_path
):
    def prepare(args, sentences, errors, progress):
        errors["identity gru_attention"] = "python -m export ... exited with 1 (read-only repository)"
        return []

    found = {t["target"]: t for t in targets({"translation": _run(monkeypatch, tmp_path, prepare)}, "r")}
    gru = found["`gru_attention` through the gateway and Triton identical to the PyTorch reference (%)"]
    assert gru["met"] == "–" and gru["note"] == (
        "not measured: python -m export ... exited with 1 (read-only repository)"
    )


def test_results_json_is_standard_json_a_value_not_measured_being_null(tmp_path):
    import json

    import numpy as np

    from bench.report import write_results

    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    results = {
        "targets": [{"measured": math.nan, "goal": 2.0}],
        "x": (math.inf, np.float32("nan"), np.int64(3)),
    }
    path = write_results(results, tmp_path)
    saved = json.loads(path.read_text(), parse_constant=refuse)  # as JSON.parse reads it: no NaN literal
    assert saved == {"targets": [{"measured": None, "goal": 2.0}], "x": [None, None, 3]}
    assert math.isnan(results["targets"][0]["measured"])  # the report's own copy is left as it was
