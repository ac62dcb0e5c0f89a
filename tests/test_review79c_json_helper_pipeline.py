"""The JSON helper is not left idle between small bodies (serving/protocol/json_offload.py, PIPELINE_BYTES).

Handed one body at a time (to order the waiting ones smallest first), the helper idled after each body
for its answer's way back to the event loop and the next body's way out, ~0.6 ms a body: ~15 % fewer
300 KB bodies a second than the pool's own queue of two gave. A small body at the head of the order is
handed on while the helper parses the one before it; a large one still waits its turn in the gateway.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future

from serving.protocol.json_offload import PIPELINE_BYTES, JsonOffload
from tests.waiting import DEADLINE_S, until


def _tag(tag: str) -> str:
    return tag


class _Pool:
    """A helper that records what it is handed and finishes a body when told."""

    def __init__(self) -> None:
        self.handed: list[str] = []
        self.works: list[Future] = []

    def submit(self, fn, *args):  # noqa: ANN001, ANN202
        self.handed.append(args[0])  # the body's tag (no deadline: no _unless_late before it)
        self.works.append(Future())
        return self.works[-1]


def _scenario(sizes: dict[str, int]) -> list[list[str]]:
    """What the helper holds after each body is finished, the bodies of ``sizes`` sent at once."""

    async def scenario() -> list[list[str]]:
        offload = JsonOffload(offload_bytes=1)
        pool = _Pool()
        offload._pool = pool  # type: ignore[assignment]
        calls = []
        for tag, size in sizes.items():
            calls.append(asyncio.ensure_future(offload.call(size, _tag, tag)))
            await asyncio.sleep(0)
        held = [list(pool.handed)]
        for i in range(len(sizes)):
            await until(lambda i=i: len(pool.works) > i)
            pool.works[i].set_result(pool.handed[i])
            await asyncio.sleep(0)  # the answer's settling, then the next hand-on
            await asyncio.sleep(0)
            held.append(list(pool.handed))
        assert await asyncio.wait_for(asyncio.gather(*calls), DEADLINE_S) == list(sizes)
        return held

    return asyncio.run(scenario())


def test_a_small_body_is_handed_on_while_the_helper_parses_the_one_before_it() -> None:
    held = _scenario({"a": 300_000, "b": 300_000, "c": 300_000})
    assert held[0] == ["a", "b"], "the second body waits in the helper's pipe, not in the gateway"
    assert held[1] == ["a", "b", "c"]


def test_a_large_body_still_waits_its_turn_in_the_gateway() -> None:
    held = _scenario({"busy": 300_000, "large": PIPELINE_BYTES + 1, "small": 300_000})
    # the large one is not handed on behind a body in hand; the small one, arriving after it, goes first
    assert held[0] == ["busy", "small"]
    assert held[1] == ["busy", "small"], "the large one waits while the helper still has a body"
    assert held[2] == ["busy", "small", "large"]
