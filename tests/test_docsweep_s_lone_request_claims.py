"""The numbers docs/performance-notes.md gives for when a lone request runs on the event loop are the
batcher's own constants: the gap was lowered from 0.2 to 0.1 ms in code while the notes kept 0.2."""

from __future__ import annotations

import re
from pathlib import Path

from serving.execution.batcher import INLINE_GAP_S
from serving.execution.loaded_model import CROWDING_LIMIT, INLINE_MAX_S

NOTES = Path(__file__).resolve().parent.parent / "docs" / "performance-notes.md"


def lone_request_account() -> str:
    """The notes' paragraph on the lone request, from its heading to the garbage collector's."""
    text = " ".join(NOTES.read_text().split())
    start = text.index("**A lone request**")
    return text[start : text.index("gc.freeze", start)]


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"performance-notes.md no longer says {pattern!r}"
    return float(match.group(1))


def test_the_gap_that_marks_a_request_as_backlogged_is_the_batchers() -> None:
    said = number(r"submitted within ([0-9.]+) ms of the end of a run on the loop", lone_request_account())
    assert said == INLINE_GAP_S * 1000


def test_the_longest_run_taken_on_the_loop_is_the_models_limit() -> None:
    said = number(r"the model's last lone run took at most ([0-9.]+) ms", lone_request_account())
    assert said == INLINE_MAX_S * 1000


def test_the_share_of_joined_runs_that_keeps_the_lone_session_off_is_the_limit() -> None:
    said = number(
        r"seldom joined by new work \(under ([0-9.]+) % of a moving average", lone_request_account()
    )
    assert said == CROWDING_LIMIT * 100
