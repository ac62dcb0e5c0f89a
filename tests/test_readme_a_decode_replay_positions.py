"""README, "Two finer tools for the translation path": ``python -m bench.decode_replay --repository R
--checkpoints C`` replays a translator's held-out sentences. It asked for ``max_length=64`` whatever the
model, so a translator trained with fewer positions (``--model-arg max_positions=32``, which the gateway
serves at ``max_length`` 32 by default) stopped in a traceback: "max_length must be an integer in [1, 32],
got 64"; ``bench.gpu_decode_probe --translate`` failed every row alike. Both now search as a request
that does not choose ``max_length`` (64, or the model's ``max_positions`` if lower)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from serving.decoding.options import LIMITS, max_length_of
from serving.decoding.translator import check_decoding_options


def test_the_decode_replay_runs_a_translator_of_fewer_positions_than_the_default_max_length(
    monkeypatch, capsys
):
    from bench import decode_replay, translation_engines, translation_rows

    positions = 32
    searched = []

    def beam_config(options):  # the translator's own check, for a model of 32 positions
        check_decoding_options(options, LIMITS, positions)
        searched.append(max_length_of(options, positions))
        return options

    scheduler = SimpleNamespace(spec="spec", run_encoder="enc", run_decoder="dec", indexed=True)
    translator = SimpleNamespace(
        limits=LIMITS,
        source_ids=lambda texts: [[1] for _ in texts],
        beam_config=beam_config,
        schedulers=[scheduler],
    )
    monkeypatch.setattr(
        translation_rows.Workload, "load", classmethod(lambda cls, *a: SimpleNamespace(texts=["a", "b"]))
    )
    monkeypatch.setattr(translation_engines, "kiln_translator", lambda *a: (translator, None))
    monkeypatch.setattr(
        decode_replay,
        "replay",
        lambda *_, sentences, **__: (SimpleNamespace(line=lambda: f"{sentences} replayed"), []),
    )
    decode_replay.main(["--repository", "r", "--checkpoints", "c", "--warmup", "0", "--sentences", "3"])
    assert "3 replayed" in capsys.readouterr().out
    assert searched == [positions]  # as the gateway's default request to that model


def test_the_gpu_decode_probe_searches_a_translator_of_fewer_positions_at_its_own_max_length(monkeypatch):
    """``python -m bench.gpu_decode_probe ... --translate R`` (README, "Running on a CUDA GPU") built its
    search without the model's positions: every row failed "max_length=64 exceeds the model's
    max_positions=32"."""
    from bench import gpu_decode_probe, translation_rows

    spec = SimpleNamespace(eos_id=2, bos_id=1, max_positions=32)
    engine = SimpleNamespace(spec=spec, source_ids=lambda texts: [[5] for _ in texts])
    entry = SimpleNamespace(path="p", kiln={"translator": {}})
    monkeypatch.setattr(gpu_decode_probe, "ort_module", lambda: None)
    monkeypatch.setattr(gpu_decode_probe, "_runner", lambda *a: SimpleNamespace())
    monkeypatch.setattr(gpu_decode_probe, "_ways", lambda device: {"host": None})
    monkeypatch.setattr(
        "serving.execution.repository.Repository", lambda root: SimpleNamespace(get=lambda n: entry)
    )
    monkeypatch.setattr("serving.decoding.translator.translator_from_entry", lambda *a: engine)
    monkeypatch.setattr(
        translation_rows.Workload, "load", classmethod(lambda cls, *a: SimpleNamespace(texts=["a", "b"]))
    )
    searched = []

    def timed(encoder, run, spec, ids, config, size):
        searched.append(config.max_length)
        raise RuntimeError("measured elsewhere")  # a failed way is a row naming the error

    monkeypatch.setattr(gpu_decode_probe, "_timed", timed)
    result = gpu_decode_probe.translate(Path("r"), Path("c"), "tt", "cpu", 2, [2])
    assert searched == [32]
    assert result["rows"][0]["failed"] == "RuntimeError: measured elsewhere"
