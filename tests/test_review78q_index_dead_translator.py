"""``POST /v2/repository/index`` (and gRPC ``RepositoryIndex``) for a translator whose decode workers
all died said only "not ready", where its readiness names the dead workers and why (the index read
the load error alone, which such a translator has none of). Another model's reason is as before."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from serving.decoding.translator import Translator
from serving.errors import Unavailable
from serving.gateway import Gateway
from serving.protocol.repository_index import repository_index
from tests.test_scheduler import SPEC, FakeDecoder, config, fake_encoder
from tests.waiting import DEADLINE_S, until


class _Backend:
    """Serves ``idle`` (listed, never loaded: its readiness says "not loaded", its index "not ready")
    and the translator's name (the gateway decodes it)."""

    runs_translators_in_gateway = False
    outage = ""

    def list_models(self) -> list[str]:
        return ["fake", "idle"]

    def metadata(self, name: str, version: str = "") -> SimpleNamespace:
        return SimpleNamespace(versions=["1"])

    def load_error(self, name: str) -> str:
        return ""

    def unready_reason(self, name: str) -> str:
        return "not loaded"

    async def model_ready(self, name: str, version: str = "") -> bool:
        return name != "idle"  # the translator's encoder and decoder entries are ready

    async def is_ready(self) -> bool:
        return True


def _entry() -> SimpleNamespace:
    return SimpleNamespace(
        metadata=lambda version="": SimpleNamespace(versions=["1"]),
        resolve_version=str,
        kiln={"translator": {"encoder": "fake_encoder", "decoder": "fake_decoder"}},
    )


def test_the_index_gives_a_dead_translator_the_reason_its_readiness_gives() -> None:
    decoder = FakeDecoder()
    scheduler = DecodingScheduler("fake", SPEC, fake_encoder, decoder, SchedulerConfig(worker_restarts=0))
    translator = Translator("fake", SimpleNamespace(), [scheduler])
    gateway = Gateway(_Backend(), SimpleNamespace(get=lambda name: _entry()))
    pool = {"fake": translator}
    gateway.translators = SimpleNamespace(translators=pool, failed={}, get=pool.get)
    gateway._translate_names = frozenset({"fake"})

    async def body() -> tuple[dict, dict, str]:
        await scheduler.start()
        try:
            healthy = {e["name"]: e for e in await repository_index(gateway)}
            decoder.fail_next = True
            scheduler._new_batch = _never
            with pytest.raises(Unavailable, match="decode worker"):
                await scheduler.submit([[5, 6]], config(2), timeout_s=DEADLINE_S)
            await until(lambda: bool(scheduler.died))
            dead = {e["name"]: e for e in await repository_index(gateway)}
            return healthy, dead, gateway.unready_reason("fake")
        finally:
            del scheduler._new_batch
            await scheduler.stop(grace_s=1.0)

    healthy, dead, why = asyncio.run(body())
    assert healthy["fake"] == {"name": "fake", "version": "1", "state": "READY", "reason": ""}
    assert "decode worker 'fake' stopped: MemoryError: no memory for a fresh batch" in why
    assert dead["fake"] == {"name": "fake", "version": "1", "state": "UNAVAILABLE", "reason": why}
    # a model of the backend's keeps the index's reason (its readiness's "not loaded" is not it)
    assert healthy["idle"]["reason"] == dead["idle"]["reason"] == "not ready"


def _never():
    raise MemoryError("no memory for a fresh batch")
