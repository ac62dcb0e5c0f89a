"""A translator's KServe interface over a scripted scheduler (no model, no export): a client's timeout
only ever shortens the server's limit."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from serving.decoding import beam_search as bs
from serving.decoding.scheduler import SchedulerConfig
from serving.decoding.translator import Translator
from serving.execution.base import InferRequest

SERVER_S = 30.0


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
