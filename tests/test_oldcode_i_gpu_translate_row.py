"""PROFILE=gpu's translate row (bench.gpu_serving.translate_row) against a stand-in gateway: it is
measured at all (it raised on the load client's answer), its tokens/s are one pass's, and its mean
decoder step is the measured run's, not the warm pass's."""

from __future__ import annotations

import math
import types

from bench import scrape


def _stand_in(slow_requests: int):
    """A gateway stand-in: each translate request answers its text upper-cased and records one decoder
    step of 4 rows, 100 ms for the first ``slow_requests`` (a warm pass's lazy loading), 1 ms after."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    state = {"steps": 0, "seconds": 0.0}

    async def translate(request):
        text = (await request.json())["texts"][0]
        state["steps"] += 1
        state["seconds"] += 0.1 if state["steps"] <= slow_requests else 0.001
        return JSONResponse({"translations": [{"hypotheses": [{"text": text.upper()}]}]})

    async def metrics(request):
        steps, seconds = state["steps"], state["seconds"]
        return PlainTextResponse(
            f'kiln_decoder_step_seconds_sum{{model="m"}} {seconds}\n'
            f'kiln_decoder_step_seconds_count{{model="m"}} {steps}\n'
            f'kiln_decoder_rows_per_step_sum{{model="m"}} {4 * steps}\n'
            f'kiln_decoder_rows_per_step_count{{model="m"}} {steps}\n'
        )

    routes = [Route("/v1/models/{name}/translate", translate, methods=["POST"]), Route("/metrics", metrics)]
    return Starlette(routes=routes), state


def test_the_gpu_profiles_translate_row_is_measured_over_one_pass_without_the_warm_pass_steps():
    from bench.gpu_serving import Layout, translate_row
    from tests.repo_fixtures import LiveServer

    app, state = _stand_in(slow_requests=64)  # all within the warm pass
    texts = [f"text {i}" for i in range(128)]
    work = types.SimpleNamespace(
        model="m", texts=texts, count=lambda ts: sum(len(t.split()) + 1 for t in ts), max_length=64
    )
    with LiveServer(app) as live:
        row = translate_row(Layout("cpu", 1, f"http://{live.url}", "unused"), work, 32)
    assert row["hyps"] == [t.upper() for t in texts]
    assert state["steps"] > 2 * len(texts)  # the warm pass and several passes of the measured run
    # one pass's tokens (3 a sentence: two words and EOS) in one pass's seconds
    assert math.isclose(row["tokens_per_s"], 3 * row["sentences_per_s"])
    assert math.isclose(row["step_ms"], 1.0) and row["rows_per_step"] == 4.0


def test_step_means_since_an_earlier_scrape_are_those_of_the_steps_between():
    page = 'kiln_decoder_step_seconds_sum{{model="m"}} {}\nkiln_decoder_step_seconds_count{{model="m"}} {}\n'
    before, after = page.format(1.0, 10), page.format(1.03, 40)  # 10 steps of 100 ms, then 30 of 1 ms
    assert math.isclose(scrape.step_means(after, "m", since=before)["step_ms"], 1.0)
    assert math.isclose(scrape.step_means(after, "m")["step_ms"], 1e3 * 1.03 / 40)
    assert math.isnan(scrape.step_means(after, "m", since=after)["step_ms"])  # nothing ran between
