"""The fused attention operators (serving/decoding/attention.c) against the PyTorch definitions they replace.

Each operator runs alone in an ONNX Runtime session (registered as the gateway registers them) and is
compared with ``step_attention`` / ``grouped_attention`` of training/models/attention.py on cases
the decoder step meets: an empty cache (the first step), masked past entries, a row whose past is all
masked (it attends only its new entry), sentences of several rows sharing their keys, one row per
sentence, and a head size that is not a multiple of the kernel's 8 lanes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from serving.decoding import native
from training.models.attention import (
    encoder_attention,
    grouped_attention,
    indexed_attention,
    mask_bias,
    step_attention,
)

pytestmark = pytest.mark.skipif(
    native.load() is None, reason="no C compiler here: the operators cannot be built"
)

LOWEST = np.finfo(np.float32).min


def _session(
    op: str,
    shapes: dict[str, list[int]],
    outputs: tuple[str, ...] = ("out",),
    types: dict[str, int] | None = None,
):
    node = helper.make_node(op, list(shapes), list(outputs), domain="kiln.ai")
    types = types or {}
    graph = helper.make_graph(
        [node],
        op,
        [helper.make_tensor_value_info(n, types.get(n, TensorProto.FLOAT), s) for n, s in shapes.items()],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("kiln.ai", 1)]
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    assert native.register_kernels(options)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _bias(mask: np.ndarray) -> np.ndarray:
    return mask_bias(torch.from_numpy(mask), torch.float32).numpy()


def past_mask(rng: np.random.Generator, rows: int, past: int) -> np.ndarray:
    """bool [rows, past] (True = may attend), ~70 % true; with more than one row and a past, row 0 all
    masked (a row whose whole past is masked attends only its new entry)."""
    mask = rng.random((rows, past)) > 0.3
    if rows > 1 and past:
        mask[0] = False
    return mask


def _self_feeds(
    rng: np.random.Generator, heads: int, head_dim: int, mask: np.ndarray
) -> dict[str, np.ndarray]:
    """StepSelfAttention's inputs for ``mask`` (bool [rows, past], True = may attend): random queries,
    past and new keys and values."""
    rows, past = mask.shape
    q = rng.standard_normal((rows, heads * head_dim), dtype=np.float32)
    past_k, past_v = (rng.standard_normal((rows, heads, past, head_dim), dtype=np.float32) for _ in range(2))
    new_k, new_v = (rng.standard_normal((rows, heads, 1, head_dim), dtype=np.float32) for _ in range(2))
    return {"q": q, "past_k": past_k, "past_v": past_v, "new_k": new_k, "new_v": new_v, "bias": _bias(mask)}


# (rows, heads, head_dim, past): the first step, masked pasts, a head size off the 8 lanes, one head
STEP_CASES = [(1, 2, 8, 0), (5, 2, 8, 3), (7, 4, 6, 9), (3, 1, 20, 1), (6, 4, 32, 7), (4, 4, 32, 16)]


@pytest.mark.parametrize(("rows", "heads", "head_dim", "past"), STEP_CASES)
def test_step_self_attention_matches_the_pytorch_step(rows, heads, head_dim, past):
    rng = np.random.default_rng(rows * 100 + past)
    width = heads * head_dim
    mask = past_mask(rng, rows, past)
    feeds = _self_feeds(rng, heads, head_dim, mask)
    session = _session("StepSelfAttention", {k: list(v.shape) for k, v in feeds.items()})
    got = session.run(None, feeds)[0]
    want = step_attention(*map(torch.from_numpy, feeds.values())).numpy()
    assert got.shape == (rows, width)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    if rows > 1 and past:  # all-masked past: masked entries weigh exactly 0, so the new entry's value
        np.testing.assert_array_equal(got[0], feeds["new_v"][0].reshape(-1))


@pytest.mark.parametrize(
    ("sentences", "per_sentence", "keys", "head_dim"),
    [(1, 1, 1, 12), (3, 4, 5, 12), (6, 1, 7, 12), (2, 8, 12, 12), (3, 4, 8, 32), (2, 4, 17, 32)],
)
def test_grouped_cross_attention_matches_the_pytorch_step(sentences, per_sentence, keys, head_dim):
    rng = np.random.default_rng(sentences * 10 + keys)
    heads = 2
    rows = sentences * per_sentence
    q = rng.standard_normal((rows, heads * head_dim), dtype=np.float32)
    k, v = (rng.standard_normal((sentences, heads, keys, head_dim), dtype=np.float32) for _ in range(2))
    mask = rng.random((sentences, keys)) > 0.25
    mask[:, 0] = True  # a source has at least one token
    feeds = {"q": q, "k": k, "v": v, "bias": _bias(mask)}
    session = _session("GroupedCrossAttention", {n: list(a.shape) for n, a in feeds.items()})
    got = session.run(None, feeds)[0]
    want = grouped_attention(*map(torch.from_numpy, feeds.values())).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    if per_sentence > 1:  # each row its own query: rows of one sentence differ
        assert not np.array_equal(got[0], got[1])


def _indexed_session(feeds: dict[str, np.ndarray]):
    shapes = {n: list(a.shape) for n, a in feeds.items()}
    return _session("IndexedCrossAttention", shapes, types={"row_place": TensorProto.INT64})


@pytest.mark.parametrize(
    ("places", "row_place", "keys", "head_dim"),
    [
        (1, [0], 1, 12),
        (3, [2, 2, 2, 2, 0, 1, 1, 1, 1], 5, 12),  # a joiner's one row between beams of four
        (5, [4, 0, 3], 7, 32),  # rows of places 1 and 2 absent (free or finished in the store)
        (2, [1, 0, 1, 0, 1], 17, 32),
        (4, [3, 3, 3, 3, 3, 3, 3, 3], 8, 6),  # one place, eight rows; a head size off the 8 lanes
    ],
)
def test_indexed_cross_attention_reads_each_rows_place_of_the_store(places, row_place, keys, head_dim):
    rng = np.random.default_rng(places * 10 + keys)
    heads, rows = 2, len(row_place)
    q = rng.standard_normal((rows, heads * head_dim), dtype=np.float32)
    k, v = (rng.standard_normal((places, heads, keys, head_dim), dtype=np.float32) for _ in range(2))
    mask = rng.random((places, keys)) > 0.25
    mask[:, 0] = True
    feeds = {"q": q, "k": k, "v": v, "bias": _bias(mask), "row_place": np.array(row_place, dtype=np.int64)}
    got = _indexed_session(feeds).run(None, feeds)[0]
    want = indexed_attention(*map(torch.from_numpy, feeds.values())).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    # the same rows as the grouped operator computes them over per-row copies of their places
    index = feeds["row_place"]
    per_row = {"q": q, "k": k[index], "v": v[index], "bias": feeds["bias"][index]}
    grouped = _session("GroupedCrossAttention", {n: list(a.shape) for n, a in per_row.items()})
    np.testing.assert_allclose(got, grouped.run(None, per_row)[0], rtol=0, atol=2e-6)


def _encoder_feeds(rng: np.random.Generator, lengths: list[int], keys: int, heads: int, head_dim: int):
    """EncoderSelfAttention's inputs: random projections of sentences of ``lengths`` padded to ``keys``."""
    qkv = rng.standard_normal((len(lengths), keys, 3 * heads, head_dim), dtype=np.float32)
    mask = np.arange(keys)[None, :] < np.array(lengths)[:, None]
    return {"qkv": qkv, "bias": _bias(mask)}


