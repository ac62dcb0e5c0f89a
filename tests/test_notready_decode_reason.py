"""A translator whose decode workers all died (restarting, or stopped for good) is not ready, and the
readiness answers now say why: ``/v2/health/ready`` said only "server is not ready" and the model's
``/ready`` "model 'x' is not ready", so an operator went through the log to find the dead worker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from serving.decoding.translator import Translator
from serving.errors import Unavailable
from serving.protocol.health import not_ready_reason
from tests.test_ha_decode_worker_restart import _gateway
from tests.test_scheduler import SPEC, FakeDecoder, config, fake_encoder
from tests.waiting import DEADLINE_S, until


def test_the_not_ready_answers_name_the_translator_whose_workers_died() -> None:
    decoder = FakeDecoder()
    policy = SchedulerConfig(worker_restarts=0)  # the first death stops it for good
    scheduler = DecodingScheduler("fake", SPEC, fake_encoder, decoder, policy)
    translator = Translator("fake", SimpleNamespace(), [scheduler])
    gateway = _gateway(translator)
    gateway._translate_names = frozenset({"fake"})
    gateway.backend.list_models = lambda: ["fake"]  # a translator the gateway runs: no load error

    async def body():
        await scheduler.start()
        healthy = not_ready_reason(gateway), gateway.unready_reason("fake")
        try:
            decoder.fail_next = True
            scheduler._new_batch = _never
            with pytest.raises(Unavailable, match="decode worker"):
                await scheduler.submit([[5, 6]], config(2), timeout_s=DEADLINE_S)
            await until(lambda: bool(scheduler.died))
            dead = not_ready_reason(gateway), gateway.unready_reason("fake")
            gateway.load_error = lambda name: "no such file" if name == "broken" else ""
            gateway.backend.list_models = lambda: ["broken", "fake"]  # a model that failed to load too
            return healthy, *dead, not_ready_reason(gateway)
        finally:
            del scheduler._new_batch
            await scheduler.stop(grace_s=1.0)

    healthy, server, model, both = asyncio.run(body())
    assert healthy == ("server is not ready", "")
    assert server.startswith("server is not ready: translator 'fake': decode worker ")
    assert "stopped: " in server and "MemoryError: no memory for a fresh batch" in server
    assert model == translator.stopped() and "MemoryError" in model
    assert both == f"server is not ready: model 'broken' failed to load: no such file; {server[21:]}"


def _never():
    raise MemoryError("no memory for a fresh batch")
