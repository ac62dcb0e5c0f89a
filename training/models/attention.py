"""Attention for the Transformer translator, written out so its decoder step exports plain named tensors.

The functions are the arithmetic (training, the PyTorch reference and the exported graph compute the
same thing); the ``Fused*`` autograd functions export each of them as one ``kiln.ai`` custom node
(kernels in ``serving/decoding/attention.c``), which :meth:`training.models.transformer.Transformer.
fused_attention` switches on for an export. :class:`MultiHeadAttention` holds the projections and
picks between the two.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """Float[length, dim] in the concatenated [sin | cos] layout of tensor2tensor / fairseq / CTranslate2."""
    half = dim // 2
    scale = math.log(10000.0) / max(1, half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -scale)  # (half,)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * freqs[None, :]  # (L, half)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (L, dim)


def _neg_fill(scores: Tensor, mask: Tensor) -> Tensor:
    """Masked-out scores get the dtype's lowest value: a fully masked row stays finite (no NaN)."""
    return scores.masked_fill(~mask, torch.finfo(scores.dtype).min)


def mask_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Bool (B, K) -> additive (B, 1, 1, K): 0 where True, the dtype's lowest value where False.

    Adding it gives the scores :func:`_neg_fill` gives, bit for bit: ``s + 0`` is ``s``, and ``s +
    lowest`` rounds to ``lowest`` for any score below 1e31 in size. Built once per decoder step and
    shared by every layer, where a masked fill per attention cost a Where node each.
    """
    return torch.where(mask, 0.0, torch.finfo(dtype).min).to(dtype)[:, None, None, :]


def step_attention(
    q: Tensor, past_k: Tensor, past_v: Tensor, new_k: Tensor, new_v: Tensor, bias: Tensor
) -> Tensor:
    """One query per row over ``past ++ new`` keys without concatenating them (no copy of the cache).

    q: (B, D) projected queries; past_k/v: (B, h, P, hd); new_k/v: (B, h, 1, hd); bias: (B, 1, 1, P),
    0 where the row may attend its past entry and the dtype's lowest value where not (:func:`mask_bias`);
    a row always attends its new entry (adding 0 would change nothing). Returns the heads merged,
    (B, D), before the output projection. Only the scores ((B, h, 1, P+1), small) are concatenated; the
    weighted sum is split back over the two parts. The new entry's score and contribution are
    elementwise products: a batched GEMM of 1 x hd by hd x 1 per row and head costs far more than the
    arithmetic it does. Every shape here is a constant or read from a slice's end (``-1``), so the
    exported step computes no shapes at run time.
    """
    heads, head_dim = past_k.shape[1], past_k.shape[3]
    q = q.view(-1, heads, 1, head_dim)  # (B, h, 1, hd)
    scale = math.sqrt(head_dim)
    past_scores = q @ past_k.transpose(-2, -1) / scale + bias  # (B, h, 1, P)
    new_score = (q * new_k).sum(dim=-1, keepdim=True) / scale  # (B, h, 1, 1)
    weights = F.softmax(torch.cat([past_scores, new_score], dim=-1), dim=-1)  # (B, h, 1, P+1)
    out = weights[..., :-1] @ past_v + weights[..., -1:] * new_v  # (B, h, 1, hd)
    return out.reshape(-1, heads * head_dim)  # (B, D)


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """One query per row, rows grouped by sentence: q (R, D) projected queries, R = n * W rows, sentence
    i's W rows at i*W ... i*W+W-1; k, v: (n, h, K, hd) and bias (n, 1, 1, K) (:func:`step_attention`),
    once per sentence. Returns the heads merged, (R, D), before the output projection. With n == R (one
    row per sentence, W = 1) it is one query per row; with W > 1 each sentence's rows share one
    (W x hd) @ (hd x K) product per head instead of W (1 x hd) ones, and the sentence's keys and
    values are never copied per row."""
    n, heads, _, head_dim = k.shape
    q = q.view(n, -1, heads, head_dim).transpose(1, 2)  # (n, h, W, hd)
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim) + bias  # (n, h, W, K)
    out = F.softmax(scores, dim=-1) @ v  # (n, h, W, hd)
    return out.transpose(1, 2).reshape(-1, heads * head_dim)  # (R, D)


def indexed_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, row_place: Tensor) -> Tensor:
    """One query per row against a store of sentences: q (R, D) projected queries; k, v (N, h, K, hd)
    and bias (N, 1, 1, K), one place per sentence of the store; row_place (R,) int64, the place row
    ``r`` attends. Rows may come in any order and any number per place (the decode batch's rows in
    search order over its encoder store, without per-row copies). Returns the heads merged, (R, D)."""
    heads, head_dim = k.shape[1], k.shape[3]
    k, v, bias = k.index_select(0, row_place), v.index_select(0, row_place), bias.index_select(0, row_place)
    q = q.view(-1, heads, 1, head_dim)  # (R, h, 1, hd)
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim) + bias  # (R, h, 1, K)
    return (F.softmax(scores, dim=-1) @ v).reshape(-1, heads * head_dim)  # (R, D)


def encoder_attention(qkv: Tensor, bias: Tensor, dropout: nn.Module | None = None) -> Tensor:
    """Self-attention over each sentence's positions: qkv (B, S, 3h, hd), position s of sentence b's
    projected query, key and value heads side by side at [b, s]; bias (B, 1, 1, S) masks padded keys;
    ``dropout`` (training) on the weights. Returns the heads merged, (B*S, D), a sentence's positions
    consecutive."""
    b, length, three, head_dim = qkv.shape
    q, k, v = (
        qkv.view(b, length, 3, three // 3, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    )  # 3 x (B, h, S, hd)
    weights = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim) + bias, dim=-1)  # (B, h, S, S)
    out = (weights if dropout is None else dropout(weights)) @ v  # (B, h, S, hd)
    return out.transpose(1, 2).reshape(-1, three // 3 * head_dim)  # (B*S, D)


class FusedStepAttention(torch.autograd.Function):
    """:func:`step_attention`, exported as one ``kiln.ai::StepSelfAttention`` node (TorchScript
    exporter; the kernel: ``serving/decoding/attention.c``)."""

    @staticmethod
    def forward(ctx, q, past_k, past_v, new_k, new_v, bias):  # noqa: ANN001, ANN205 - autograd's signature
        return step_attention(q, past_k, past_v, new_k, new_v, bias)

    @staticmethod
    def symbolic(g, q, past_k, past_v, new_k, new_v, bias):  # noqa: ANN001, ANN205
        return g.op("kiln.ai::StepSelfAttention", q, past_k, past_v, new_k, new_v, bias).setType(q.type())


def step_attention_qkv(
    qkv: Tensor, past_k: Tensor, past_v: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`step_attention` over one q|k|v projection (B, 3D) and the boolean cache mask (B, P),
    returning the heads merged (B, D) and the new entry's keys and values (B, h, 1, hd): what the
    ``kiln.ai::StepAttentionQKV`` node computes (:class:`FusedStepAttentionQKV`)."""
    heads, head_dim = past_k.shape[1], past_k.shape[3]
    q, k, v = qkv.chunk(3, dim=-1)  # 3 x (B, D)
    new_k, new_v = k.reshape(-1, heads, 1, head_dim), v.reshape(-1, heads, 1, head_dim)
    return step_attention(q, past_k, past_v, new_k, new_v, mask_bias(mask, qkv.dtype)), new_k, new_v


