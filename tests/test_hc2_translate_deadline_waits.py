"""A translation's deadline (the server's limit, or the client's shorter one) covers its wait for the
translator's tokenizer thread, where a long request's texts are tokenized one request after another:
past it the request is a 504 naming that wait, its texts dropped from the thread's queue, and the
decoding scheduler is given only what the deadline left. Before, the deadline started at the
scheduler's queue, after however long the requests before it took to tokenize."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.decoding import beam_search as bs
from serving.decoding.translator import INLINE_CHARS, Translator
from serving.errors import DeadlineExceeded
from tests.test_translator_interface import SERVER_S, Codec, ScriptedScheduler
from tests.waiting import DEADLINE_S, until

LONG = ["x" * 600] * (INLINE_CHARS // 600 + 1)  # tokenized in the codec thread, not on the event loop


class GatedCodec(Codec):
    """Encodes in the codec thread only once the test opens the gate; counts the encodes begun."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.begun = 0

    def encode(self, texts: list[str], batched: bool = True) -> list[list[int]]:
        self.begun += 1
        assert self.gate.wait(DEADLINE_S), "the test never opened the gate"
        return super().encode(texts, batched)


def test_a_translation_past_its_deadline_in_the_tokenizer_queue_is_a_504_and_leaves_the_queue() -> None:
    codec, scheduler = GatedCodec(), ScriptedScheduler()
    service = Translator("t", codec, [scheduler])  # type: ignore[list-item]
    service._codec_thread = ThreadPoolExecutor(1)  # its tokenizer thread (start() starts schedulers too)
    options = bs.DecodingOptions()

    async def scenario() -> tuple[DeadlineExceeded, list]:
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(service.translate(LONG, options))  # the server's 30 s
        await until(lambda: codec.begun == 1)  # it holds the tokenizer thread
        queued_at = loop.time()
        with pytest.raises(DeadlineExceeded) as late:  # (wait_for: a test that fails, never hangs)
            await asyncio.wait_for(service.translate(LONG, options, timeout_s=0.2), DEADLINE_S / 3)
        waited = loop.time() - queued_at
        codec.gate.set()
        answer = await first
        await loop.run_in_executor(service._codec_thread, int)  # the thread's queue gone through
        assert codec.begun == 1, "the late request's texts left the queue: they were never tokenized"
        assert answer[0][0].text == "cinq"
        return late.value, [waited, *scheduler.timeouts]

    try:
        error, (waited, *timeouts) = asyncio.run(scenario())
    finally:
        codec.gate.set()
        service._codec_thread.shutdown(wait=True)
    assert error.status == 504
    assert "the request's 0.2 s deadline passed while it waited for the tokenizer thread" in error.message
    assert len(timeouts) == 1 and timeouts[0] <= SERVER_S - waited, "the search got what the deadline left"