@pytest.mark.parametrize(
    ("lengths", "keys", "heads", "head_dim"),
    [
        ([1], 1, 1, 8),
        ([13, 9, 4, 13, 1], 13, 4, 32),  # the encoder's sentences of a join, padded to the longest
        ([20, 17], 20, 4, 32),  # keys past one block of 8 lanes, a tail
        ([5, 3, 6], 6, 2, 12),  # a head size off the 8 lanes
        ([2], 9, 3, 8),  # most of the sentence padding
    ],
)
def test_encoder_self_attention_matches_the_pytorch_encoder(lengths, keys, heads, head_dim):
    rng = np.random.default_rng(sum(lengths) + keys)
    feeds = _encoder_feeds(rng, lengths, keys, heads, head_dim)
    session = _session("EncoderSelfAttention", {n: list(a.shape) for n, a in feeds.items()})
    got = session.run(None, feeds)[0]
    want = encoder_attention(*map(torch.from_numpy, feeds.values())).numpy()
    assert got.shape == (len(lengths) * keys, heads * head_dim)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    # a padded position's key and value change nothing in its sentence's real positions
    if lengths[0] < keys:
        feeds["qkv"][0, lengths[0] :, heads:] = 1e6
        again = session.run(None, feeds)[0]
        np.testing.assert_array_equal(again[: lengths[0]], got[: lengths[0]])


