"""Recurrent encoder-decoder translators with additive (Bahdanau) attention: GRU and LSTM variants.

One module; the cell type is data (``RNN_TYPES``). The encoder is a bidirectional multi-layer RNN
written as two unidirectional passes per layer, the backward one over each row's tokens reversed in
place, so padding never reaches a real token's state (no packed sequences, which ONNX cannot take).
A bridge layer turns the encoder's final states into the decoder's initial state (``hidden0`` and, for
LSTM, ``cell0``). The decoder's query is its current top-layer output (Luong ordering, no input
feeding): teacher-forced training runs the decoder RNN over the whole target at once, and one
``decode_step`` is exactly one column of that computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.models.checks import require_ints, require_probability, require_special_ids
from training.models.registry import register_model

RNN_TYPES = {"gru": nn.GRU, "lstm": nn.LSTM}


@dataclass
class Seq2SeqConfig:
    src_vocab_size: int = 1000
    tgt_vocab_size: int = 1000
    rnn_type: str = "gru"
    embed_dim: int = 128
    hidden_size: int = 256
    encoder_layers: int = 2
    decoder_layers: int = 2
    attention_dim: int = 256
    dropout: float = 0.1
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    max_positions: int = 256  # longest output the decoder is asked for (serving's max_length cap)
    # the registered model's cell (gru_attention, lstm_attention): a config of the other one is refused
    # when made, so a --model-arg rnn_type naming the other is an error before any data is read
    variant: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        """Sizes and layer counts of at least 1 (below it the encoder silently got one layer), distinct
        special ids inside the vocabularies, dropout in [0, 1). An rnn_type of another type than str (a
        --model-arg rnn_type=[1]) is named too, not a TypeError from the lookup."""
        if not isinstance(self.rnn_type, str) or self.rnn_type not in RNN_TYPES:
            raise ValueError(f"unknown rnn_type {self.rnn_type!r}; choose from {sorted(RNN_TYPES)}")
        if self.variant and self.rnn_type != self.variant:  # else refused by the builder, after the BPE
            other = f"{self.rnn_type}_attention"
            raise ValueError(
                f"{self.variant}_attention builds rnn_type={self.variant!r}, got {self.rnn_type!r} "
                f"(for that, --model {other})"
            )
        sizes = ("src_vocab_size", "tgt_vocab_size", "embed_dim", "hidden_size", "attention_dim")
        require_ints(self, (*sizes, "encoder_layers", "decoder_layers", "max_positions"))
        require_special_ids(self, ("src_vocab_size", "tgt_vocab_size"))
        require_probability(self, "dropout")


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse the first ``lengths[b]`` steps of each row in place; padding stays at the end. x: (B, S, E)."""
    s = x.shape[1]
    t = torch.arange(s, device=x.device)[None, :]  # (1, S)
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, S)
    return x.gather(1, idx[:, :, None].expand_as(x))  # (B, S, E)


class BiEncoder(nn.Module):
    """Bidirectional multi-layer RNN that is exact under right padding."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        rnn = RNN_TYPES[cfg.rnn_type]
        sizes = [cfg.embed_dim] + [2 * cfg.hidden_size] * (cfg.encoder_layers - 1)
        self.forward_rnns = nn.ModuleList(rnn(n, cfg.hidden_size, batch_first=True) for n in sizes)
        self.backward_rnns = nn.ModuleList(rnn(n, cfg.hidden_size, batch_first=True) for n in sizes)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, S, E) -> memory (B, S, 2H) and summary (B, 2H) = [last forward | first backward] state."""
        for i, (fw, bw) in enumerate(zip(self.forward_rnns, self.backward_rnns, strict=True)):
            if i:
                x = self.dropout(x)
            out_f, _ = fw(x)  # (B, S, H)
            out_b, _ = bw(reverse_padded(x, lengths))  # (B, S, H), reversed order
            x = torch.cat([out_f, reverse_padded(out_b, lengths)], dim=2)  # (B, S, 2H)
        last = (lengths - 1).clamp(min=0)[:, None, None].expand(-1, 1, out_f.shape[2])  # (B, 1, H)
        summary = torch.cat([out_f.gather(1, last)[:, 0], x[:, 0, out_f.shape[2] :]], dim=1)  # (B, 2H)
        return x, summary


