"""The bench's translation rows for a translator of fewer than 64 positions (``--model-arg
max_positions=32``): every row searches with the ``max_length`` the gateway gives a request that does not
choose one (the model's 32), where a fixed 64 had the gateway refuse every request (422) and the engines
refuse the search."""

from __future__ import annotations

import contextlib
import types
from pathlib import Path

import pytest

TEXTS = ["w4 w5 w6", "w7 w8", "w9 w10 w11 w12", "w13", "w14 w15 w16 w17 w18", "w19 w20"]


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    """A tiny untrained transformer of 32 positions exported (it never ends a sentence early: every
    search runs to its ``max_length``, and CTranslate2's past it read beyond the position table), and its
    workload over :data:`TEXTS`."""
    from bench.translation_rows import Counter, Workload
    from export.pipeline import export_checkpoint
    from tests.test_export_translate import SENTENCES, _translator_checkpoint
    from training.checkpoint import load_checkpoint

    root = tmp_path_factory.mktemp("short")
    path = _translator_checkpoint("transformer", root, max_positions=32)
    results = export_checkpoint(path, root / "repo", validation=SENTENCES, tensorrt="off")
    assert [r.status for r in results] == ["written"] * 3
    ckpt = load_checkpoint(path)
    work = Workload("transformer", path, ckpt, TEXTS, TEXTS, Counter(ckpt["tokenizers"]["target"]))
    return root / "repo", work


def test_a_workload_searches_with_the_gateways_default_max_length_for_its_model():
    from bench.translation_rows import MAX_LENGTH, Workload, checkpoint_max_length

    def work(max_positions: int | None) -> Workload:
        args = {} if max_positions is None else {"max_positions": max_positions}
        return Workload("m", Path("m.pt"), {"model": {"args": args}}, [], [], None)

    assert [work(n).max_length for n in (32, 63, 64, 256, None)] == [32, 63, 64, 64, MAX_LENGTH]
    assert checkpoint_max_length({"model": {"args": {"max_positions": 32}}}) == 32


def test_every_translation_row_of_a_32_position_translator_runs_at_its_max_length(
    short, monkeypatch, tmp_path
):
    """The main translator's rows as the bench measures them (the gateway served in-process, the
    separate rows only): the gateway, Kiln's engine, the PyTorch reference and CTranslate2 each report
    rows, none refused, and agree with the PyTorch reference on every sentence (the same max_length)."""
    from bench import translation, translation_gateway
    from bench.translation_rows import agreement
    from serving.app import create_app
    from serving.decoding.options import default_max_length
    from serving.execution.repository import Repository
    from serving.settings import Settings
    from tests.repo_fixtures import LiveServer, held_grpc_port

    repository, work = short
    max_positions = Repository(repository).get("transformer").kiln["step_spec"]["max_positions"]
    assert work.max_length == 32 == default_max_length(max_positions)  # the gateway's default for it
    with held_grpc_port() as grpc:
        app = create_app(Settings(model_repository=repository, grpc_port=grpc, reuse_port=True))
        with LiveServer(app) as live:
            ports = iter([live.port, grpc])
            monkeypatch.setattr(translation_gateway, "free_port", lambda: next(ports))
            monkeypatch.setattr(translation_gateway, "running", lambda *a, **k: contextlib.nullcontext())
            args = types.SimpleNamespace(repository=repository, threads=1, gateway_workers=1)
            profile = {"beams": (4,), "translate_concurrency": (2,), "paired_rounds": 0}
            errors: dict[str, str] = {}
            rows = translation._measured_rows(args, profile, work, tmp_path, errors, lambda m: None)
    assert errors == {}
    engines = {r["engine"] for r in rows}
    assert {"gateway (1 worker)", "kiln engine (batch 32)", "pytorch (kv cache)"} <= engines
    assert any(e.startswith("ctranslate2 fp32") for e in engines)
    agreement(rows, work.texts)
    assert all(r["tokens_per_s"] > 0 and len(r["hyps"]) == r["sentences"] for r in rows)
    for row in rows:
        if not row["engine"].startswith("ctranslate2"):  # the peer: its own search, not Kiln's
            assert row["same_as_reference"] == 100.0, row["engine"]
