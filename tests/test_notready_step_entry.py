"""A translator decoded here whose encoder or decoder entry Triton does not serve (unloaded in
``--model-control-mode explicit``, or failed to load there) is not ready, and its readiness answer
now says which entry and why: it said "model 'x' is not ready" with no reason."""

from __future__ import annotations

from types import SimpleNamespace

from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from serving.decoding.translator import Translator
from tests.test_ha_decode_worker_restart import _gateway
from tests.test_scheduler import SPEC, FakeDecoder, fake_encoder

STEPS = {"translator": {"encoder": "fake_encoder", "decoder": "fake_decoder"}}


def _translating(why: dict[str, str]):
    scheduler = DecodingScheduler("fake", SPEC, fake_encoder, FakeDecoder(), SchedulerConfig())
    gateway = _gateway(Translator("fake", SimpleNamespace(), [scheduler]))
    gateway._translate_names = frozenset({"fake"})
    gateway.repository = SimpleNamespace(get=lambda name: SimpleNamespace(kiln=STEPS, path=None))
    gateway.backend.unready_reason = lambda step: why.get(step, "")  # Triton's word per entry
    return gateway


def test_the_reason_names_the_step_entry_triton_does_not_serve() -> None:
    gateway = _translating({"fake_decoder": "not loaded"})
    assert gateway.unready_reason("fake") == "its decoder entry 'fake_decoder': not loaded"
    assert gateway.index_reason("fake") == "its decoder entry 'fake_decoder': not loaded"


def test_both_entries_are_named_and_a_served_pair_gives_no_reason() -> None:
    both = {"fake_encoder": "failed to load: no such file", "fake_decoder": "not loaded"}
    assert _translating(both).unready_reason("fake") == (
        "its encoder entry 'fake_encoder': failed to load: no such file; its decoder entry 'fake_decoder': not loaded"
    )
    assert _translating({}).unready_reason("fake") == ""


def test_an_outage_is_named_before_the_entries() -> None:
    gateway = _translating({"fake_decoder": "not loaded"})
    gateway.backend.outage = "Triton at 127.0.0.1:1 is unreachable"
    assert gateway.unready_reason("fake") == "Triton at 127.0.0.1:1 is unreachable"