class FusedStepAttentionQKV(torch.autograd.Function):
    """:func:`step_attention_qkv`, exported as one ``kiln.ai::StepAttentionQKV`` node: the layer's three
    projections as one GEMM before it, its cache outputs its own and its mask boolean, where the graph
    had two more GEMMs, two reshapes and (shared by the layers) a Where and an Unsqueeze."""

    @staticmethod
    def forward(ctx, qkv, past_k, past_v, mask):  # noqa: ANN001, ANN205 - autograd's signature
        return step_attention_qkv(qkv, past_k, past_v, mask)

    @staticmethod
    def symbolic(g, qkv, past_k, past_v, mask):  # noqa: ANN001, ANN205
        out, new_k, new_v = g.op("kiln.ai::StepAttentionQKV", qkv, past_k, past_v, mask, outputs=3)
        entry = past_k.type().with_sizes([None, None, 1, None])  # (B, h, 1, hd)
        return out.setType(qkv.type().with_sizes([None, None])), new_k.setType(entry), new_v.setType(entry)


class FusedGroupedAttention(torch.autograd.Function):
    """:func:`grouped_attention`, exported as one ``kiln.ai::GroupedCrossAttention`` node."""

    @staticmethod
    def forward(ctx, q, k, v, bias):  # noqa: ANN001, ANN205
        return grouped_attention(q, k, v, bias)

    @staticmethod
    def symbolic(g, q, k, v, bias):  # noqa: ANN001, ANN205
        return g.op("kiln.ai::GroupedCrossAttention", q, k, v, bias).setType(q.type())


class FusedIndexedAttention(torch.autograd.Function):
    """:func:`indexed_attention`, exported as one ``kiln.ai::IndexedCrossAttention`` node."""

    @staticmethod
    def forward(ctx, q, k, v, bias, row_place):  # noqa: ANN001, ANN205
        return indexed_attention(q, k, v, bias, row_place)

    @staticmethod
    def symbolic(g, q, k, v, bias, row_place):  # noqa: ANN001, ANN205
        return g.op("kiln.ai::IndexedCrossAttention", q, k, v, bias, row_place).setType(q.type())


