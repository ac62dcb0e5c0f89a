"""A translator whose encoder or decoder entry Triton unloaded (``--model-control-mode explicit``,
``--triton-translate scheduler``): the step call's NOT_FOUND is a 503 with Retry-After saying the
translator is not ready, as its ready route says, not a 500 with a traceback a batch; once the entry
is loaded again the same decode worker serves."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from serving.errors import ModelNotFound, Unavailable
from tests.test_scheduler import FakeDecoder, _with_scheduler, config, solo

GONE = "Triton: Request for unknown model: 'fake_decoder' has no available versions"


class UnloadedDecoder(FakeDecoder):
    """A decoder entry Triton answers NOT_FOUND for while ``unloaded`` holds."""

    def __init__(self) -> None:
        super().__init__()
        self.unloaded = True

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.unloaded:
            raise ModelNotFound(GONE)
        return super().__call__(inputs)


def test_a_decoder_entry_unloaded_mid_decode_is_a_503_with_retry_after_and_the_worker_serves_once_reloaded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    decoder = UnloadedDecoder()

    async def body(scheduler, _):
        with pytest.raises(Unavailable) as refused:
            await scheduler.submit([[5, 6]], config(2))
        decoder.unloaded = False  # loaded again
        return refused.value, await scheduler.submit([[5, 6]], config(2))

    with caplog.at_level(logging.WARNING, logger="serving.decoding.scheduler"):
        error, answer = asyncio.run(_with_scheduler(body, decoder))
    assert error.message == f"translator 'fake' is not ready: {GONE}"
    assert error.retry_after == 1.0
    assert answer == [solo([5, 6], config(2))]
    assert not [r for r in caplog.records if r.exc_info], "one warning line, not a traceback a batch"


def test_an_encoder_entry_unloaded_is_a_503_with_retry_after() -> None:
    def unloaded_encoder(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise ModelNotFound(GONE.replace("decoder", "encoder"))

    async def body(scheduler, _):
        with pytest.raises(Unavailable) as refused:
            await scheduler.submit([[5, 6]], config(2))
        return refused.value

    error = asyncio.run(_with_scheduler(body, encoder=unloaded_encoder))
    assert "translator 'fake' is not ready" in error.message and "fake_encoder" in error.message
    assert error.retry_after == 1.0
