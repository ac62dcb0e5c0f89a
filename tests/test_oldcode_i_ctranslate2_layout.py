"""CTranslate2 is laid over the bench's ``--threads`` as its other peers are (the PyTorch reference's
processes, Triton's instances, the gateway's workers): never held at two threads on a larger machine,
nor given two threads where every other engine has one; the targets read that layout's row."""

from __future__ import annotations

import contextlib
import types
from pathlib import Path

import pytest


class _StubCT2:
    """Stands in for bench.ctranslate.CT2Translator, recording the layout it was opened with."""

    opened: list[tuple[int, int, str]] = []

    def __init__(self, model_dir, tokenizers, *, inter_threads=2, intra_threads=1, compute_type="float32"):
        self.opened.append((inter_threads, intra_threads, compute_type))

    def source_tokens(self, texts):
        return [t.split() for t in texts]

    def translate_tokens(self, sources, *, beam_size=4, max_length=64, max_batch_size=32):
        return [(" ".join(s), []) for s in sources]

    def translate(self, texts, *, beam_size=4, max_length=64, max_batch_size=32):
        return self.translate_tokens(self.source_tokens(texts))


@pytest.fixture
def stub_ct2(monkeypatch):
    from bench import ctranslate

    _StubCT2.opened = []
    monkeypatch.setattr(ctranslate, "CT2Translator", _StubCT2)
    monkeypatch.setattr(ctranslate, "convert", lambda checkpoint, out, force=False: out)
    return _StubCT2.opened


def _words(texts: list[str]) -> int:
    return sum(len(t.split()) + 1 for t in texts)


@pytest.mark.parametrize(
    ("threads", "layouts"),
    [
        (4, ["ctranslate2 fp32 (inter 4, intra 1)", "ctranslate2 fp32 (1 thread)"]),
        (2, ["ctranslate2 fp32 (inter 2, intra 1)", "ctranslate2 fp32 (1 thread)"]),
        (1, ["ctranslate2 fp32 (1 thread)"]),
    ],
)
def test_ctranslate2_rows_lay_the_peer_over_the_benchs_threads(stub_ct2, tmp_path, threads, layouts):
    from bench.translation_engines import ctranslate2_rows

    texts = ["a b", "c"]
    ckpt = {"tokenizers": {}}
    rows = ctranslate2_rows(tmp_path / "m.pt", ckpt, texts, texts, (4,), tmp_path, _words, threads)
    fp32 = [
        r["engine"] for r in rows if r["engine"].startswith("ctranslate2 fp32") and r["concurrency"] == 32
    ]
    assert fp32 == layouts
    assert max(inter * intra for inter, intra, _ in stub_ct2) == threads  # never more, never fewer


def test_the_ctranslate2_targets_read_its_layout_on_the_benchs_threads():
    from bench.translation_gateway import gateway_engine
    from bench.translation_targets import acceptance

    gateway = gateway_engine("", 4)
    rows = [
        {"engine": gateway, "beam": 4, "concurrency": 32, "tokens_per_s": 6000.0, "workers": 4},
        {
            "engine": "ctranslate2 fp32 (inter 4, intra 1)",
            "beam": 4,
            "concurrency": 32,
            "tokens_per_s": 20000.0,
        },
        {"engine": "ctranslate2 fp32 (1 thread)", "beam": 4, "concurrency": 32, "tokens_per_s": 6000.0},
        {"engine": "ctranslate2 fp32 (1 thread)", "beam": 4, "concurrency": 1, "p50_ms": 2.0},
        {"engine": "pytorch (kv cache)", "beam": 4, "concurrency": 32, "tokens_per_s": 1000.0},
    ]
    target = f"{gateway} c=32 beam 4 tokens/s >= 0.5x CTranslate2 fp32 at its best layout"
    assert {t["target"]: t["measured"] for t in acceptance(rows)}[target] == pytest.approx(0.3)
    # on one thread, its one-thread row is its layout (no two-thread layout the gateway did not have)
    del rows[1]
    assert {t["target"]: t["measured"] for t in acceptance(rows)}[target] == pytest.approx(1.0)


def test_the_paired_rounds_run_ctranslate2_on_the_benchs_threads_and_name_that_layout(monkeypatch, tmp_path):
    from bench import translation_paired

    opened = []

    def ctranslate2(w, out, inter_threads):
        opened.append(inter_threads)
        return _StubCT2(None, None, inter_threads=inter_threads)

    def alternate(turns, rounds):
        names = [*turns.entries, *turns.references]
        turns.last.update({name: list(turns.w.texts) for name in names})
        return {name: [1000.0 * (i + 1)] * rounds for i, name in enumerate(names)}

    monkeypatch.setattr(translation_paired, "_ctranslate2", ctranslate2)
    monkeypatch.setattr(translation_paired, "running", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(translation_paired, "_alternate_throughput", alternate)
    w = types.SimpleNamespace(model="m", texts=["a b", "c"], refs=["a b", "c"], count=_words)
    rows = translation_paired._paired_rows(Path(tmp_path), w, tmp_path, 4, 4, 3, 4, None)
    assert opened == [4]
    best = "ctranslate2 fp32 (inter 4, intra 1)"
    assert [r["engine"] for r in rows] == ["gateway (4 workers) [paired]", best + " [paired]"]
    assert rows[0]["against"] == best and rows[0]["paired_ratio"] == 0.5
