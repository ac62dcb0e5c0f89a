"""The step graph's mask-reading operators (export version 12, serving/decoding/attention.c):

``StepAttentionQKV`` takes the layer's one q|k|v projection and the boolean cache mask and hands out
the new cache entry; ``IndexedCrossAttentionMasked`` takes the boolean source mask. Each must give
exactly what the bias operators they replace give over the same rows (the scores are the same bit
for bit: a mask's bias is 0 or the lowest float), and the exported decoder step must use them with
no Where, Unsqueeze or Reshape left, answering as the PyTorch step does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto

from serving.decoding import native
from tests.test_attention_ops import (
    STEP_CASES,
    _bias,
    _indexed_session,
    _session,
    exported_session,
    past_mask,
)
from training.models.attention import FusedStepAttentionQKV, step_attention_qkv

pytestmark = pytest.mark.skipif(
    native.load() is None, reason="no C compiler here: the operators cannot be built"
)

BOOL = TensorProto.BOOL


def _qkv_session(shapes: dict[str, list[int]]):
    return _session("StepAttentionQKV", shapes, outputs=("out", "new_k", "new_v"), types={"cache_mask": BOOL})


@pytest.mark.parametrize(("rows", "heads", "head_dim", "past"), [*STEP_CASES, (9, 4, 32, 16)])
def test_step_attention_qkv_is_the_bias_operator_over_the_same_rows(rows, heads, head_dim, past):
    rng = np.random.default_rng(rows * 31 + past)
    width = heads * head_dim
    mask = past_mask(rng, rows, past)
    qkv = rng.standard_normal((rows, 3 * width), dtype=np.float32)
    past_k, past_v = (rng.standard_normal((rows, heads, past, head_dim), dtype=np.float32) for _ in range(2))
    feeds = {"qkv": qkv, "past_k": past_k, "past_v": past_v, "cache_mask": mask}
    out, new_k, new_v = _qkv_session({k: list(v.shape) for k, v in feeds.items()}).run(None, feeds)

    entry = (rows, heads, 1, head_dim)
    np.testing.assert_array_equal(new_k, qkv[:, width : 2 * width].reshape(entry))
    np.testing.assert_array_equal(new_v, qkv[:, 2 * width :].reshape(entry))
    old = {
        "q": np.ascontiguousarray(qkv[:, :width]),
        "past_k": past_k,
        "past_v": past_v,
        "new_k": new_k,
        "new_v": new_v,
        "bias": _bias(mask),
    }
    want = _session("StepSelfAttention", {k: list(v.shape) for k, v in old.items()}).run(None, old)[0]
    np.testing.assert_array_equal(out, want)  # bit for bit
    torch_out = step_attention_qkv(*map(torch.from_numpy, feeds.values()))
    np.testing.assert_allclose(out, torch_out[0].numpy(), rtol=0, atol=2e-6)


@pytest.mark.parametrize(
    ("places", "row_place", "keys", "head_dim"),
    [
        (1, [0], 1, 12),
        (3, [2, 2, 2, 2, 0, 1, 1, 1, 1], 5, 12),
        (5, [4, 0, 3], 7, 32),
        (2, [1, 0, 1, 0, 1], 17, 32),
    ],
)
def test_indexed_cross_attention_masked_is_the_bias_operator(places, row_place, keys, head_dim):
    rng = np.random.default_rng(places * 7 + keys)
    heads, rows = 2, len(row_place)
    q = rng.standard_normal((rows, heads * head_dim), dtype=np.float32)
    k, v = (rng.standard_normal((places, heads, keys, head_dim), dtype=np.float32) for _ in range(2))
    mask = rng.random((places, keys)) > 0.3
    mask[:, 0] = True
    place = np.array(row_place, dtype=np.int64)
    feeds = {"q": q, "k": k, "v": v, "src_mask": mask, "row_place": place}
    session = _session(
        "IndexedCrossAttentionMasked",
        {n: list(a.shape) for n, a in feeds.items()},
        types={"src_mask": BOOL, "row_place": TensorProto.INT64},
    )
    got = session.run(None, feeds)[0]
    old = {"q": q, "k": k, "v": v, "bias": _bias(mask), "row_place": place}
    np.testing.assert_array_equal(got, _indexed_session(old).run(None, old)[0])


def test_inconsistent_shapes_give_nan_in_every_output_not_a_crash():
    """A mask as long as no cache, and a q|k|v of the wrong width: every output NaN (the entries too,
    or the next step would carry a plausible cache)."""
    rows, heads, hd = 3, 2, 8
    for qkv_width, mask_keys in ((3 * heads * hd, 5), (2 * heads * hd, 4)):
        feeds = {
            "qkv": np.ones((rows, qkv_width), np.float32),
            "past_k": np.ones((rows, heads, 4, hd), np.float32),
            "past_v": np.ones((rows, heads, 4, hd), np.float32),
            "cache_mask": np.ones((rows, mask_keys), bool),
        }
        outs = _qkv_session({k: list(v.shape) for k, v in feeds.items()}).run(None, feeds)
        assert outs[0].shape == (rows, heads * hd) and outs[1].shape == (rows, heads, 1, hd)
        assert all(np.isnan(o).all() for o in outs)
    feeds = {
        "q": np.ones((2, 16), np.float32),
        "k": np.ones((2, 2, 3, 8), np.float32),
        "v": np.ones((2, 2, 3, 8), np.float32),
        "src_mask": np.ones((2, 4), bool),  # 4 keys for 3
        "row_place": np.array([0, 1], np.int64),
    }
    session = _session(
        "IndexedCrossAttentionMasked",
        {n: list(a.shape) for n, a in feeds.items()},
        types={"src_mask": BOOL, "row_place": TensorProto.INT64},
    )
    assert np.isnan(session.run(None, feeds)[0]).all()


def test_the_qkv_attention_exports_as_one_node_with_three_outputs(tmp_path):
    class Attend(torch.nn.Module):
        def forward(self, qkv, past_k, past_v, mask):  # noqa: ANN001, ANN201
            return FusedStepAttentionQKV.apply(qkv, past_k, past_v, mask)

    rng = np.random.default_rng(5)
    feeds = {
        "qkv": rng.standard_normal((4, 3 * 64), dtype=np.float32),
        "past_k": rng.standard_normal((4, 2, 5, 32), dtype=np.float32),
        "past_v": rng.standard_normal((4, 2, 5, 32), dtype=np.float32),
        "cache_mask": rng.random((4, 5)) > 0.4,
    }
    session, ops = exported_session(Attend(), feeds, ("out", "new_k", "new_v"), tmp_path / "qkv.onnx")
    assert ops == ["StepAttentionQKV"]
    got = session.run(None, feeds)
    want = step_attention_qkv(*map(torch.from_numpy, feeds.values()))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=0, atol=2e-6)
