"""``kiln_decoder_rows_per_step``, which the gateway's autoscaler reads (deploy/base/gateway/hpa.yaml:
``kiln_decoder_rows_per_step_mean``, target 48 beam rows a step), counts the rows each decoder step
really ran, also over a compiled call of several steps in which the rows change (a sentence widening
from one row to its beam, finished ones leaving). It recorded the call's first step's rows for each of
its steps: a lone beam-4 translation, one call from its first step, read 1 row a step instead of ~4."""

from __future__ import annotations

import asyncio
import re

import pytest

from serving.decoding import native_decoder
from serving.decoding import step_spec as sp
from serving.decoding import stepper as st
from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from serving.metrics import GatewayMetrics
from tests.test_native_decoder import _config, transformer_runners

pytestmark = pytest.mark.skipif(
    native_decoder._c_library() is None, reason="no C compiler or no ONNX Runtime C library here"
)


@pytest.fixture(scope="module")
def model(exported_translator_models, tmp_path_factory):
    """(spec, encoder runner, Python decoder runner, compiled decoder runner, source ids)."""
    spec, runner, sources = transformer_runners(exported_translator_models, tmp_path_factory, "rows", 6)
    compiled = native_decoder.attach(runner("decoder"))
    assert compiled.native is not None
    return spec, runner("encoder"), runner("decoder"), compiled, sources


def rows_of_each_step(spec, encoder, decoder, source, config) -> list[int]:
    """The rows each decoder step of ``source``'s search runs: the Python step, one step a call."""
    batch = st.DecodeBatch(spec, indexed=True)
    batch.join([0], encoder(sp.encoder_inputs(spec, [source])), [config], [len(source) + 1])
    rows = []
    while batch.size:
        rows.append(batch.live_rows)
        batch.step(decoder)
    return rows


async def translate_alone(scheduler: DecodingScheduler, source: list[int], config) -> None:  # noqa: ANN001
    await scheduler.start()
    try:
        await scheduler.submit([source], config)
    finally:
        await scheduler.stop(grace_s=1.0)


def rows_series(metrics: GatewayMetrics, model: str) -> tuple[float, float]:
    """(sum, count) of ``kiln_decoder_rows_per_step`` for ``model`` in one scrape."""
    page = metrics.render().decode()
    found = dict(
        re.findall(rf'^kiln_decoder_rows_per_step_(sum|count){{model="{model}"}} (\S+)$', page, re.M)
    )
    return float(found["sum"]), float(found["count"])


def test_the_rows_per_step_series_counts_the_rows_every_step_of_a_compiled_call_ran(model) -> None:
    spec, encoder, python, compiled, sources = model
    config = _config(spec, 4)
    for source in sources[:3]:
        want = rows_of_each_step(spec, encoder, python, source, config)
        assert want[0] == 1 and max(want) == 4, want  # widens from one row to its beam: rows change
        metrics = GatewayMetrics()
        scheduler = DecodingScheduler(
            "transformer", spec, encoder, compiled, SchedulerConfig(), observer=metrics
        )

        asyncio.run(translate_alone(scheduler, source, config))
        total, steps = rows_series(metrics, "transformer")
        assert steps == len(want)  # the same search, step for step
        assert total == sum(want), f"{total / steps:.2f} rows a step recorded, {sum(want) / steps:.2f} ran"
