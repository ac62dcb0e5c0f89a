"""The CUDA-graph paths checked against ONNX Runtime's documented and implemented behaviour, on the CPU.

ONNX Runtime's CUDA provider keeps a session's CUDA graphs per calling thread (``PerThreadContext``)
and captures a thread's graph only after regular runs on that thread (1 or 2, by release; per graph id
in the newer graph manager). The fake sessions here count runs per thread and graph id the same way,
so the tests show where a capture would happen on a GPU: on the thread that serves, before a request
needs it. ``OrtValue.update_inplace`` copies bytes without checking the dtype or shape, so a bound
session must check its feeds itself.
"""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from serving.decoding import resident_layout
from serving.execution.bound_session import BoundSession
from tests.test_resident_decoder import built, model, six_on_the_device  # noqa: F401 - fixtures

REGULAR_RUNS = 2  # the CUDA provider's min_num_runs_before_cuda_graph_capture_ (ONNX Runtime >= 1.18)


def _add_one(rows_dim: str | int = "N") -> ort.InferenceSession:
    """A session computing ``y = x + 1`` over ``x`` float [rows, 3]."""
    one = helper.make_tensor("one", onnx.TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "add_one",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [rows_dim, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [rows_dim, 3])],
        [one],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


class GraphCapturingSession:
    """A CPU session that reports ``enable_cuda_graph`` and captures as the CUDA provider does: per
    calling thread, after :data:`REGULAR_RUNS` regular runs there."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.runs: Counter[int] = Counter()
        self.captured: set[int] = set()

    def run_with_iobinding(self, binding, run_options=None) -> None:
        thread = threading.get_ident()
        if thread not in self.captured and self.runs[thread] >= REGULAR_RUNS:
            self.captured.add(thread)
        self.runs[thread] += 1
        self.session.run_with_iobinding(binding, run_options)

    def get_provider_options(self) -> dict:
        return {"CUDAExecutionProvider": {"enable_cuda_graph": "1"}, "CPUExecutionProvider": {}}

    def __getattr__(self, name: str):
        return getattr(self.session, name)


def _on_thread(work):
    out, thread = {}, threading.Thread(target=lambda: out.update(value=work(), ident=threading.get_ident()))
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    return out["value"], out["ident"]


def test_a_bound_session_captures_its_graph_on_each_thread_at_its_first_run_there():
    fake = GraphCapturingSession(_add_one())
    bound = BoundSession(fake, 4, "cpu")
    zeros = {"x": np.zeros((4, 3), dtype=np.float32)}
    bound.run(None, zeros)  # the load's warm-up: it must capture, so a failure is the load's
    assert threading.get_ident() in fake.captured
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    (got,), serving = _on_thread(lambda: bound.run(["y"], {"x": x}))  # the batch thread's first batch
    assert serving in fake.captured
    np.testing.assert_array_equal(got, x + 1)
    before = fake.runs[threading.get_ident()]
    (again,) = bound.run(None, {"x": x * 2})
    assert fake.runs[threading.get_ident()] == before + 1  # captured: one replay a batch
    np.testing.assert_array_equal(again, x * 2 + 1)


def test_a_bound_session_without_graphs_runs_once_a_batch():
    fake = GraphCapturingSession(_add_one())
    fake.get_provider_options = lambda: {"CPUExecutionProvider": {}}
    bound = BoundSession(fake, 2, "cpu")
    (got,) = bound.run(None, {"x": np.ones((2, 3), dtype=np.float32)})
    assert sum(fake.runs.values()) == 1 and not fake.captured
    np.testing.assert_array_equal(got, np.full((2, 3), 2.0, dtype=np.float32))


@pytest.mark.parametrize(
    "feed",
    [np.ones((4, 3), dtype=np.float64), np.ones((4, 3), dtype=np.int32), np.ones((3, 4), dtype=np.float32)],
    ids=["float64", "int32", "transposed"],
)
def test_a_bound_session_refuses_a_feed_its_buffer_would_take_as_other_bytes(feed):
    bound = BoundSession(_add_one(), 4, "cpu")
    with pytest.raises(ValueError, match="input 'x': the bound buffer is float32 \\[4, 3\\]"):
        bound.run(None, {"x": feed})


def test_a_resident_layout_is_warmed_on_the_thread_that_steps_it(model, monkeypatch):  # noqa: F811
    """``prepare`` runs on an executor thread, the steps on the decode thread: on a GPU each layout's
    graphs must be captured on the decode thread too, before its first step there."""
    spec, encoder, host, on_device, sources = model
    events: list[tuple[str, int, resident_layout.LayoutKey]] = []
    warm, step = resident_layout.Layout.warm, resident_layout.Layout.step

    def logged(kind, real):
        def run(self, *args):
            events.append((kind, threading.get_ident(), self.key))
            return real(self, *args)

        return run

    monkeypatch.setattr(resident_layout.Layout, "warm", logged("warm", warm))
    monkeypatch.setattr(resident_layout.Layout, "step", logged("step", step))
    decoder = resident_layout.ResidentDecoder(on_device.model_file, spec, "cpu")
    decoder.cuda_graphs = True  # as on the CUDA provider (the CPU one ignores the graph ids)
    _, executor = _on_thread(lambda: decoder.prepare(16))
    assert {key for kind, thread, key in events if kind == "warm"} == set(decoder.layouts)
    got, want = six_on_the_device(spec, encoder, host, decoder, sources)
    assert [[h.tokens for h in g] for g in got] == [[h.tokens for h in w] for w in want]
    here = threading.get_ident()
    stepped = {key for kind, thread, key in events if kind == "step" and thread == here}
    assert stepped
    for key in stepped:
        mine = [kind for kind, thread, k in events if thread == here and k == key]
        assert mine[0] == "warm", f"layout {key} stepped on the decode thread before it was warmed there"
    assert executor != here
