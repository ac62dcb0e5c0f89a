"""A batch that fails on a client's input (a ``BadRequest``: ONNX Runtime refusing a value) is logged
as one line at INFO, not as an ERROR with a traceback: bad input is answered with its 400, and a client
sending it in a loop must not fill the server's error log. A real failure still logs its traceback."""

from __future__ import annotations

import logging

import pytest

from serving.errors import BadRequest
from serving.execution.batcher import BatchPolicy
from tests.test_batcher import rows, run, with_batcher


def _failing(error: Exception):
    def model(instance, inputs):
        raise error

    return model


@pytest.mark.parametrize(
    ("error", "level", "traceback"),
    [
        (BadRequest("model 'm': ONNX Runtime refused the input: index out of range"), logging.INFO, False),
        (RuntimeError("the runtime failed"), logging.ERROR, True),
    ],
)
def test_a_batch_failing_on_its_input_logs_one_line_and_a_real_failure_its_traceback(
    caplog, error, level, traceback
):
    async def body(batcher):
        with pytest.raises(type(error)):
            await batcher.submit(rows(1, 1))

    with caplog.at_level(logging.INFO, logger="serving.execution.batcher"):
        run(with_batcher(BatchPolicy(max_batch_size=4), _failing(error), body))
    (record,) = [r for r in caplog.records if "batch of 1 request(s)" in r.getMessage()]
    assert record.levelno == level
    assert (record.exc_info is not None) is traceback
    if not traceback:
        assert record.getMessage() == f"model m: batch of 1 request(s) refused: {error}"
