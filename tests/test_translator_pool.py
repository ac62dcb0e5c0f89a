"""The translator pool's start and stop: one translator's failure never leaves another running or
keeps the gateway from serving the rest."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from tritonclient.grpc import model_config_pb2

from serving.decoding import translator_pool as pool_module
from serving.decoding.translator_pool import TranslatorPool


class _Translator:
    def __init__(self, name: str, fail_start: bool = False, fail_stop: bool = False) -> None:
        self.name, self.fail_start, self.fail_stop = name, fail_start, fail_stop
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True
        if self.fail_start:
            raise RuntimeError(f"{self.name}: no decode thread")

    async def stop(self, grace_s: float) -> None:
        self.stopped = True
        if self.fail_stop:
            raise RuntimeError(f"{self.name}: stuck")


def _pool(names: list[str]) -> TranslatorPool:
    entry = SimpleNamespace(
        name="t",
        task="translate",
        path=None,
        kiln={"translator": {"encoder": "e", "decoder": "d"}},
        config=model_config_pb2.ModelConfig(max_batch_size=8),  # the pool declares its outputs in it
    )
    steps = {n: SimpleNamespace(name=n, kiln={}) for n in ("e", "d")}  # no source record: not compared
    return TranslatorPool(SimpleNamespace(entries={n: entry for n in names}, get=steps.__getitem__))


def test_a_translator_that_fails_to_stop_does_not_leave_the_others_running() -> None:
    pool = _pool([])
    made = {n: _Translator(n, fail_stop=n == "b") for n in ("a", "b", "c")}
    pool.translators = dict(made)
    with pytest.raises(RuntimeError, match="b: stuck"):
        asyncio.run(pool.stop(1.0))
    assert all(t.stopped for t in made.values())
    assert pool.translators == {}


def test_a_translator_that_fails_to_start_is_stopped_and_reported_and_the_others_serve(monkeypatch) -> None:
    made: dict[str, _Translator] = {}

    def build(path, kiln, *runners, **options):
        name = f"t{len(made)}"
        made[name] = _Translator(name, fail_start=name == "t0")
        return made[name]

    monkeypatch.setattr(pool_module, "translator_from_entry", build)
    monkeypatch.setattr(pool_module, "_capped", lambda config, *args: config)
    monkeypatch.setattr(pool_module, "_runner_pair", lambda *args: (None, None))
    pool = _pool(["first", "second"])
    asyncio.run(pool.start(lambda *args, **kwargs: None))
    assert list(pool.translators) == ["second"] and pool.translators["second"] is made["t1"]
    assert "no decode thread" in pool.failed["first"]
    assert made["t0"].stopped  # what its start left running is stopped


def test_the_gateways_translator_shows_its_own_outputs_whichever_backend_runs_its_graphs(tmp_path) -> None:
    """With Triton behind (``--triton-translate scheduler``) metadata and config came from Triton's
    ``<name>`` model: ``translation`` [-1, 1] alone, while the gateway's translator answers n_best
    columns and, asked, ``score``."""
    from serving.execution.base import ModelMetadata, TensorMeta
    from serving.execution.repository import Repository
    from serving.gateway import Gateway

    entry = tmp_path / "t"
    (entry / "1").mkdir(parents=True)
    (entry / "1" / "model.py").write_text("")
    (entry / "config.pbtxt").write_text(
        'name: "t"\nbackend: "python"\nmax_batch_size: 8\n'
        'input { name: "text" data_type: TYPE_STRING dims: 1 }\n'
        'output { name: "translation" data_type: TYPE_STRING dims: 1 }\n'
    )
    (entry / "kiln.json").write_text('{"task": "translate", "translator": {"encoder": "e", "decoder": "d"}}')
    triton_view = ModelMetadata("t", ["1"], "python", [], [TensorMeta("translation", "BYTES", [-1, 1])])
    backend = SimpleNamespace(
        runs_translators_in_gateway=True,
        metadata=lambda name, version="": triton_view,
        config=lambda name, version="": {"name": name, "output": [{"name": "translation"}]},
    )
    gateway = Gateway(backend, Repository(tmp_path))
    outputs = {t.name: (t.datatype, t.shape) for t in gateway.metadata("t").outputs}
    assert outputs == {
        "translation": ("BYTES", [-1, -1]),
        "score": ("FP32", [-1, -1]),
        "raw_score": ("FP32", [-1, -1]),
    }
    assert [o["name"] for o in gateway.config("t", "1")["output"]] == ["translation", "score", "raw_score"]


def test_a_translator_block_naming_no_encoder_is_reported_by_its_file_not_as_a_key_error(tmp_path) -> None:
    pool = _pool(["first"])
    entry = pool.repository.entries["first"]
    entry.path, entry.kiln = tmp_path, {"translator": {"decoder": "d"}}
    asyncio.run(pool.start(lambda *args, **kwargs: None))
    assert pool.failed["first"] == (
        f"ValueError: {tmp_path / 'kiln.json'}: its 'translator' block names no encoder entry"
    )


def test_a_translator_whose_decoder_came_from_another_checkpoint_is_not_served(tmp_path) -> None:
    """Export writes a translator's three entries one after the other: a run stopped between them (a
    full disk) after a retrain left a new encoder beside the old decoder, served without a word."""
    pool = _pool(["first"])
    entry = pool.repository.entries["first"]
    entry.path = tmp_path
    entry.kiln = {**entry.kiln, "source_checkpoint": {"sha256": "a" * 64}}
    steps = {
        "e": SimpleNamespace(name="e", kiln={"source_checkpoint": {"sha256": "a" * 64}}),
        "d": SimpleNamespace(name="d", kiln={"source_checkpoint": {"sha256": "b" * 64}}),
    }
    pool.repository.get = steps.__getitem__
    asyncio.run(pool.start(lambda *args, **kwargs: None))
    assert pool.failed["first"] == (
        "ValueError: its entries were exported from different checkpoints (t from aaaaaaaaaaaa, e from "
        "aaaaaaaaaaaa, d from bbbbbbbbbbbb); export its checkpoint again (python -m export CHECKPOINT) to "
        "write them together"
    )


def test_a_missing_or_damaged_tokenizer_file_is_named(tmp_path) -> None:
    from serving.decoding.translator import TextCodec

    with pytest.raises(FileNotFoundError, match=f"tokenizer file {tmp_path / 'source.json'} is missing"):
        TextCodec.from_files(tmp_path / "source.json", tmp_path / "target.json", None)
    (tmp_path / "source.json").write_text("{ not a tokenizer")
    with pytest.raises(ValueError, match=f"tokenizer file {tmp_path / 'source.json'} cannot be read"):
        TextCodec.from_files(tmp_path / "source.json", tmp_path / "target.json", None)
