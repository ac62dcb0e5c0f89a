"""A translator's KServe interface over a scripted scheduler (no model, no export): what its metadata
declares is what its infer answers, a wrong output is refused naming every real one before any decoding,
and a client's timeout only ever shortens the server's limit."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serving.decoding import beam_search as bs
from serving.decoding.scheduler import SchedulerConfig
from serving.decoding.translator import OUTPUTS, Translator, TranslatorPool, declare_outputs
from serving.errors import BadRequest
from serving.execution.base import InferRequest
from serving.execution.repository import RepositoryEntry

SERVER_S = 30.0
# what export writes for a translator's <name> entry (export/translator_entries.py python_entry_config)
EXPORTED_CONFIG = """name: "t" platform: "python" max_batch_size: 8
input [{ name: "text" data_type: TYPE_STRING dims: [ 1 ] }]
output [{ name: "translation" data_type: TYPE_STRING dims: [ 1 ] }]
"""


class ScriptedScheduler:
    """Answers every source with ``n_best`` hypotheses and notes the timeout each submit was given."""

    spec = SimpleNamespace(max_positions=64, eos_id=2, bos_id=1, pad_id=0)
    load = 0

    def __init__(self) -> None:
        self.config = SchedulerConfig(timeout_s=SERVER_S)
        self.timeouts: list[float | None] = []

    async def submit(self, sources: Any, config: bs.BeamConfig, timeout_s: float | None = None) -> Any:
        self.timeouts.append(timeout_s)
        best = [bs.Hypothesis([5, 2], -1.0 * (i + 1), -0.5 * (i + 1)) for i in range(config.n_best)]
        return [list(best) for _ in sources]


class Codec:
    def encode(self, texts: list[str], batched: bool = True) -> list[list[int]]:
        return [[5] for _ in texts]

    def decode(self, hypotheses: list[list[int]], batched: bool = True) -> list[str]:
        return ["cinq" for _ in hypotheses]


def translator() -> tuple[Translator, ScriptedScheduler]:
    scheduler = ScriptedScheduler()
    return Translator("t", Codec(), [scheduler]), scheduler  # type: ignore[list-item]


def kserve(outputs: list[str] | None = None, **fields: Any) -> InferRequest:
    text = np.array([[b"cinq"], [b"six"]], dtype=np.object_)
    return InferRequest("t", {"text": text}, outputs=outputs, parameters={"n_best": 2}, **fields)


def exported_entry() -> RepositoryEntry:
    config = text_format.Parse(EXPORTED_CONFIG, model_config_pb2.ModelConfig())
    return RepositoryEntry("t", None, config, {"task": "translate"}, versions=["1"])  # type: ignore[arg-type]


def test_the_declared_outputs_are_what_an_infer_asking_for_each_returns() -> None:
    entry = exported_entry()
    declare_outputs(entry)
    declared = {t.name: (t.datatype, t.shape) for t in entry.outputs()}
    assert declared == {"translation": ("BYTES", [-1, -1]), "score": ("FP32", [-1, -1])}
    assert [o.name for o in entry.config.output] == [name for name, _ in OUTPUTS]
    service, _ = translator()
    answer = asyncio.run(service.infer(kserve(["translation", "score"])))
    for name, (datatype, shape) in declared.items():
        value = answer.outputs[name]
        assert value.shape == (2, 2) and len(shape) == value.ndim  # [n, n_best]: n_best is not 1 here
        assert (value.dtype == np.object_) == (datatype == "BYTES")
    assert list(asyncio.run(service.infer(kserve())).outputs) == ["translation", "score"]  # none named: all
    assert list(asyncio.run(service.infer(kserve(["translation"]))).outputs) == ["translation"]


def test_a_translator_pool_declares_its_entries_outputs_once_and_leaves_other_entries_alone() -> None:
    entry, other = exported_entry(), exported_entry()
    other.name, other.kiln = "c", {"task": "classify"}
    repository = SimpleNamespace(entries={"t": entry, "c": other})
    TranslatorPool(repository)
    TranslatorPool(repository)  # a second pool over the same repository changes nothing more
    assert [(o.name, list(o.dims)) for o in entry.config.output] == [("translation", [-1]), ("score", [-1])]
    assert [o.name for o in other.config.output] == ["translation"]


def test_an_unknown_output_is_refused_naming_every_real_one_before_any_decoding() -> None:
    service, scheduler = translator()
    with pytest.raises(BadRequest) as refused:
        asyncio.run(service.infer(kserve(["translation", "scores"])))
    assert refused.value.message == "model 't' has no output(s) ['scores']; outputs: ['translation', 'score']"
    assert scheduler.timeouts == []  # refused before its texts were decoded


@pytest.mark.parametrize(
    ("fields", "limit"),
    [
        ({}, SERVER_S),
        ({"timeout_s": 3600.0}, SERVER_S),
        ({"deadline_s": 3600.0}, SERVER_S),
        ({"timeout_s": 2.0, "deadline_s": 3600.0}, 2.0),
        ({"timeout_s": 3600.0, "deadline_s": 1.5}, 1.5),
    ],
)
def test_a_client_timeout_only_shortens_the_translators_limit(fields, limit) -> None:
    service, scheduler = translator()
    asyncio.run(service.infer(kserve(**fields)))
    asyncio.run(service.translate(["cinq"], bs.DecodingOptions(), fields.get("timeout_s")))
    assert scheduler.timeouts == [limit, min(fields.get("timeout_s", SERVER_S), SERVER_S)]
