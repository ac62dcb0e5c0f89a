"""A 504 names the time its request was given as a person reads it: three significant digits, whole
seconds from 100 up, never in exponent notation. Written ``:.3g``, a 3600 s ``--request-timeout-s``
read "request timed out after 3.6e+03 s" (``:g`` had read 3600); and the tokenizer thread's 504, given
what a large body's JSON parse left of the deadline (the translate route hands it on), still read
"the request's 29.9968 s deadline" where the model's read 30. Its detokenizing wait counted a request's
translations (n_best a text) as "texts": 64 texts of n_best 16 read "1024 texts to be detokenized"."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.decoding import beam_search as bs
from serving.decoding.translator import Translator
from serving.errors import DeadlineExceeded
from serving.execution.batcher import BatchPolicy
from tests.test_batcher import Recorder, busy_instance, rows, run, with_batcher
from tests.test_hc2_translate_deadline_waits import LONG, GatedCodec
from tests.test_scheduler import FakeDecoder, _with_scheduler, config
from tests.test_translator_interface import Codec, ScriptedScheduler
from tests.waiting import DEADLINE_S, until

HOUR_S = 3600.0


def _deadline_timers_fire_now(callback_name: str) -> None:
    """The running loop's timers that call ``callback_name`` fire after 50 ms, still handed their whole
    delay (the time a 504 names): an hour's deadline without the hour."""
    loop = asyncio.get_running_loop()
    real = loop.call_later

    def call_later(delay, callback, *args, **kwargs):  # noqa: ANN001, ANN202
        soon = getattr(callback, "__name__", "") == callback_name
        return real(min(delay, 0.05) if soon else delay, callback, *args, **kwargs)

    loop.call_later = call_later  # type: ignore[method-assign]


def test_a_model_504_after_an_hour_long_limit_names_3600_s_not_exponent_notation() -> None:
    gate = threading.Event()
    model = Recorder(gate)

    async def body(batcher):
        running = await busy_instance(batcher, model)  # the instance busy: the request waits its deadline
        _deadline_timers_fire_now("_expire")
        try:
            with pytest.raises(DeadlineExceeded) as refused:
                await asyncio.wait_for(batcher.submit(rows(1, 1), timeout_s=HOUR_S), DEADLINE_S)
        finally:
            gate.set()
        await running
        return refused.value.message

    message = run(with_batcher(BatchPolicy(max_batch_size=1, max_queue_size=4), model, body))
    assert message == "model 'm': request timed out after 3600 s"


def test_a_translation_504_after_an_hour_long_limit_names_3600_s_not_exponent_notation() -> None:
    decoder = FakeDecoder()
    decoder.gate = threading.Event()  # the search never ends before its deadline

    async def body(scheduler, recorder):
        _deadline_timers_fire_now("_expire_job")
        try:
            with pytest.raises(DeadlineExceeded) as refused:
                await asyncio.wait_for(scheduler.submit([[7, 8, 3]], config(2), timeout_s=HOUR_S), DEADLINE_S)
        finally:
            decoder.gate.set()
        return refused.value.message

    assert asyncio.run(_with_scheduler(body, decoder)) == "translation did not finish within 3600s"


def _translator(codec) -> Translator:  # noqa: ANN001
    service = Translator("t", codec, [ScriptedScheduler()])  # type: ignore[list-item]
    service._codec_thread = ThreadPoolExecutor(1)  # its tokenizer thread (start() starts schedulers too)
    return service


def _late_behind_a_busy_thread(service: Translator, codec, texts, options, timeout_s: float) -> str:  # noqa: ANN001
    """The 504 of a translation given ``timeout_s`` while the tokenizer thread is held by the one before."""

    async def scenario() -> str:
        first = asyncio.ensure_future(service.translate(texts, options))  # the server's 30 s
        await until(lambda: codec.begun == 1)  # it holds the tokenizer thread
        try:
            with pytest.raises(DeadlineExceeded) as late:  # (wait_for: a test that fails, never hangs)
                await asyncio.wait_for(service.translate(texts, options, timeout_s), DEADLINE_S / 3)
        finally:
            codec.gate.set()
        await first
        return late.value.message

    try:
        return asyncio.run(scenario())
    finally:
        codec.gate.set()
        service._codec_thread.shutdown(wait=True)


def test_the_tokenizer_504_of_a_request_given_what_its_json_parse_left_names_three_digits() -> None:
    codec = GatedCodec()
    # 0.1999632: what a 0.2 s --request-timeout-s left after the body's JSON parse (translate route)
    message = _late_behind_a_busy_thread(_translator(codec), codec, LONG, bs.DecodingOptions(), 0.1999632)
    assert message.startswith(
        "translation: the request's 0.2 s deadline passed while it waited for the tokenizer"
    )


class GatedDecodeCodec(Codec):
    """Detokenizes in the codec thread only once the test opens the gate; counts the decodes begun."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.begun = 0

    def decode(self, hypotheses: list[list[int]], batched: bool = True) -> list[str]:
        self.begun += 1
        assert self.gate.wait(DEADLINE_S), "the test never opened the gate"
        return super().decode(hypotheses, batched)


def test_the_detokenizer_504_counts_the_request_s_translations_not_texts() -> None:
    codec = GatedDecodeCodec()
    texts, options = ["a"] * 20, bs.DecodingOptions(beam_size=16, n_best=16)  # 320 translations
    message = _late_behind_a_busy_thread(_translator(codec), codec, texts, options, 0.2)
    assert "waited for the tokenizer thread (320 translations to be detokenized;" in message, message
