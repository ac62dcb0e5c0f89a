"""The bench's arithmetic on synthetic inputs whose right answer is known by hand: what each reported
figure counts, over which window, and against what.

Nothing here times anything; every figure checked is computed from made-up inputs.
"""

from __future__ import annotations

import asyncio

import pytest


def _words(texts: list[str]) -> int:
    """A token counter that is easy to follow by hand: words plus one EOS per translation."""
    return sum(len(t.split()) + 1 for t in texts)


def _flaky_translator(answers: dict[str, list[str]]):
    """A gateway stand-in answering text ``t``'s n-th request with ``answers[t][n]`` (the last one
    from then on)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    asked: dict[str, int] = {}

    async def translate(request):
        text = (await request.json())["texts"][0]
        n = asked[text] = asked.get(text, -1) + 1
        said = answers[text][min(n, len(answers[text]) - 1)]
        return JSONResponse({"translations": [{"hypotheses": [{"text": said}]}]})

    return Starlette(routes=[Route("/v1/models/{name}/translate", translate, methods=["POST"])])


def test_a_gateway_row_counts_the_tokens_and_bleu_of_what_was_served_not_of_the_inconsistency_marker():
    from bench.translation_gateway import _median_run
    from bench.translation_rows import bleu, make_row
    from tests.repo_fixtures import LiveServer

    long, short, dog = "le chat noir dort sur le lit", "le chat noir dort", "un chien aboie dans la rue"
    texts, refs = ["a", "b"], [long, dog]
    # 16 requests a client: 8 passes over the two texts; "a" is answered two ways, half and half
    app = _flaky_translator({"a": [long, short] * 4, "b": [dog]})
    with LiveServer(app) as live:
        hyps, seconds, latencies, served = _median_run(f"http://{live.url}", "m", texts, 4, 1, repeats=1)
    assert hyps[0].startswith("<inconsistent across rounds") and hyps[1] == dog
    assert len(latencies) == 16 and served[8:] == [dog] * 8
    assert sorted(served[:8]) == sorted([long, short] * 4)
    row = make_row("gateway (1 worker)", 4, 1, texts, hyps, refs, 2.0, _words, latencies, served=served)
    # a pass: "a" is 8 or 5 tokens (6.5 on average), "b" 7: 13.5 tokens in 2 seconds
    assert row["tokens_per_s"] == pytest.approx(6.75)
    assert row["exact_match"] == pytest.approx(75.0)  # 12 of the 16 answers equal their reference
    # each pass's BLEU (every text's n-th answer), averaged: 100 for the passes that said `long`
    passes = [[served[n], served[8 + n]] for n in range(8)]
    assert row["bleu"] == pytest.approx(sum(bleu(one, refs) for one in passes) / 8, abs=0.01)
    assert bleu([short, dog], refs) < row["bleu"] < 100
    assert row["hyps"] == hyps  # agreement still reads the marker: the text counts as differing


def test_a_consistent_run_of_several_passes_reads_as_one_pass():
    from bench.translation_rows import bleu, make_row

    texts, refs = ["a", "b", "c"], ["le chat noir", "un chien", "la maison bleue est grande"]
    hyps = ["le chat noir", "un petit chien", "la maison est grande"]
    once = make_row("x", 4, 1, texts, hyps, refs, 1.0, _words)
    served = [h for h in hyps for _ in range(4)]
    four = make_row("x", 4, 1, texts, hyps, refs, 1.0, _words, served=served)
    assert once["tokens_per_s"] == four["tokens_per_s"] == 4 + 4 + 5
    assert once["bleu"] == four["bleu"] == bleu(hyps, refs) and once["exact_match"] == four["exact_match"]
    with pytest.raises(ValueError, match="no whole number of passes"):
        make_row("x", 4, 1, texts, hyps, refs, 1.0, _words, served=served[:-1])


def test_the_paired_gateway_turn_counts_every_answer_it_was_served_once(monkeypatch):
    from bench import translation_paired

    async def gateway_run(url, model, texts, beam, concurrency, rounds, served, max_length):
        served += ["un chat", "un chat noir", "deux", "deux"]  # text 0 answered two ways, 2 passes
        return ["<inconsistent across rounds: 'un chat' then 'un chat noir'>", "deux"], 2.0, [0.1] * 4

    monkeypatch.setattr(translation_paired, "_gateway_run", gateway_run)
    w = type("W", (), {"texts": ["a", "b"], "count": staticmethod(_words)})()
    turns = translation_paired._Turns(w, 4, None, None, None, "http://x", {"gateway": "m"}, passes=2)
    assert turns.gateway("gateway") == (3 + 4 + 2 + 2) / 2.0
    assert turns.last["gateway"][1] == "deux"


def test_the_translation_load_client_hands_back_every_answer_grouped_by_text():
    from bench.translation_gateway import _gateway_run
    from tests.repo_fixtures import LiveServer

    app = _flaky_translator({"a": ["x", "y", "z"], "b": ["w"]})
    with LiveServer(app) as live:
        served: list[str] = []
        hyps, _, _ = asyncio.run(_gateway_run(f"http://{live.url}", "m", ["a", "b"], 4, 2, 3, served))
    assert served[3:] == ["w"] * 3 and sorted(served[:3]) == ["x", "y", "z"]
    assert hyps[0].startswith("<inconsistent across rounds")


@pytest.mark.parametrize("peak", [0.8, 5.0, 1000.0])
def test_perf_analyzers_open_loop_runs_at_exactly_half_the_peak_however_slow_the_server(monkeypatch, peak):
    from bench import perf_analyzer as pa

    asked = []

    def run_once(tool, url, model, concurrency, *, rate, probe=None, **kwargs):
        asked.append(rate)
        return {"throughput_rps": rate, "p50_ms": 10.0, "p99_ms": 15.0}

    monkeypatch.setattr(pa, "run_once", run_once)
    rows = [{"target": "gateway", "concurrency": 1, "throughput_rps": peak}]
    opened = pa.open_loop_at_half_peak(None, {"gateway": "g"}, "m", rows, rounds=1, progress=lambda _: None)
    assert asked == [peak / 2] and opened[0]["rate_rps"] == peak / 2
    assert opened[0]["delivered"] == 1.0 and opened[0]["p99_over_p50"] == 1.5
