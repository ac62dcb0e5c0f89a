"""What a translator's export hands to its parity checks and entry writers: one typed value, not a dict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from export.freeze import FreezeReport
from export.parity import ParityReport
from export.specs import GraphSpec


@dataclass(frozen=True)
class TranslatorGraphs:
    """The frozen translator, its encoder and decoder-step ONNX graphs with their specs, and the PyTorch
    wrappers those graphs were exported from (the parity references)."""

    spec: dict[str, Any]  # the model's step spec (docs/translator-interface.md) plus vocab_size_src
    frozen: nn.Module
    freeze: FreezeReport
    encoder: GraphSpec
    decoder: GraphSpec
    encoder_path: Path
    decoder_path: Path
    encoder_module: nn.Module
    decoder_module: nn.Module
    # the decoder step, and the encoder, with their attentions as kiln.ai operators (Transformer, where
    # they compile)
    fused_decoder_path: Path | None = None
    fused_encoder_path: Path | None = None  # computes the real positions only (packed rows)
    # the same over every padded position: what the int8 fused encoder is quantized from (exported
    # with int8 among the precisions)
    padded_fused_encoder_path: Path | None = None
    # the fused step with each layer's q, k and v products apart (concatenated for its operator): what
    # the int8 fused decoder is quantized from, so that each product gets the scale the plain int8
    # graph's does (one product of all three took one weight scale for all, and beams changed)
    split_fused_decoder_path: Path | None = None

    @property
    def step_spec(self) -> dict[str, Any]:
        """The step spec as entries record it and serving reads it (without the export-only source vocab)."""
        return {k: v for k, v in self.spec.items() if k != "vocab_size_src"}


@dataclass(frozen=True)
class FusedStep:
    """An encoder or decoder entry's fused-attention graph: the file written beside ``model.onnx``
    (``path``, None when refused), its parity against PyTorch and its beam search against the graph it
    replaces; ``reason`` says why it was refused."""

    path: Path | None
    parity: ParityReport
    beams: ParityReport
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        from serving.decoding.native import FUSED_GRAPH

        return {
            "file": FUSED_GRAPH if self.path is not None else None,
            "refused": self.reason or None,
            "parity": self.parity.as_dict(),
            "beams": self.beams.as_dict(),
        }