class FusedIndexedAttentionMasked(torch.autograd.Function):
    """:func:`indexed_attention` with the boolean source mask (N, S) for its bias, exported as one
    ``kiln.ai::IndexedCrossAttentionMasked`` node (no Where and Unsqueeze before it)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, row_place):  # noqa: ANN001, ANN205
        return indexed_attention(q, k, v, mask_bias(mask, q.dtype), row_place)

    @staticmethod
    def symbolic(g, q, k, v, mask, row_place):  # noqa: ANN001, ANN205
        return g.op("kiln.ai::IndexedCrossAttentionMasked", q, k, v, mask, row_place).setType(q.type())


class FusedEncoderAttention(torch.autograd.Function):
    """:func:`encoder_attention`, exported as one ``kiln.ai::EncoderSelfAttention`` node."""

    @staticmethod
    def forward(ctx, qkv, bias):  # noqa: ANN001, ANN205
        return encoder_attention(qkv, bias)

    @staticmethod
    def symbolic(g, qkv, bias):  # noqa: ANN001, ANN205
        out = g.op("kiln.ai::EncoderSelfAttention", qkv, bias)
        return out.setType(qkv.type().with_sizes([None, None]))  # (B*S, D): rank 2, sizes at run time


class FusedAddNorm(torch.autograd.Function):
    """:func:`add_norm`, exported as one ``kiln.ai::AddLayerNorm`` node (outputs: the sum, its
    normalization): ONNX Runtime runs an Add and a LayerNormalization over a few dozen rows of 128 at
    ~7 and ~11 us each, mostly per-node overhead, nine times a decoder step."""

    @staticmethod
    def forward(ctx, x, y, weight, bias, eps):  # noqa: ANN001, ANN205 - autograd's signature
        total = x + y
        return total, F.layer_norm(total, (total.shape[-1],), weight, bias, eps)

    @staticmethod
    def symbolic(g, x, y, weight, bias, eps):  # noqa: ANN001, ANN205
        eps = g.op("Constant", value_t=torch.tensor([eps], dtype=torch.float32))
        total, normed = g.op("kiln.ai::AddLayerNorm", x, y, weight, bias, eps, outputs=2)
        return total.setType(x.type()), normed.setType(x.type())


def add_norm(x: Tensor, y: Tensor, norm: nn.LayerNorm, fused: bool = False) -> tuple[Tensor, Tensor]:
    """The pre-norm residual ``x + y`` and ``norm`` of it (what the next sublayer reads); with ``fused``,
    one ``kiln.ai::AddLayerNorm`` node in an export (:class:`FusedAddNorm`)."""
    if fused:
        return FusedAddNorm.apply(x, y, norm.weight, norm.bias, norm.eps)
    total = x + y
    return total, norm(total)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over precomputed or fresh keys/values.

    ``fused`` (set by :meth:`Transformer.fused_attention` for an export) routes the decoder step's two
    attentions through :class:`FusedStepAttention` / :class:`FusedGroupedAttention`: the same
    arithmetic in PyTorch, one custom node each in the exported graph."""

    fused = False
    split_qkv = False  # set by Transformer.fused_attention: attend_step_qkv's q, k, v as three products

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} is not divisible by heads={heads}")
        self.heads, self.head_dim = heads, d_model // heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def split(self, x: Tensor) -> Tensor:
        b, length, _ = x.shape  # (B, L, D)
        return x.view(b, length, self.heads, self.head_dim).transpose(1, 2)  # (B, h, L, hd)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.split(self.k_proj(x)), self.split(self.v_proj(x))  # 2 x (B, h, L, hd)

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """x: (B, T, D) queries; k, v: (B, h, K, hd); mask: Bool (B, T|1, K), True = may attend."""
        q = self.split(self.q_proj(x))  # (B, h, T, hd)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, h, T, K)
        weights = self.dropout(F.softmax(_neg_fill(scores, mask[:, None]), dim=-1))  # (B, h, T, K)
        return self._merge(weights @ v)

    def attend_step(
        self, x: Tensor, past_k: Tensor, past_v: Tensor, new_k: Tensor, new_v: Tensor, bias: Tensor
    ) -> Tensor:
        """x: (B, D) normed rows; the rest as :func:`step_attention` takes them. Returns (B, D). A decode
        step is inference only: no dropout (training runs :meth:`attend` over whole sequences)."""
        attention = FusedStepAttention.apply if self.fused else step_attention
        return self.out_proj(attention(self.q_proj(x), past_k, past_v, new_k, new_v, bias))

    def attend_step_qkv(
        self, x: Tensor, past_k: Tensor, past_v: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`attend_step` with the new entry projected here, as one product with the query, and the
        boolean cache mask (B, P): returns (B, D) and the new keys and values (B, h, 1, hd). With
        ``fused``, one ``kiln.ai::StepAttentionQKV`` node (:class:`FusedStepAttentionQKV`)."""
        projections = [self.q_proj, self.k_proj, self.v_proj]
        if self.split_qkv:
            qkv = torch.cat([p(x) for p in projections], dim=-1)  # (B, 3D)
        else:
            qkv = F.linear(x, *stacked(projections))  # (B, 3D)
        attention = FusedStepAttentionQKV.apply if self.fused else step_attention_qkv
        attended, new_k, new_v = attention(qkv, past_k, past_v, mask)
        return self.out_proj(attended), new_k, new_v

    def attend_rows(
        self, x: Tensor, k: Tensor, v: Tensor, bias: Tensor, row_place: Tensor | None = None
    ) -> Tensor:
        """x: (R, D) normed rows grouped by sentence; the rest as :func:`grouped_attention` takes them,
        or, with ``row_place``, as :func:`indexed_attention` does (rows in any order over a store).
        A boolean ``bias`` (N, S) is the source mask itself (the fused step's, with ``row_place``)."""
        q = self.q_proj(x)
        if bias.dtype == torch.bool:
            if row_place is not None and self.fused:
                return self.out_proj(FusedIndexedAttentionMasked.apply(q, k, v, bias, row_place))
            bias = mask_bias(bias, q.dtype)
        if row_place is not None:
            attention = FusedIndexedAttention.apply if self.fused else indexed_attention
            return self.out_proj(attention(q, k, v, bias, row_place))
        attention = FusedGroupedAttention.apply if self.fused else grouped_attention
        return self.out_proj(attention(q, k, v, bias))

    def attend_self(self, x: Tensor, bias: Tensor, kept: Tensor | None = None) -> Tensor:
        """Self-attention over each sentence's positions: x (B*S, D), sentence ``b``'s S positions at
        rows b*S ... b*S+S-1; bias (B, 1, 1, S). Queries, keys and values come from one product with
        the three projections side by side, and every product stays 2-D (one GEMM with its bias fused).

        With ``kept`` (int64 (T,), the rows of x's real positions among the B*S, :func:`packed_rows`),
        x holds only those T rows: the projections run on them, and only the attention sees the
        padded layout (zeros at padded positions, whose keys the bias masks). Returns x's rows."""
        b, length = bias.shape[0], bias.shape[-1]
        qkv = F.linear(x, *stacked([self.q_proj, self.k_proj, self.v_proj]))  # (B*S | T, 3D)
        if kept is not None:
            qkv = unpack_rows(qkv, kept, b * length)  # (B*S, 3D)
        qkv = qkv.view(b, length, 3 * self.heads, self.head_dim)  # (B, S, 3h, hd)
        if self.fused:
            attended = FusedEncoderAttention.apply(qkv, bias)  # (B*S, D)
        else:
            attended = encoder_attention(qkv, bias, self.dropout)  # (B*S, D)
        if kept is not None:
            attended = attended.index_select(0, kept)  # (T, D)
        return self.out_proj(attended)

    def split_row(self, x: Tensor) -> Tensor:
        """(B, D) -> (B, h, 1, hd): one position per row, kept 2-D up to here so that each projection
        is one GEMM with its bias fused (ONNX Runtime fuses MatMul + Add into Gemm only in 2-D)."""
        return x.view(-1, self.heads, 1, self.head_dim)

    def _merge(self, heads: Tensor) -> Tensor:
        """(B, h, T, hd) -> output projection of (B, T, D)."""
        return self.out_proj(heads.transpose(1, 2).flatten(2))  # (B, T, D)


def packed_rows(mask: Tensor) -> Tensor:
    """Bool (B, S) -> int64 (T,): the rows of a (B*S, ...) layout that hold real positions, in order.

    The encoder exported for serving (:meth:`Transformer.fused_attention`) runs its per-position
    products on these T rows only: a join of sentences of 3 to 12 tokens pads every one to 12, and
    on the demo Transformer a third of the encoder's products went to padding."""
    return mask.reshape(-1).nonzero().squeeze(1)


def unpack_rows(rows: Tensor, kept: Tensor, total: int) -> Tensor:
    """(T, F) rows back into the (total, F) layout they were packed from (:func:`packed_rows`), zero
    elsewhere."""
    return rows.new_zeros(total, rows.shape[1]).index_put((kept,), rows)


def stacked(projections: list[nn.Linear]) -> tuple[Tensor, Tensor]:
    """The weights and biases of ``projections`` side by side: one product computes them all (the
    exported graph gets one GEMM whose constant weights ONNX Runtime folds at load)."""
    weight = torch.cat([p.weight for p in projections])  # (n*D_out, D_in)
    return weight, torch.cat([p.bias for p in projections])