class RecurrentTranslator(nn.Module):
    """Encoder-decoder RNN exposing forward / encode / decode_step / step_spec."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        if cfg.rnn_type not in RNN_TYPES:
            raise ValueError(f"unknown rnn_type {cfg.rnn_type!r}; choose from {sorted(RNN_TYPES)}")
        self.cfg = cfg
        self.is_lstm = cfg.rnn_type == "lstm"
        h, layers = cfg.hidden_size, cfg.decoder_layers
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.embed_dim, padding_idx=cfg.pad_id)
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab_size, cfg.embed_dim, padding_idx=cfg.pad_id)
        self.encoder = BiEncoder(cfg)
        self.bridge = nn.Linear(2 * h, layers * h)
        self.cell_bridge = nn.Linear(2 * h, layers * h) if self.is_lstm else None
        self.memory_proj = nn.Linear(2 * h, cfg.attention_dim, bias=False)
        self.query_proj = nn.Linear(h, cfg.attention_dim)
        self.score = nn.Linear(cfg.attention_dim, 1, bias=False)
        dropout = cfg.dropout if layers > 1 else 0.0
        self.decoder = RNN_TYPES[cfg.rnn_type](cfg.embed_dim, h, layers, batch_first=True, dropout=dropout)
        self.combine = nn.Linear(h + 2 * h + cfg.embed_dim, cfg.embed_dim)
        self.output_proj = nn.Linear(cfg.embed_dim, cfg.tgt_vocab_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def encode(self, src_ids: Tensor) -> dict[str, Tensor]:
        """src_ids (B, S) -> memory (B, S, 2H), memory_keys (B, S, A), src_mask (B, S), hidden0 (B, L, H)."""
        src_mask = src_ids != self.cfg.pad_id  # (B, S)
        lengths = src_mask.long().sum(dim=1)  # (B,)
        x = self.dropout(self.src_embed(src_ids))  # (B, S, E)
        memory, summary = self.encoder(x, lengths)  # (B, S, 2H), (B, 2H)
        b, layers, h = src_ids.shape[0], self.cfg.decoder_layers, self.cfg.hidden_size
        out = {
            "memory": memory,
            "memory_keys": self.memory_proj(memory),  # (B, S, A)
            "src_mask": src_mask,
            "hidden0": torch.tanh(self.bridge(summary)).view(b, layers, h),  # (B, L, H)
        }
        if self.is_lstm:
            out["cell0"] = self.cell_bridge(summary).view(b, layers, h)  # (B, L, H)
        return out

    def _attend(self, query: Tensor, memory: Tensor, keys: Tensor, src_mask: Tensor) -> Tensor:
        """Additive attention. query (B, T, H), memory (B, S, 2H), keys (B, S, A) -> context (B, T, 2H)."""
        energy = torch.tanh(self.query_proj(query)[:, :, None, :] + keys[:, None, :, :])  # (B, T, S, A)
        scores = self.score(energy).squeeze(-1)  # (B, T, S)
        scores = scores.masked_fill(~src_mask[:, None, :], torch.finfo(scores.dtype).min)
        return F.softmax(scores, dim=-1) @ memory  # (B, T, 2H)

    def _decode(self, tokens: Tensor, state: tuple[Tensor, ...], enc: dict[str, Tensor]):
        """tokens (B, T); state: batch-first (B, L, H) tensors -> logits (B, T, V) and the new state."""
        emb = self.dropout(self.tgt_embed(tokens))  # (B, T, E)
        rnn_state = tuple(s.transpose(0, 1).contiguous() for s in state)  # (L, B, H) each
        out, new = self.decoder(emb, rnn_state if self.is_lstm else rnn_state[0])  # (B, T, H)
        new = new if self.is_lstm else (new,)
        context = self._attend(out, enc["memory"], enc["memory_keys"], enc["src_mask"])  # (B, T, 2H)
        mixed = torch.tanh(self.combine(torch.cat([out, context, emb], dim=2)))  # (B, T, E)
        logits = self.output_proj(self.dropout(mixed))  # (B, T, V)
        return logits, tuple(s.transpose(0, 1) for s in new)  # (B, L, H) each

    def _initial_state(self, enc: dict[str, Tensor]) -> tuple[Tensor, ...]:
        return (enc["hidden0"], enc["cell0"]) if self.is_lstm else (enc["hidden0"],)

    def forward(self, src_ids: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: src_ids (B, S), tgt_in (B, T) -> logits (B, T, V)."""
        enc = self.encode(src_ids)
        logits, _ = self._decode(tgt_in, self._initial_state(enc), enc)
        return logits  # (B, T, V)

    def decode_step(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """tokens (B,), hidden[/cell] (B, L, H) -> log_probs (B, V), hidden_out[/cell_out] (B, L, H)."""
        state = (inputs["hidden"], inputs["cell"]) if self.is_lstm else (inputs["hidden"],)
        logits, new = self._decode(inputs["tokens"][:, None], state, inputs)  # (B, 1, V)
        out = {"log_probs": F.log_softmax(logits[:, 0].float(), dim=-1), "hidden_out": new[0]}
        if self.is_lstm:
            out["cell_out"] = new[1]
        return out

    def step_spec(self) -> dict:
        """The JSON step spec of docs/translator-interface.md (tokens, state and encoder roles only)."""
        cfg = self.cfg
        states = [("hidden", "hidden_out", "hidden0")] + (
            [("cell", "cell_out", "cell0")] if self.is_lstm else []
        )
        enc_outputs = ["memory", "memory_keys", "src_mask"] + [init for _, _, init in states]
        inputs = [{"name": "tokens", "role": "tokens"}]
        inputs += [{"name": n, "role": "state", "output": o, "init": i} for n, o, i in states]
        inputs += [
            {"name": "memory", "role": "encoder", "pad_axis": 1},
            {"name": "memory_keys", "role": "encoder", "pad_axis": 1},
            {"name": "src_mask", "role": "encoder", "pad_axis": 1},
        ]
        floats = ["memory", "memory_keys", "log_probs"] + [x for s in states for x in s]
        return {
            "pad_id": cfg.pad_id,
            "bos_id": cfg.bos_id,
            "eos_id": cfg.eos_id,
            "vocab_size": cfg.tgt_vocab_size,
            "max_positions": cfg.max_positions,
            "encoder": {"inputs": ["src_ids"], "outputs": enc_outputs},
            "decoder": {"inputs": inputs, "outputs": ["log_probs"] + [o for _, o, _ in states]},
            "dtypes": {
                "src_ids": "int64",
                "tokens": "int64",
                "src_mask": "bool",
                **dict.fromkeys(floats, "float32"),
            },
        }


def _recurrent(rnn_type: str, cfg: Seq2SeqConfig) -> RecurrentTranslator:
    if cfg.rnn_type != rnn_type:
        raise ValueError(f"{rnn_type}_attention builds rnn_type={rnn_type!r}, got {cfg.rnn_type!r}")
    return RecurrentTranslator(cfg)


@dataclass
class GRUAttentionConfig(Seq2SeqConfig):
    rnn_type: str = "gru"
    variant: ClassVar[str | None] = "gru"


@dataclass
class LSTMAttentionConfig(Seq2SeqConfig):
    rnn_type: str = "lstm"
    variant: ClassVar[str | None] = "lstm"


@register_model("gru_attention", task="translate", config=GRUAttentionConfig)
def gru_attention(cfg: GRUAttentionConfig) -> RecurrentTranslator:
    return _recurrent("gru", cfg)


@register_model("lstm_attention", task="translate", config=LSTMAttentionConfig)
def lstm_attention(cfg: LSTMAttentionConfig) -> RecurrentTranslator:
    return _recurrent("lstm", cfg)
