"""Pre-norm encoder-decoder Transformer with an explicit key/value cache (docs/translator-interface.md).

A standard layout that CTranslate2's ``TransformerSpec`` represents (pre-norm, final LayerNorms,
sinusoidal [sin | cos] positions, embeddings scaled by sqrt(d_model), ReLU FFN, biased attention
projections, bias-free output projection). Attention is written out rather than taken from
``nn.Transformer`` so that the cache inputs and outputs of the decoder step are plain named tensors.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.models.attention import (
    MultiHeadAttention,
    add_norm,
    mask_bias,
    packed_rows,
    sinusoidal_positions,
    stacked,
    unpack_rows,
)
from training.models.checks import require_ints, require_probability, require_special_ids
from training.models.registry import register_model


@dataclass
class TransformerConfig:
    src_vocab_size: int = 1000
    tgt_vocab_size: int = 1000
    d_model: int = 128
    heads: int = 4
    ffn_dim: int = 512
    encoder_layers: int = 3
    decoder_layers: int = 3
    dropout: float = 0.1
    share_embeddings: bool = False  # one table for source and target (needs a joint vocabulary)
    tie_output: bool = True  # output projection = target embedding
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    max_positions: int = 256

    def __post_init__(self) -> None:
        """Sizes named before any tensor exists: heads must divide d_model, and d_model must be even
        (the positions are its [sin | cos] halves); an encoder may have no layer, a decoder not; the
        special ids distinct and inside the vocabularies."""
        sizes = ("src_vocab_size", "tgt_vocab_size", "d_model", "heads", "ffn_dim", "decoder_layers")
        require_ints(self, (*sizes, "max_positions"))
        require_ints(self, ("encoder_layers",), minimum=0)
        require_special_ids(self, ("src_vocab_size", "tgt_vocab_size"))
        require_probability(self, "dropout")
        if self.d_model % self.heads:
            raise ValueError(
                f"TransformerConfig: d_model={self.d_model} is not divisible by heads={self.heads}"
            )
        if self.d_model % 2:
            raise ValueError(
                f"TransformerConfig.d_model must be even (sinusoidal positions are [sin | cos] halves), "
                f"got {self.d_model}"
            )


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, ffn_dim: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(d_model, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, d_model)
        )


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(cfg.d_model)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.dropout)
        self.ffn_norm = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    fused = False  # set by Transformer.fused_attention: residual adds and norms as custom nodes

    def forward(
        self, x: Tensor, h: Tensor, src_bias: Tensor, next_norm: nn.LayerNorm, kept: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """x: (B*S, D), a sentence's S positions consecutive, and h = self_attn_norm(x); src_bias
        (B, 1, 1, S) (:func:`mask_bias`); with ``kept``, x and h hold only the real positions' rows
        (:meth:`MultiHeadAttention.attend_self`). Returns x and ``next_norm`` of it (the next layer's
        first norm, or the encoder's last): each residual add and the norm after it are one :func:`add_norm`."""
        attended = self.dropout(self.self_attn.attend_self(h, src_bias, kept))  # (B*S | T, D)
        x, h = add_norm(x, attended, self.ffn_norm, self.fused)
        return add_norm(x, self.dropout(self.ffn(h)), next_norm, self.fused)  # (B*S, D) twice


class DecoderLayer(nn.Module):
    fused = False  # set by Transformer.fused_attention: step's residual adds and norms as custom nodes

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(cfg.d_model)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.dropout)
        self.cross_attn_norm = nn.LayerNorm(cfg.d_model)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.dropout)
        self.ffn_norm = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, self_mask: Tensor, cross_k: Tensor, cross_v: Tensor, src_mask: Tensor
    ) -> Tensor:
        """Teacher forcing: x (B, T, D); self_mask Bool (B, T, T); cross_k/v (B, h, S, hd); src_mask
        Bool (B, S). Returns (B, T, D)."""
        h = self.self_attn_norm(x)  # (B, T, D)
        k, v = self.self_attn.keys_values(h)  # (B, h, T, hd)
        x = x + self.dropout(self.self_attn.attend(h, k, v, self_mask))  # (B, T, D)
        h = self.cross_attn_norm(x)
        x = x + self.dropout(self.cross_attn.attend(h, cross_k, cross_v, src_mask[:, None, :]))  # (B, T, D)
        return x + self.dropout(self.ffn(self.ffn_norm(x)))  # (B, T, D)

    def step(
        self,
        x: Tensor,
        h: Tensor,
        cache: tuple[Tensor, Tensor],
        self_bias: Tensor,
        cross: tuple[Tensor, Tensor],
        src_bias: Tensor,
        next_norm: nn.LayerNorm,
        row_place: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One token per row: x (B, D) and h = self_attn_norm(x); cache: past k/v (B, h, P, hd);
        self_bias (B, 1, 1, P); cross: k/v (n, h, S, hd) and src_bias (n, 1, 1, S), once per row (n = B)
        or once per sentence of B = n * W rows grouped by sentence (:meth:`MultiHeadAttention.attend_rows`).
        The fused step (:meth:`Transformer.fused_attention`) passes the boolean masks instead, (B, P) and
        (n, S), which its operators read as these biases (the layer's q|k|v then one product).
        Returns x (B, D), ``next_norm`` of it (the next layer's first norm, or the final one) and new
        k/v (B, h, 1, hd): each residual add and the norm after it are one :func:`add_norm`."""
        if self_bias.dtype == torch.bool:  # the fused step's masks (Transformer.decode_step)
            attended, new_k, new_v = self.self_attn.attend_step_qkv(h, *cache, self_bias)
        else:
            new_k = self.self_attn.split_row(self.self_attn.k_proj(h))  # (B, h, 1, hd)
            new_v = self.self_attn.split_row(self.self_attn.v_proj(h))  # (B, h, 1, hd)
            attended = self.self_attn.attend_step(h, *cache, new_k, new_v, self_bias)  # (B, D)
        attended = self.dropout(attended)
        x, h = add_norm(x, attended, self.cross_attn_norm, self.fused)
        x, h = add_norm(
            x,
            self.dropout(self.cross_attn.attend_rows(h, *cross, src_bias, row_place)),
            self.ffn_norm,
            self.fused,
        )
        x, h = add_norm(x, self.dropout(self.ffn(h)), next_norm, self.fused)  # (B, D)
        return x, h, new_k, new_v


class Transformer(nn.Module):
    """Encoder-decoder Transformer exposing forward / encode / decode_step / step_spec."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if cfg.share_embeddings and cfg.src_vocab_size != cfg.tgt_vocab_size:
            raise ValueError("share_embeddings needs src_vocab_size == tgt_vocab_size (a joint vocabulary)")
        self.cfg = cfg
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.tgt_embed = (
            self.src_embed
            if cfg.share_embeddings
            else nn.Embedding(cfg.tgt_vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        )
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.encoder_norm = nn.LayerNorm(cfg.d_model)
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.decoder_norm = nn.LayerNorm(cfg.d_model)
        self.output_proj = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.register_buffer(
            "positions", sinusoidal_positions(cfg.max_positions, cfg.d_model), persistent=False
        )
        self._init_weights()
        if cfg.tie_output:
            self.output_proj.weight = self.tgt_embed.weight

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=self.cfg.d_model**-0.5)
                nn.init.zeros_(module.weight[self.cfg.pad_id])

    def _embed(self, table: nn.Embedding, ids: Tensor, positions: Tensor) -> Tensor:
        """ids, positions: (B, L) or (B,) -> (B, L, D) or (B, D) = emb * sqrt(D) + sinusoid."""
        x = table(ids) * math.sqrt(self.cfg.d_model) + self.positions[positions]  # (B, [L,] D)
        return self.dropout(x)

    def encode(self, src_ids: Tensor) -> dict[str, Tensor]:
        """src_ids: Long (B, S) -> src_mask (B, S) and, per decoder layer i, cross_k_i / cross_v_i (B, h, S, hd)."""
        b, length = src_ids.shape
        src_mask = src_ids != self.cfg.pad_id  # (B, S)
        pos = torch.arange(length, device=src_ids.device).expand_as(src_ids)  # (B, S)
        # positions as rows (B*S, D): every projection is one 2-D product with its bias (ONNX Runtime
        # fuses MatMul + Add into Gemm only in 2-D); attention sees (B, h, S, hd) views of them
        x = self._embed(self.src_embed, src_ids, pos).reshape(-1, self.cfg.d_model)  # (B*S, D)
        bias = mask_bias(src_mask, x.dtype)  # (B, 1, 1, S)
        layers = list(self.encoder_layers)
        # the graph serving runs (fused_attention) computes the real positions only (packed_rows)
        kept = packed_rows(src_mask) if self.packed_encoder else None
        if kept is not None:
            x = x.index_select(0, kept)  # (T, D)
        memory = (layers[0].self_attn_norm if layers else self.encoder_norm)(x)  # (B*S | T, D)
        for i, layer in enumerate(layers):
            after = layers[i + 1].self_attn_norm if i + 1 < len(layers) else self.encoder_norm
            x, memory = layer(x, memory, bias, after, kept)  # memory: after(x), the encoder_norm of the last

        # every decoder layer's cross-attention keys and values in one product, then split; zero at
        # padded positions (docs/translator-interface.md: masked, so any value would do; zero is what
        # the packed graph has there, so both graphs give the same outputs)
        projections = [
            p for layer in self.decoder_layers for p in (layer.cross_attn.k_proj, layer.cross_attn.v_proj)
        ]
        heads, head_dim = self.cfg.heads, self.cfg.d_model // self.cfg.heads
        kv = F.linear(memory, *stacked(projections))  # (B*S | T, 2L*D)
        if kept is not None:
            kv = unpack_rows(kv, kept, b * length)
        else:
            kv = torch.where(src_mask.reshape(-1, 1), kv, 0.0)
        kv = kv.view(b, length, len(projections), heads, head_dim)  # (B, S, 2L, h, hd)
        parts = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2L x (B, h, S, hd)
        out = {"src_mask": src_mask}
        for i in range(len(self.decoder_layers)):
            out[f"cross_k_{i}"], out[f"cross_v_{i}"] = parts[2 * i], parts[2 * i + 1]
        return out

    def forward(self, src_ids: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: src_ids (B, S), tgt_in (B, T) starting with BOS -> logits (B, T, V)."""
        enc = self.encode(src_ids)
        b, t = tgt_in.shape
        pos = torch.arange(t, device=tgt_in.device).expand(b, t)  # (B, T)
        x = self._embed(self.tgt_embed, tgt_in, pos)  # (B, T, D)
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt_in.device).tril().expand(b, t, t)  # (B, T, T)
        for i, layer in enumerate(self.decoder_layers):
            x = layer(x, causal, enc[f"cross_k_{i}"], enc[f"cross_v_{i}"], enc["src_mask"])  # (B, T, D)
        return self.output_proj(self.decoder_norm(x))  # (B, T, V)

    def decode_step(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """One token per row over per-layer caches; returns log_probs (B, V) and new_self_k_i / _v_i (B, h, 1, hd).

        ``src_mask`` and ``cross_k_i`` / ``cross_v_i`` come once per row, or, with ``row_place`` (int64
        (B,), the step spec's ``row_place`` role), once per place of a store that row ``b`` reads at
        ``row_place[b]`` (the decode batch's rows over its store of sentences, in any order).

        Rows stay 2-D (B, D) through the step, and each mask becomes one additive bias shared by the
        layers: the exported step is ~7 % faster in ONNX Runtime than with (B, 1, D) rows and a masked
        fill per attention, and its scores are the same bit for bit (:func:`mask_bias`).
        """
        tokens, positions = inputs["tokens"], inputs["positions"]  # (B,), (B,)
        x = self._embed(self.tgt_embed, tokens, positions)  # (B, D)
        if self.decoder_layers and self.decoder_layers[0].fused:  # the operators take the masks themselves
            self_bias, src_bias = inputs["cache_mask"], inputs["src_mask"]  # (B, P), (B, S)
        else:
            self_bias = mask_bias(inputs["cache_mask"], x.dtype)  # (B, 1, 1, P): never the new entry
            src_bias = mask_bias(inputs["src_mask"], x.dtype)  # (B, 1, 1, S)
        out = {}
        layers = list(self.decoder_layers)
        h = layers[0].self_attn_norm(x)
        for i, layer in enumerate(layers):
            cache = inputs[f"self_k_{i}"], inputs[f"self_v_{i}"]  # (B, h, P, hd)
            cross = inputs[f"cross_k_{i}"], inputs[f"cross_v_{i}"]  # (B, h, S, hd)
            after = layers[i + 1].self_attn_norm if i + 1 < len(layers) else self.decoder_norm
            x, h, out[f"new_self_k_{i}"], out[f"new_self_v_{i}"] = layer.step(
                x, h, cache, self_bias, cross, src_bias, after, inputs.get("row_place")
            )
        logits = self.output_proj(h)  # (B, V): h = decoder_norm(x)
        return {"log_probs": F.log_softmax(logits.float(), dim=-1), **out}  # (B, V)

    @contextlib.contextmanager
    def fused_attention(self, packed: bool = True, split_qkv: bool = False) -> Iterator[None]:
        """Within it, :meth:`decode_step`'s attentions, and each residual add with the norm after it,
        export as ``kiln.ai`` custom nodes (the step graph that serving runs where the compiled kernels
        exist, ``serving/decoding/attention.c``); PyTorch computes the same either way. With ``packed``,
        :meth:`encode` also runs its products on the real positions only (:func:`packed_rows`): the
        same outputs, except where a quantization's dynamic scales would have spanned the padding.
        With ``split_qkv``, the decoder step's q, k and v stay three products, concatenated for its
        operator (what a dynamic quantization scales product by product, as in the plain graph)."""
        modules = [m for layer in self.decoder_layers for m in (layer, layer.self_attn, layer.cross_attn)]
        for layer in self.decoder_layers:
            layer.self_attn.split_qkv = split_qkv
        modules += [m for layer in self.encoder_layers for m in (layer, layer.self_attn)]
        for module in modules:
            module.fused = True
        self.packed_encoder = packed
        try:
            yield
        finally:
            for module in modules:
                module.fused = False
            for layer in self.decoder_layers:
                layer.self_attn.split_qkv = False
            self.packed_encoder = False

    packed_encoder = False  # set by fused_attention

    def step_spec(self) -> dict:
        """The JSON step spec of docs/translator-interface.md: one cache and one cross-attention pair per layer."""
        cfg = self.cfg
        layers = range(cfg.decoder_layers)
        init = [-1, cfg.heads, 0, cfg.d_model // cfg.heads]
        caches = [f"self_{kv}_{i}" for i in layers for kv in "kv"]
        cross = [f"cross_{kv}_{i}" for i in layers for kv in "kv"]
        cache_inputs = [
            {"name": n, "role": "cache", "output": f"new_{n}", "axis": 2, "init_shape": init} for n in caches
        ]
        cross_inputs = [{"name": n, "role": "encoder", "pad_axis": 2} for n in cross]
        floats = [*cross, *caches, "log_probs", *(f"new_{n}" for n in caches)]
        return {
            "pad_id": cfg.pad_id,
            "bos_id": cfg.bos_id,
            "eos_id": cfg.eos_id,
            "vocab_size": cfg.tgt_vocab_size,
            "max_positions": cfg.max_positions,
            "encoder": {"inputs": ["src_ids"], "outputs": ["src_mask", *cross]},
            "decoder": {
                "inputs": [
                    {"name": "tokens", "role": "tokens"},
                    {"name": "positions", "role": "positions"},
                    *cache_inputs,
                    {"name": "cache_mask", "role": "cache_mask"},
                    *cross_inputs,
                    {"name": "src_mask", "role": "encoder", "pad_axis": 1},
                    # cross-attention reads keys/values once per sentence: row r at place row_place[r]
                    {"name": "row_place", "role": "row_place"},
                ],
                "outputs": ["log_probs", *(f"new_{n}" for n in caches)],
            },
            "dtypes": {
                "src_ids": "int64",
                "tokens": "int64",
                "positions": "int64",
                "src_mask": "bool",
                "cache_mask": "bool",
                "row_place": "int64",
                **dict.fromkeys(floats, "float32"),
            },
        }


@register_model("transformer", task="translate", config=TransformerConfig)
def transformer(cfg: TransformerConfig) -> Transformer:
    return Transformer(cfg)
