"""What a translator's export hands to its parity checks and entry writers: one typed value, not a dict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from export.freeze import FreezeReport
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

    @property
    def step_spec(self) -> dict[str, Any]:
        """The step spec as entries record it and serving reads it (without the export-only source vocab)."""
        return {k: v for k, v in self.spec.items() if k != "vocab_size_src"}
