"""Triton's generate extension (``/generate``, ``/generate_stream``) and the streaming answers, as a
client of Triton's would meet them: what a request may hold, and what comes back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from serving.errors import BadRequest
from serving.execution.base import ModelMetadata, TensorMeta
from serving.protocol.generate import generate_request
from serving.protocol.send_watch import SendWatch

TRANSLATOR = ModelMetadata(
    "transformer",
    ["1"],
    "python",
    [TensorMeta("text", "BYTES", [-1, 1])],
    [TensorMeta("translation", "BYTES", [-1, -1])],
)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"text": "five", "id": "a\ud800"}, "'id' is not valid Unicode"),
        ({"text": "five", "foo": "\udfff"}, "parameter 'foo' is not valid Unicode"),
        ({"text": "five", "parameters": {"length_penalty": "gnmt\ud800"}}, "parameter 'length_penalty'"),
        ({"text": "five", "x\ud800": 1}, "parameter name 'x\\ud800' is not valid Unicode"),
    ],
)
def test_a_lone_surrogate_in_the_id_or_a_parameter_is_a_400_not_a_500_through_tritons_client(
    body, words
) -> None:
    """JSON lets a client write ``"\\ud800"``, which no UTF-8 carries: through ``--backend triton``
    tritonclient raised UnicodeEncodeError on the id or the parameter (a 500); now a 400 naming it."""
    with pytest.raises(BadRequest, match="lone surrogate") as refused:
        generate_request(body, TRANSLATOR, "1")
    assert words in str(refused.value)


def test_valid_unicode_ids_and_parameters_pass_unchanged() -> None:
    body = {"text": "été", "id": "é\n\u2028😀", "parameters": {"tag": "日本"}, "beam_size": 2}
    request = generate_request(body, TRANSLATOR, "1")
    assert request.request_id == "é\n\u2028😀"
    assert request.parameters == {"tag": "日本", "beam_size": 2}
    assert request.inputs["text"].tolist() == [["été".encode()]]


class _Buffer:
    """A transport whose write buffer a test sets: what a client takes shrinks it, answers grow it."""

    def __init__(self, buffered: int) -> None:
        self.buffered = buffered

    def get_write_buffer_size(self) -> int:
        return self.buffered


@pytest.fixture
def clock() -> Iterator[tuple[asyncio.AbstractEventLoop, Callable[[float], None]]]:
    """An event loop whose clock moves only when the test says (its timers fire exactly then)."""
    loop = asyncio.new_event_loop()
    now = [1000.0]
    loop.time = lambda: now[0]  # type: ignore[method-assign]

    def advance(seconds: float) -> None:  # in steps of 10 ms, as a real clock passes each timer's time
        for _ in range(round(seconds / 0.01)):
            now[0] += 0.01
            loop.run_until_complete(asyncio.sleep(0))

    yield loop, advance
    loop.close()


def test_a_client_that_reads_while_other_answers_are_written_is_not_cut(clock) -> None:
    """A paused gRPC connection's other calls go on answering: the buffer grew by more than the client
    took, so the one look at the send timeout saw no take and cut a client that was reading. The
    allowance runs from the client's last take (nginx's send_timeout), however the buffer grew since."""
    loop, advance = clock
    transport, aborted = _Buffer(100_000), []
    watch = SendWatch(loop, transport, 2.0, lambda: aborted.append(True))
    advance(0.3)
    transport.buffered -= 1_000  # the client takes a little
    advance(0.7)
    transport.buffered += 5_000  # another call's answer is written
    advance(1.29)  # 2.29 s: past the send timeout from the pause, not from the take
    assert not aborted
    advance(0.52)  # nothing taken since: cut within a look (0.5 s here) of one allowance after the take
    assert aborted
    watch.stop()


def test_a_client_that_takes_nothing_is_cut_at_the_send_timeout_however_the_buffer_grows(clock) -> None:
    loop, advance = clock
    transport, aborted = _Buffer(100_000), []
    SendWatch(loop, transport, 2.0, lambda: aborted.append(True))
    for _ in range(3):
        advance(0.6)
        transport.buffered += 2_000
    advance(0.19)
    assert not aborted
    advance(0.02)
    assert aborted


def test_a_stopped_watch_never_cuts(clock) -> None:
    loop, advance = clock
    aborted: list[bool] = []
    watch = SendWatch(loop, _Buffer(10), 2.0, lambda: aborted.append(True))
    advance(1.0)
    watch.stop()
    advance(5.0)
    assert not aborted and watch.timer is None


def test_a_rest_translate_text_holding_a_lone_surrogate_is_a_400_naming_it() -> None:
    from serving.errors import BadRequest
    from serving.protocol.translate import parse_body

    with pytest.raises(BadRequest, match=r"texts\[1\] is not valid Unicode \(lone surrogate\)"):
        parse_body(b'{"texts": ["five", "\\ud800"]}')
    assert parse_body(b'{"texts": ["caf\\u00e9"]}').texts == ["café"]
