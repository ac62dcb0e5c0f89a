"""What the compiled decode kernels' bindings refuse before handing buffers to C.

``kiln_beam_step`` reads each row's ``eos_id`` column and the rows a row index names without bounds
checks; ``compiled_step.step`` checked the log-probs, but ``kiln_decode_step`` (the compiled decoder
call) packed its log-probs buffer straight for the kernel: a step spec whose ``eos_id`` is not below its
``vocab_size`` then decoded silently (no hypotheses, no error; a heap over-read under AddressSanitizer)
where the Python step raised. And ``kiln_decode_step`` reads ``DecodeBatch.stop`` as an int64 at its
address: a bool or int32 flag was read 8 bytes wide, past its end. A decoder with more than 64 inputs
and outputs (Kiln's Transformer from 10 decoder layers: 6 a layer and 6 more) failed every compiled
call instead of stepping at all. ``compiled_step.native_step`` handed a beam wider than the kernel's
scratch (``native.MAX_BEAM``) to it: a stack overflow, the process killed by SIGSEGV.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from serving.decoding import beam_search as bs
from serving.decoding import compiled_step, native, native_decoder
from serving.decoding import step_spec as sp
from serving.decoding import stepper as st
from serving.execution.onnxruntime import onnxruntime_runner

pytestmark = pytest.mark.skipif(native.load() is None, reason="no C compiler here: no compiled kernels")

VOCAB, BOS = 5, 0


def _table_decoder(path, caches: int = 0) -> None:
    """A decoder whose log-probs row is a table row picked by the fed token (EOS likelier), with
    ``caches`` int64 caches (and a cache mask) that only record the fed tokens."""
    table = np.log(np.full((VOCAB, VOCAB), 1 / VOCAB, np.float32))
    table[:, 2] = -0.5
    nodes = [helper.make_node("Gather", ["table", "tokens"], ["log_probs"], axis=0)]
    inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["rows"])]
    outputs = [helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["rows", VOCAB])]
    if caches:
        nodes.append(helper.make_node("Unsqueeze", ["tokens", "one"], ["entry"]))
        inputs.append(helper.make_tensor_value_info("cache_mask", TensorProto.BOOL, ["rows", "past"]))
    for i in range(caches):
        nodes.append(helper.make_node("Identity", ["entry"], [f"new_c{i}"]))
        inputs.append(helper.make_tensor_value_info(f"c{i}", TensorProto.INT64, ["rows", "past"]))
        outputs.append(helper.make_tensor_value_info(f"new_c{i}", TensorProto.INT64, ["rows", 1]))
    weights = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
    ]
    graph = helper.make_graph(nodes, "decoder", inputs, outputs, weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _spec(eos: int, caches: int = 0) -> sp.StepSpec:
    cache_inputs = [
        {"name": f"c{i}", "role": "cache", "output": f"new_c{i}", "axis": 1, "init_shape": [-1, 0]}
        for i in range(caches)
    ]
    mask = [{"name": "cache_mask", "role": "cache_mask"}] if caches else []
    parsed = sp.parse_step_spec(
        {
            "pad_id": 1,
            "bos_id": BOS,
            "eos_id": min(eos, VOCAB - 1),  # parsing refuses one past the vocabulary: the kernels must too
            "vocab_size": VOCAB,
            "encoder": {"inputs": ["src_ids"], "outputs": ["memory"]},
            "decoder": {
                "inputs": [{"name": "tokens", "role": "tokens"}, *mask, *cache_inputs],
                "outputs": ["log_probs", *(f"new_c{i}" for i in range(caches))],
            },
            "dtypes": {name: "int64" for i in range(caches) for name in (f"c{i}", f"new_c{i}")},
        }
    )
    return dataclasses.replace(parsed, eos_id=eos)


def _decode(spec: sp.StepSpec, decoder, stop=None) -> list:
    batch = st.DecodeBatch(spec)
    batch.stop = stop
    config = bs.BeamConfig(beam_size=2, max_length=3, eos_id=spec.eos_id, bos_id=BOS)
    batch.join([0], {"memory": np.zeros((1, 1), np.float32)}, [config], [1])
    finished = []
    while batch.live_rows:
        finished += batch.step(decoder, steps=4)
    return finished


def _runners(tmp_path, caches: int = 0, compiled: bool = True):
    """The table decoder's Python runner and its compiled one."""
    path = str(tmp_path / "decoder.onnx")
    _table_decoder(path, caches)

    def runner():
        run = onnxruntime_runner(ort.InferenceSession(path, providers=["CPUExecutionProvider"]))
        run.model_file = path
        return run

    attached = native_decoder.attach(runner())
    assert (attached.native is not None) == compiled
    return runner(), attached


needs_c_api = pytest.mark.skipif(native_decoder._c_library() is None, reason="no ONNX Runtime C library here")