def test_encoder_self_attention_of_inconsistent_shapes_gives_nan():
    feeds = {
        "qkv": np.ones((2, 5, 7, 8), np.float32),
        "bias": np.zeros((2, 1, 1, 5), np.float32),
    }  # 7: not 3h
    out = _session("EncoderSelfAttention", {n: list(a.shape) for n, a in feeds.items()}).run(None, feeds)[0]
    assert np.isnan(out).all()
    feeds = {"qkv": np.ones((2, 5, 6, 8), np.float32), "bias": np.zeros((3, 1, 1, 5), np.float32)}
    out = _session("EncoderSelfAttention", {n: list(a.shape) for n, a in feeds.items()}).run(None, feeds)[0]
    assert out.shape == (10, 16) and np.isnan(out).all()


def test_a_row_place_outside_the_store_gives_nan_rows_not_a_read_past_it():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((3, 16), dtype=np.float32)
    k, v = (rng.standard_normal((2, 2, 4, 8), dtype=np.float32) for _ in range(2))
    bias = np.zeros((2, 1, 1, 4), dtype=np.float32)
    for bad in ([0, 2, 1], [0, -1, 1]):
        feeds = {"q": q, "k": k, "v": v, "bias": bias, "row_place": np.array(bad, dtype=np.int64)}
        got = _indexed_session(feeds).run(None, feeds)[0]
        assert got.shape == (3, 16) and np.isnan(got).all()


def test_masked_entries_change_nothing_however_they_lie_and_whatever_they_hold():
    """Masked entries, in runs at either end (a row's columns from before its sentence joined; a
    place's padded source) or alone, weigh exactly 0 (their exp is below EXP_FLOOR): the outputs are
    those of PyTorch, and bit for bit the same whatever the masked keys and values hold."""
    rng = np.random.default_rng(11)
    rows, heads, head_dim, past = 4, 4, 32, 13
    width = heads * head_dim
    mask = np.ones((rows, past), dtype=bool)
    mask[0, :9] = False  # joined late: the leading columns masked
    mask[1, 4:] = False  # (a trailing run)
    mask[2, [0, 5, 12]] = False  # both ends and a hole
    mask[3] = False  # nothing but its new entry
    feeds = _self_feeds(rng, heads, head_dim, mask)
    session = _session("StepSelfAttention", {k: list(v.shape) for k, v in feeds.items()})
    got = session.run(None, feeds)[0]
    want = step_attention(*map(torch.from_numpy, feeds.values())).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    hidden = ~mask[:, None, :, None]
    for name in ("past_k", "past_v"):  # what lies under the mask: other finite values
        feeds[name] = np.where(
            hidden, rng.standard_normal(feeds[name].shape, dtype=np.float32) * 50, feeds[name]
        )
    np.testing.assert_array_equal(session.run(None, feeds)[0], got)

    sentences, per_sentence, keys = 3, 4, 10
    k, v = (rng.standard_normal((sentences, heads, keys, head_dim), dtype=np.float32) for _ in range(2))
    source = np.ones((sentences, keys), dtype=bool)
    source[0, 3:] = False  # a short source padded to the longest running
    source[1, 7:] = False
    cross_feeds = {
        "q": rng.standard_normal((sentences * per_sentence, width), dtype=np.float32),
        "k": k,
        "v": v,
        "bias": _bias(source),
    }
    cross = _session("GroupedCrossAttention", {n: list(a.shape) for n, a in cross_feeds.items()})
    got = cross.run(None, cross_feeds)[0]
    want = grouped_attention(*map(torch.from_numpy, cross_feeds.values())).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    padded = ~source[:, None, :, None]
    for name in ("k", "v"):
        cross_feeds[name] = np.where(
            padded, rng.standard_normal(cross_feeds[name].shape, dtype=np.float32) * 50, cross_feeds[name]
        )
    np.testing.assert_array_equal(cross.run(None, cross_feeds)[0], got)


def _add_norm(rows: int, width: int, seed: int = 0, eps: float = 1e-5) -> tuple[dict, list[np.ndarray]]:
    """AddLayerNorm's inputs (a residual stream and a sublayer's output at the decoder's scales, a
    trained-looking gain and bias) and its outputs."""
    rng = np.random.default_rng(seed)
    feeds = {
        "x": (rng.standard_normal((rows, width)) * 3 + 1).astype(np.float32),
        "y": rng.standard_normal((rows, width), dtype=np.float32),
        "gamma": (1 + 0.2 * rng.standard_normal(width)).astype(np.float32),
        "beta": (0.1 * rng.standard_normal(width)).astype(np.float32),
        "eps": np.array([eps], np.float32),
    }
    session = _session("AddLayerNorm", {n: list(a.shape) for n, a in feeds.items()}, ("sum", "normed"))
    return feeds, session.run(None, feeds)


