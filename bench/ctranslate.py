"""Write a CTranslate2 model from a Kiln `transformer` checkpoint with CTranslate2's specs API.

The same weights then run in CTranslate2 so the benchmark compares decoders, not models. Kiln's
Transformer is the standard pre-norm layout (sinusoidal [sin | cos] positions, embeddings scaled by
sqrt(d_model), final LayerNorms, ReLU FFN), which ``TransformerSpec`` represents directly; q/k/v are
fused the way CTranslate2 stores them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _np(tensor: Any) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _linear(spec: Any, module: Any) -> None:
    spec.weight = _np(module.weight)
    if module.bias is not None:
        spec.bias = _np(module.bias)


def _fused(spec: Any, modules: list[Any]) -> None:
    spec.weight = np.concatenate([_np(m.weight) for m in modules])
    spec.bias = np.concatenate([_np(m.bias) for m in modules])


def _norm(spec: Any, module: Any) -> None:
    spec.gamma, spec.beta = _np(module.weight), _np(module.bias)


def _ffn(spec: Any, norm: Any, ffn: Any) -> None:
    _norm(spec.layer_norm, norm)
    _linear(spec.linear_0, ffn[0])
    _linear(spec.linear_1, ffn[3])


def _vocabulary(tokenizer_json: str) -> list[str]:
    vocab = json.loads(tokenizer_json)["model"]["vocab"]
    return [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


def build_spec(model: Any, tokenizers: dict[str, str]) -> Any:
    """A ``TransformerSpec`` filled with the model's weights and the tokenizers' vocabularies."""
    from ctranslate2.specs import TransformerSpec, common_spec

    from training.models.attention import sinusoidal_positions

    cfg = model.cfg
    spec = TransformerSpec.from_config(
        (cfg.encoder_layers, cfg.decoder_layers),
        cfg.heads,
        pre_norm=True,
        activation=common_spec.Activation.RELU,
    )
    spec.config.layer_norm_epsilon = model.encoder_norm.eps
    positions = _np(sinusoidal_positions(cfg.max_positions, cfg.d_model))
    enc, dec = spec.encoder, spec.decoder
    enc.embeddings[0].weight = _np(model.src_embed.weight)
    dec.embeddings.weight = _np(model.tgt_embed.weight)
    enc.scale_embeddings = dec.scale_embeddings = True
    enc.position_encodings.encodings = dec.position_encodings.encodings = positions
    _norm(enc.layer_norm, model.encoder_norm)
    _norm(dec.layer_norm, model.decoder_norm)
    _linear(dec.projection, model.output_proj)
    for layer_spec, layer in zip(enc.layer, model.encoder_layers, strict=True):
        attn = layer.self_attn
        _fused(layer_spec.self_attention.linear[0], [attn.q_proj, attn.k_proj, attn.v_proj])
        _linear(layer_spec.self_attention.linear[1], attn.out_proj)
        _norm(layer_spec.self_attention.layer_norm, layer.self_attn_norm)
        _ffn(layer_spec.ffn, layer.ffn_norm, layer.ffn)
    for layer_spec, layer in zip(dec.layer, model.decoder_layers, strict=True):
        attn, cross = layer.self_attn, layer.cross_attn
        _fused(layer_spec.self_attention.linear[0], [attn.q_proj, attn.k_proj, attn.v_proj])
        _linear(layer_spec.self_attention.linear[1], attn.out_proj)
        _norm(layer_spec.self_attention.layer_norm, layer.self_attn_norm)
        _linear(layer_spec.attention.linear[0], cross.q_proj)
        _fused(layer_spec.attention.linear[1], [cross.k_proj, cross.v_proj])
        _linear(layer_spec.attention.linear[2], cross.out_proj)
        _norm(layer_spec.attention.layer_norm, layer.cross_attn_norm)
        _ffn(layer_spec.ffn, layer.ffn_norm, layer.ffn)
    spec.register_source_vocabulary(_vocabulary(tokenizers["source"]))
    spec.register_target_vocabulary(_vocabulary(tokenizers["target"]))
    return spec


def convert(checkpoint: Path, output_dir: Path, *, force: bool = False) -> Path:
    """Write the CTranslate2 model directory for ``checkpoint`` (float32 weights)."""
    from training.checkpoint import load_checkpoint, rebuild_model

    ckpt = load_checkpoint(checkpoint)
    if ckpt["model"]["name"] != "transformer" or ckpt["task"] != "translate":
        raise ValueError(f"{checkpoint}: CTranslate2 conversion needs a `transformer` translator checkpoint")
    spec = build_spec(rebuild_model(ckpt), ckpt["tokenizers"])
    spec.validate()
    spec.optimize(quantization=None)
    if output_dir.exists() and not force and (output_dir / "model.bin").exists():
        return output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    spec.save(str(output_dir))
    return output_dir


class CT2Translator:
    """CTranslate2 translation over Kiln's tokenizers: same source convention (tokens + EOS, no BOS)."""

    def __init__(
        self,
        model_dir: Path,
        tokenizers: dict[str, str],
        *,
        inter_threads: int = 2,
        intra_threads: int = 1,
        compute_type: str = "float32",
    ):
        import ctranslate2
        from tokenizers import Tokenizer

        from training.data.tokenizer import literal_specials

        self.translator = ctranslate2.Translator(
            str(model_dir),
            device="cpu",
            inter_threads=inter_threads,
            intra_threads=intra_threads,
            compute_type=compute_type,
        )
        self.src = literal_specials(Tokenizer.from_str(tokenizers["source"]))  # as the gateway reads text
        self.tgt = literal_specials(Tokenizer.from_str(tokenizers["target"]))

    def source_tokens(self, texts: list[str]) -> list[list[str]]:
        return [self.src.encode(t).tokens + ["</s>"] for t in texts]

    def translate(
        self, texts: list[str], *, beam_size: int = 4, max_length: int = 64, max_batch_size: int = 32
    ):
        """Best hypothesis per text as (text, token ids)."""
        return self.translate_tokens(
            self.source_tokens(texts),
            beam_size=beam_size,
            max_length=max_length,
            max_batch_size=max_batch_size,
        )

    def translate_tokens(
        self, sources: list[list[str]], *, beam_size: int = 4, max_length: int = 64, max_batch_size: int = 32
    ):
        """:meth:`translate` of sources already tokenized (:meth:`source_tokens`)."""
        results = self.translator.translate_batch(
            sources,
            beam_size=beam_size,
            max_decoding_length=max_length,
            max_batch_size=max_batch_size,
            length_penalty=1.0,
            num_hypotheses=1,
        )
        out = []
        for result in results:
            ids = [self.tgt.token_to_id(t) for t in result.hypotheses[0]]
            out.append((self.tgt.decode(ids), ids))
        return out