@needs_c_api
def test_an_eos_id_past_the_vocabulary_is_refused_by_the_compiled_decoder_call_as_by_the_python_step(
    tmp_path,
):
    python, compiled = _runners(tmp_path)
    (done,) = _decode(_spec(eos=2), compiled)  # a valid spec decodes
    assert done.error is None and done.hypotheses[0].tokens[-1] == 2
    for decoder in (python, compiled):  # Python step, then the compiled call: the same refusal
        with pytest.raises(ValueError, match=r"V > eos_id=5"):
            _decode(_spec(eos=VOCAB), decoder)


def test_pack_refuses_log_probs_the_kernel_would_read_past():
    beams = bs.start([bs.BeamConfig(beam_size=2, max_length=4, eos_id=VOCAB, bos_id=BOS)] * 2)
    with pytest.raises(ValueError, match="eos_id"):  # the EOS column is past each row
        compiled_step.pack(beams, np.zeros((2, VOCAB), np.float32))
    beams = bs.start([bs.BeamConfig(beam_size=2, max_length=4, eos_id=2, bos_id=BOS)] * 2)
    for log_probs, row_index in (
        (np.zeros((1, VOCAB), np.float32), None),  # fewer rows than the search
        (np.zeros((2, VOCAB), np.float32), np.array([0, 2])),  # a row index past the rows
        (np.zeros((2, VOCAB), np.float32), np.array([0, -1])),
        (np.zeros(2 * VOCAB, np.float32), None),  # not [rows, V]
    ):
        with pytest.raises(ValueError, match="log_probs must be"):
            compiled_step.pack(beams, log_probs, row_index)
        with pytest.raises(ValueError, match="log_probs must be"):
            compiled_step.native_step(native.load(), beams, log_probs, row_index)


@needs_c_api
def test_a_stop_flag_the_compiled_call_cannot_read_as_int64_is_refused(tmp_path):
    _, compiled = _runners(tmp_path)
    (done,) = _decode(_spec(eos=2), compiled, stop=np.zeros(1, np.int64))  # the flag it takes
    assert done.error is None and done.hypotheses
    for stop in (np.zeros(1, np.bool_), np.zeros(1, np.int32), np.zeros(0, np.int64), [0]):
        with pytest.raises(ValueError, match="DecodeBatch.stop must be an int64 array"):
            _decode(_spec(eos=2), compiled, stop=stop)


def _hypotheses(finished: list) -> list:
    return [
        (done.key, [(h.tokens, h.score, h.normalized_score) for h in done.hypotheses]) for done in finished
    ]


@needs_c_api
def test_a_decoder_with_more_than_64_inputs_and_outputs_steps_compiled_as_in_python(tmp_path):
    """31 caches: 33 inputs and 32 outputs, as a Transformer of 10 decoder layers has 45 and 21."""
    python, compiled = _runners(tmp_path, caches=31)
    want = _hypotheses(_decode(_spec(eos=2, caches=31), python))
    assert want and _hypotheses(_decode(_spec(eos=2, caches=31), compiled)) == want


@needs_c_api
def test_a_decoder_with_more_inputs_and_outputs_than_the_compiled_call_takes_steps_in_python(tmp_path):
    python, attached = _runners(tmp_path, caches=129, compiled=False)  # 131 inputs, 130 outputs
    want = _hypotheses(_decode(_spec(eos=2, caches=129), python))
    assert want and _hypotheses(_decode(_spec(eos=2, caches=129), attached)) == want


def test_a_cache_is_not_grown_into_a_read_only_buffer():
    """The kernel wrote into a read-only ``out`` (here the memory of an immutable bytes object) where
    numpy refuses to."""
    old = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    new = np.ones((2, 1, 2), np.float32)
    raw = bytes(2 * 4 * 2 * 4)
    out = np.frombuffer(raw, np.float32).reshape(2, 4, 2)
    with pytest.raises(ValueError, match="read-only"):
        compiled_step.gather_grow(old, new, np.array([1, 0]), 1, 0, out)
    assert raw == bytes(len(raw))


WIDE_BEAM = """
import numpy as np
from serving.decoding import beam_search as bs, compiled_step, native
beams = bs.start([bs.BeamConfig(beam_size=BEAM, max_length=6)])
beams = bs.step(beams, np.log(np.full((1, 200), 1 / 200, np.float32))).beams  # BEAM rows
log_probs = np.random.default_rng(0).standard_normal((BEAM, 200)).astype(np.float32)
try:
    got = compiled_step.native_step(native.load(), beams, log_probs)
except ValueError as exc:
    print("refused:", exc)
else:
    want = bs.step(beams, log_probs)
    assert np.array_equal(got.tokens, want.tokens) and np.array_equal(got.origin, want.origin)
    print("stepped")
"""


@pytest.mark.parametrize(("beam", "said"), [(32, "stepped"), (48, "refused: a beam of 48 is wider")])
def test_the_compiled_step_refuses_a_beam_wider_than_its_scratch_instead_of_overrunning_it(beam, said):
    """In a process of its own: the overrun killed it."""
    script = WIDE_BEAM.replace("BEAM", str(beam))
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert run.stdout.startswith(said)