@pytest.mark.parametrize(("rows", "width"), [(1, 128), (54, 128), (7, 32), (5, 20), (3, 3)])
def test_add_layer_norm_matches_pytorchs_residual_add_and_layer_norm(rows, width):
    """The pre-norm decoder's ``x = x + sublayer; h = norm(x)`` as one node: the sum exactly, the
    normalized rows to float rounding, at the decoder's width (8-lane blocks) and at widths with a
    tail or below one block."""
    feeds, (got_sum, got) = _add_norm(rows, width, seed=rows + width)
    x, y, gamma, beta = (torch.from_numpy(feeds[n]) for n in ("x", "y", "gamma", "beta"))
    want_sum = x + y
    want = torch.nn.functional.layer_norm(want_sum, (width,), gamma, beta, float(feeds["eps"][0]))
    np.testing.assert_array_equal(got_sum, want_sum.numpy())
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=3e-6)


def test_add_layer_norm_of_a_constant_row_is_its_bias_and_of_bad_shapes_nan():
    feeds, (_, normed) = _add_norm(2, 16)
    feeds["x"][:] = 4.0
    feeds["y"][:] = 1.0  # zero variance: (0 / sqrt(eps)) * gamma + beta
    session = _session("AddLayerNorm", {n: list(a.shape) for n, a in feeds.items()}, ("sum", "normed"))
    total, normed = session.run(None, feeds)
    assert (total == 5.0).all()
    np.testing.assert_allclose(normed, np.broadcast_to(feeds["beta"], normed.shape), rtol=0, atol=1e-6)
    feeds["gamma"] = feeds["gamma"][:8]  # a gain of another width than the rows'
    session = _session("AddLayerNorm", {n: list(a.shape) for n, a in feeds.items()}, ("sum", "normed"))
    total, normed = session.run(None, feeds)
    assert np.isnan(total).all() and np.isnan(normed).all()


