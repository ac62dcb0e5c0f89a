"""An RNN graph's export through the TorchScript exporter is the expected path, not a warning."""

from __future__ import annotations

import logging

import torch
from torch import nn

from export.onnx_export import export_onnx
from export.specs import AxisRange, GraphSpec, TensorSpec


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


def test_a_gru_graph_exported_again_by_the_torchscript_exporter_is_logged_as_info_not_a_warning(
    tmp_path, caplog
):
    """torch.export unrolls nn.GRU over the traced length, so every GRU/LSTM translator's encoder and
    decoder take the TorchScript exporter: ``make export`` printed a WARNING per such graph for the
    path it always takes, whose result is checked (axes still fixed after it: an error)."""
    spec = GraphSpec(
        name="gru_encoder",
        kind="encoder",
        inputs=(TensorSpec("x", "float32", ("batch", "time", 3)),),
        outputs=(TensorSpec("y", "float32", ("batch", "time", 4)),),
        axes={"batch": AxisRange(1, 2, 4), "time": AxisRange(1, 5, 9)},
    )
    with caplog.at_level(logging.INFO, logger="export.onnx_export"):
        export_onnx(_Encoder().eval(), spec, (torch.zeros(2, 5, 3),), tmp_path / "model.onnx")
    fallback = [r for r in caplog.records if "using the TorchScript exporter" in r.getMessage()]
    assert len(fallback) == 1, caplog.text  # the case: torch.export fixed the time axis
    assert fallback[0].levelno == logging.INFO
    ours = [r for r in caplog.records if r.name.startswith("export.") and r.levelno >= logging.WARNING]
    assert not ours, caplog.text
