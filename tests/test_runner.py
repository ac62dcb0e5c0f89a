"""The ONNX Runtime runner every graph of the gateway and the decoding engine runs through."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from serving.execution.runner import session_runner

BIG = 24 * 2**20  # float32 elements: a 96 MiB intermediate, far past glibc's largest heap allocation


def _doubling_graph() -> bytes:
    """``y = Relu(2 x)``: the product is an intermediate, held in ONNX Runtime's CPU arena."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n"])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n"])
    two = helper.make_tensor("two", onnx.TensorProto.FLOAT, [], [2.0])
    nodes = [helper.make_node("Mul", ["x", "two"], ["doubled"]), helper.make_node("Relu", ["doubled"], ["y"])]
    graph = helper.make_graph(nodes, "doubling", [x], [y], initializer=[two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_a_runners_shrink_hands_back_what_a_larger_run_grew_its_arena_to_and_it_runs_on() -> None:
    """The arena keeps a large run's intermediate for the next run; ``shrink`` (one small run with ONNX
    Runtime's ``memory.enable_memory_arena_shrinkage``) gives it back, and the runner answers as before."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    run = session_runner(ort.InferenceSession(_doubling_graph(), options, providers=["CPUExecutionProvider"]))
    small = {"x": np.array([-1.0, 3.0], dtype=np.float32)}
    run(small)
    before = _resident_bytes()
    big = run({"x": np.ones(BIG, dtype=np.float32)})
    assert float(big["y"][-1]) == 2.0
    del big
    grown = _resident_bytes()
    assert grown - before > 64 * 2**20  # the intermediate stays in the arena (the input and output went)
    run.shrink(small)
    assert grown - _resident_bytes() > 64 * 2**20
    assert run(small)["y"].tolist() == [0.0, 6.0]
