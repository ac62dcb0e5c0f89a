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
from serving.decoding.scheduler_config import SchedulerConfig
from serving.decoding.translator import OUTPUTS, Translator
from serving.decoding.translator_pool import TranslatorPool, declare_outputs
from serving.errors import BadRequest, UnprocessableInput
from serving.execution.base import InferRequest, InferResponse, ModelMetadata, TensorMeta
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

    async def submit(
        self, sources: Any, config: bs.BeamConfig, timeout_s: float | None = None, version: str = ""
    ) -> Any:
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
    scores = {"score": ("FP32", [-1, -1]), "raw_score": ("FP32", [-1, -1])}
    assert declared == {"translation": ("BYTES", [-1, -1]), **scores}
    assert [o.name for o in entry.config.output] == [name for name, _ in OUTPUTS]
    service, _ = translator()
    answer = asyncio.run(service.infer(kserve(["translation", "score", "raw_score"])))
    assert answer.outputs["score"].tolist() == [[-0.5, -1.0]] * 2  # normalized, as the search ranks them
    assert answer.outputs["raw_score"].tolist() == [[-1.0, -2.0]] * 2  # the sums of log-probs
    for name, (datatype, shape) in declared.items():
        value = answer.outputs[name]
        assert value.shape == (2, 2) and len(shape) == value.ndim  # [n, n_best]: n_best is not 1 here
        assert (value.dtype == np.object_) == (datatype == "BYTES")
    assert list(asyncio.run(service.infer(kserve())).outputs) == ["translation", "score", "raw_score"]  # all
    assert list(asyncio.run(service.infer(kserve(["translation"]))).outputs) == ["translation"]


def test_a_translator_pool_declares_its_entries_outputs_once_and_leaves_other_entries_alone() -> None:
    entry, other = exported_entry(), exported_entry()
    other.name, other.kiln = "c", {"task": "classify"}
    repository = SimpleNamespace(entries={"t": entry, "c": other})
    TranslatorPool(repository)
    TranslatorPool(repository)  # a second pool over the same repository changes nothing more
    declared = [(o.name, list(o.dims)) for o in entry.config.output]
    assert declared == [("translation", [-1]), ("score", [-1]), ("raw_score", [-1])]
    assert [o.name for o in other.config.output] == ["translation"]


def test_an_unknown_output_is_refused_naming_every_real_one_before_any_decoding() -> None:
    service, scheduler = translator()
    with pytest.raises(BadRequest) as refused:
        asyncio.run(service.infer(kserve(["translation", "scores"])))
    assert (
        refused.value.message
        == "model 't' has no output(s) ['scores']; outputs: ['translation', 'score', 'raw_score']"
    )
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


class InferOnlyBackend:
    """A backend translating through ``<name>``'s KServe infer (as Triton's model answers it), with or
    without the ``raw_score`` output of exports since it existed; notes the outputs each infer asked for."""

    def __init__(self, outputs: tuple[str, ...]) -> None:
        self.declared, self.asked = outputs, []

    def metadata(self, name: str, version: str = "") -> ModelMetadata:
        return ModelMetadata(
            name, ["1"], "python", [], [TensorMeta(o, "FP32", [-1, -1]) for o in self.declared]
        )

    async def infer(self, request: InferRequest) -> InferResponse:
        self.asked.append(request.outputs)
        answers = {
            "translation": np.array([[b"cinq", b""]], dtype=np.object_),
            "score": np.array([[-0.5, -np.inf]], dtype=np.float32),
            "raw_score": np.array([[-1.0, -np.inf]], dtype=np.float32),
        }
        return InferResponse(request.model, "1", {k: answers[k] for k in request.outputs})


def test_rest_return_scores_through_a_backends_name_model_come_from_its_raw_score_output() -> None:
    """Through Triton's ``<name>`` the REST route refused ``return_scores`` (no raw scores there): now
    both scores, the padding hypothesis dropped; an entry exported before ``raw_score`` is a 422 saying
    to export it again, before any work."""
    from serving.metrics import GatewayMetrics
    from serving.protocol.translate import TranslateRequest, _via_infer

    body = TranslateRequest(texts=["cinq"], beam_size=2, n_best=2, return_scores=True)
    backend = InferOnlyBackend(("translation", "score", "raw_score"))
    [hyps] = asyncio.run(_via_infer(backend, GatewayMetrics(), "t", body))  # type: ignore[arg-type]
    assert [(h.text, h.score, h.normalized_score) for h in hyps] == [("cinq", -1.0, -0.5)]
    assert backend.asked == [["translation", "score", "raw_score"]]
    old = InferOnlyBackend(("translation", "score"))
    with pytest.raises(UnprocessableInput, match="export it again"):
        asyncio.run(_via_infer(old, GatewayMetrics(), "t", body))  # type: ignore[arg-type]
    assert old.asked == []
    plain = TranslateRequest(texts=["cinq"], beam_size=2)
    [hyps] = asyncio.run(_via_infer(old, GatewayMetrics(), "t", plain))  # type: ignore[arg-type]
    assert [h.text for h in hyps] == ["cinq"] and old.asked == [["translation"]]  # no scores asked


def test_an_entry_exported_before_its_score_output_serves_one_best_and_refuses_n_best_in_a_422() -> None:
    """An entry of an older Kiln answers ``translation`` alone: asking it for ``score`` (to drop padding
    hypotheses of an n-best) was Triton's 400 "unexpected inference output"; now a 422 naming the
    missing output and what to do, before any work, while one-best requests are served."""
    from serving.metrics import GatewayMetrics
    from serving.protocol.translate import TranslateRequest, _via_infer

    oldest = InferOnlyBackend(("translation",))
    body = TranslateRequest(texts=["cinq"], beam_size=2, n_best=2)
    with pytest.raises(UnprocessableInput, match=r"no 'score' output .*export it again\), so n_best 2"):
        asyncio.run(_via_infer(oldest, GatewayMetrics(), "t", body))  # type: ignore[arg-type]
    scored = TranslateRequest(texts=["cinq"], return_scores=True)
    with pytest.raises(UnprocessableInput, match=r"no 'score' or 'raw_score' output .*so return_scores"):
        asyncio.run(_via_infer(oldest, GatewayMetrics(), "t", scored))  # type: ignore[arg-type]
    assert oldest.asked == []
    plain = TranslateRequest(texts=["cinq"], beam_size=2)
    [hyps] = asyncio.run(_via_infer(oldest, GatewayMetrics(), "t", plain))  # type: ignore[arg-type]
    assert [h.text for h in hyps] == ["cinq"]


def test_a_model_the_backend_does_not_know_yet_is_left_to_its_infer_which_fetches_the_list_again() -> None:
    """Triton's backend fetches its model list again when an infer names a model it does not know (Triton
    may have loaded it since): the output check before it must not answer that request 404 or 503."""
    from serving.errors import ModelNotFound
    from serving.metrics import GatewayMetrics
    from serving.protocol.translate import TranslateRequest, _via_infer

    class NotListedYet(InferOnlyBackend):
        def metadata(self, name: str, version: str = "") -> ModelMetadata:
            if not self.asked:
                raise ModelNotFound(f"unknown model {name!r}")
            return super().metadata(name, version)

    backend = NotListedYet(("translation", "score", "raw_score"))
    body = TranslateRequest(texts=["cinq"], beam_size=2, n_best=2, return_scores=True)
    [hyps] = asyncio.run(_via_infer(backend, GatewayMetrics(), "t", body))  # type: ignore[arg-type]
    assert [h.text for h in hyps] == ["cinq"] and backend.asked == [["translation", "score", "raw_score"]]