PORTABLE_RUN = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from tests.test_attention_ops import _path_cases
np.savez(sys.argv[2], *_path_cases())
"""


def _path_cases() -> list[np.ndarray]:
    """Outputs of the attention operators at head size 32 (the vector path's where the CPU has AVX2):
    keys in a full block of 8 lanes and a tail, masked entries, one row attending only its new entry;
    and AddLayerNorm's at the decoder's width and at one with a tail."""
    rng = np.random.default_rng(7)
    rows, heads, head_dim, past = 6, 4, 32, 11
    mask = rng.random((rows, past)) > 0.3
    mask[0] = False
    feeds = _self_feeds(rng, heads, head_dim, mask)
    step = _session("StepSelfAttention", {k: list(v.shape) for k, v in feeds.items()}).run(None, feeds)[0]
    k, v = (rng.standard_normal((2, heads, 9, head_dim), dtype=np.float32) for _ in range(2))
    source = np.ones((2, 9), dtype=bool)
    source[1, 5:] = False
    cross_feeds = {"q": feeds["q"], "k": k, "v": v, "bias": _bias(source)}
    cross = _session("GroupedCrossAttention", {n: list(a.shape) for n, a in cross_feeds.items()})
    encoder = _encoder_feeds(rng, [11, 4, 9], 11, heads, head_dim)
    encoded = _session("EncoderSelfAttention", {n: list(a.shape) for n, a in encoder.items()}).run(
        None, encoder
    )
    return [step, cross.run(None, cross_feeds)[0], encoded[0], *_add_norm(9, 128)[1], *_add_norm(4, 20)[1]]


def test_the_portable_kernels_agree_with_the_vector_ones(tmp_path):
    """A process takes one path for good (AVX2 and FMA where the CPU has them, else the portable C;
    KILN_ATTENTION_PORTABLE=1 forces the latter): both give the same answers to float rounding."""
    out = tmp_path / "portable.npz"
    env = {**os.environ, "KILN_ATTENTION_PORTABLE": "1"}
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", PORTABLE_RUN, str(root), str(out)], env=env, check=True)
    portable = np.load(out)
    for index, here in enumerate(_path_cases()):
        np.testing.assert_allclose(here, portable[f"arr_{index}"], rtol=0, atol=2e-6)


def test_inconsistent_shapes_give_nan_not_a_crash_or_a_plausible_answer():
    """A kernel of this version cannot return an error: shapes the exported graphs never produce (here
    keys and values of different lengths) give NaN, which every parity check and the beam step refuse."""
    feeds = {
        "q": np.ones((2, 8), np.float32),
        "k": np.ones((2, 2, 3, 4), np.float32),
        "v": np.ones((2, 2, 5, 4), np.float32),
        "bias": np.zeros((2, 1, 1, 3), np.float32),
    }
    session = _session("GroupedCrossAttention", {n: list(a.shape) for n, a in feeds.items()})
    out = session.run(None, feeds)[0]
    assert out.shape == (2, 8) and np.isnan(out).all()


@pytest.mark.parametrize("middle", [(2, 1), (1, 3), (0, 1), (1, 0)])
@pytest.mark.parametrize("op", ["StepSelfAttention", "GroupedCrossAttention", "IndexedCrossAttention"])
def test_a_bias_of_the_wrong_middle_dimensions_gives_nan_not_a_read_of_its_wrong_entries(op, middle):
    """The bias is [n, 1, 1, keys]: its first and last dimensions were checked, its middle ones not, so
    [n, 2, 1, keys] read the first entries as if they were each row's (a plausible answer) and an empty
    one read past its buffer."""
    rng = np.random.default_rng(0)
    rows, heads, head_dim, keys = 2, 2, 8, 3
    bias = np.zeros((rows, *middle, keys), np.float32)
    q = rng.standard_normal((rows, heads * head_dim), dtype=np.float32)
    k, v = (rng.standard_normal((rows, heads, keys, head_dim), dtype=np.float32) for _ in range(2))
    if op == "StepSelfAttention":
        new = (rng.standard_normal((rows, heads, 1, head_dim), dtype=np.float32) for _ in range(2))
        feeds = dict(zip(["q", "past_k", "past_v", "new_k", "new_v"], [q, k, v, *new], strict=True))
    else:
        feeds = {"q": q, "k": k, "v": v}
    feeds["bias"] = bias
    if op == "IndexedCrossAttention":
        feeds["row_place"] = np.arange(rows, dtype=np.int64)
        session = _indexed_session(feeds)
    else:
        session = _session(op, {n: list(a.shape) for n, a in feeds.items()})
    out = session.run(None, feeds)[0]
    assert out.shape == (rows, heads * head_dim) and np.isnan(out).all()


def test_the_fused_graph_is_chosen_only_where_it_exists_and_needs_the_operators(tmp_path):
    plain = tmp_path / "1" / "model.onnx"
    plain.parent.mkdir()
    plain.write_bytes(b"")
    assert native.graph_to_open(plain) == plain
    fused = plain.with_name(native.FUSED_GRAPH)
    fused.write_bytes(b"")
    assert native.graph_to_open(plain) == fused
    options = ort.SessionOptions()
    assert native.session_options(plain, options) is options  # nothing to register for model.onnx
    assert native.session_options(fused, options) is options


def test_the_indexed_attention_exports_as_the_operator_and_runs_as_pytorch_computes_it(tmp_path):
    """TorchScript's exporter emits FusedIndexedAttention's ``symbolic`` node, which the operator runs."""
    from training.models.attention import FusedIndexedAttention

    class Attend(torch.nn.Module):
        def forward(self, q, k, v, bias, row_place):  # noqa: ANN001, ANN201
            return FusedIndexedAttention.apply(q, k, v, bias, row_place)

    rng = np.random.default_rng(3)
    feeds = {
        "q": rng.standard_normal((5, 64), dtype=np.float32),
        "k": rng.standard_normal((3, 2, 6, 32), dtype=np.float32),
        "v": rng.standard_normal((3, 2, 6, 32), dtype=np.float32),
        "bias": np.zeros((3, 1, 1, 6), dtype=np.float32),
        "row_place": np.array([2, 2, 0, 1, 1], dtype=np.int64),
    }
    session, ops = exported_session(Attend(), feeds, ("out",), tmp_path / "indexed.onnx")
    assert ops == ["IndexedCrossAttention"]
    want = indexed_attention(*map(torch.from_numpy, feeds.values())).numpy()
    np.testing.assert_allclose(session.run(None, feeds)[0], want, rtol=0, atol=2e-6)


def exported_session(
    module: torch.nn.Module, feeds: dict[str, np.ndarray], outputs: tuple[str, ...], path: Path
):
    """``module`` exported by TorchScript's exporter (the one that runs ``symbolic`` hooks) over
    ``feeds`` to ``path``, a session of it with the operators registered, and its graph's op types.
    The exporter warns that it is the legacy one, as export/onnx_export.py's call of it does, which
    silences it the same way."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(map(torch.from_numpy, feeds.values())),
            str(path),
            input_names=list(feeds),
            output_names=list(outputs),
            custom_opsets={"kiln.ai": 1},
            dynamo=False,
        )
    options = ort.SessionOptions()
    assert native.register_kernels(options)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, [n.op_type for n in onnx.load(str(path)).graph.node]
