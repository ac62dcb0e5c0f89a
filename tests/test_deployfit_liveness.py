"""The gateway Deployment's liveness probe restarts a gateway that only a restart can mend.

A translator whose decode workers have all stopped on an error is not ready "until the gateway
restarts" (README), but nothing restarted it: ``/v2/health/live`` stayed 200, so the kubelet kept the
pod running, unready for good, one replica fewer (every replica, an outage) until someone deleted it.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from serving.decoding.translator import Translator
from serving.gateway import Gateway
from serving.protocol import health
from tests.test_scheduler import SPEC, FakeDecoder, fake_encoder

ROOT = Path(__file__).resolve().parents[1]


class _LiveBackend:
    """A backend that is live and ready: only the translator's state decides."""

    runs_translators_in_gateway = False

    def is_live(self) -> bool:
        return True

    async def is_ready(self) -> bool:
        return True


def _liveness_path() -> str:
    deployment = yaml.safe_load((ROOT / "deploy/base/gateway/deployment.yaml").read_text())
    (gateway,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway"]
    return gateway["livenessProbe"]["httpGet"]["path"]


def test_a_gateway_whose_translator_lost_every_decode_worker_fails_the_deployments_liveness_probe() -> None:
    scheduler = DecodingScheduler("fake", SPEC, fake_encoder, FakeDecoder(), SchedulerConfig())
    gateway = Gateway(_LiveBackend(), None)
    gateway.translators = SimpleNamespace(
        translators={"fake": Translator("fake", SimpleNamespace(), [scheduler])}, failed={}
    )
    app = FastAPI()
    app.include_router(health.router)
    app.state.backend = gateway
    path = _liveness_path()
    with TestClient(app) as client:
        assert client.get(path).status_code == 200
        scheduler.died = "MemoryError: no memory for a fresh batch"
        assert client.get(path).status_code >= 400  # the kubelet counts 200-399 as success
    assert not gateway.is_live()  # gRPC's ServerLive asks the same


def test_a_translator_with_a_decode_worker_left_keeps_the_gateway_live() -> None:
    schedulers = [
        DecodingScheduler(f"fake#{i}", SPEC, fake_encoder, FakeDecoder(), SchedulerConfig()) for i in (0, 1)
    ]
    gateway = Gateway(_LiveBackend(), None)
    gateway.translators = SimpleNamespace(
        translators={"fake": Translator("fake", SimpleNamespace(), schedulers)}, failed={}
    )
    schedulers[0].died = "MemoryError: no memory for a fresh batch"
    assert gateway.is_live()
