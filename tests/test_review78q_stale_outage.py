"""A Triton outage a model's readiness probe found (``TritonBackend.outage``) was the server readiness
answer's reason for as long as a translator was not ready: the gateway's readiness then answered
without asking Triton, which is what clears the outage, so once Triton was back ``/v2/health/ready``
still said "Triton ... is unavailable" instead of naming the translator whose decode workers died."""

from __future__ import annotations

from types import SimpleNamespace

from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from serving.decoding.translator import Translator
from serving.gateway import Gateway
from serving.protocol.health import not_ready_reason
from tests.test_scheduler import SPEC, FakeDecoder, fake_encoder
from tests.test_tritonfail_p_model_ready_reason import DOWN, _backend


def test_the_server_readiness_names_a_dead_translator_not_a_triton_outage_that_has_ended(loop) -> None:
    state = ["up"]
    backend = _backend(state)
    probe = backend._call

    async def call(method: str, *args: object, **kwargs: object) -> object:
        if method == "is_server_ready" and state[0] == "up":
            return True
        return await probe(method, *args, **kwargs)

    backend._call = call  # type: ignore[method-assign]
    gateway = Gateway(backend, None)
    loop.run(gateway.backend._sync(force=True))
    scheduler = DecodingScheduler("fake", SPEC, fake_encoder, FakeDecoder(), SchedulerConfig())
    pool = {"fake": Translator("fake", SimpleNamespace(), [scheduler])}
    gateway.translators = SimpleNamespace(translators=pool, failed={}, get=pool.get)
    state[0] = "down"
    assert not loop.run(gateway.model_ready("double"))  # a probe during the outage records it
    assert not loop.run(gateway.is_ready()) and not_ready_reason(gateway) == f"server is not ready: {DOWN}"
    state[0] = "up"  # Triton back; the translator's only decode worker dies
    scheduler.died = "MemoryError: no memory for a fresh batch"
    assert not loop.run(gateway.is_ready())
    assert not_ready_reason(gateway) == (
        "server is not ready: translator 'fake': decode worker 'fake' stopped: "
        "MemoryError: no memory for a fresh batch"
    )
    assert gateway.outage == ""
    scheduler.died = ""  # it serves again: ready, as before
    assert loop.run(gateway.is_ready())
