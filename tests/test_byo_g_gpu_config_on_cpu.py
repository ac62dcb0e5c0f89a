"""A Triton user's hand-written config asking for ``KIND_GPU`` (as most of Triton's examples do) served
where ONNX Runtime has no CUDA provider: the refusal says what to change in that config, not only
how Kiln's own export would have written it (``--device cpu``), which a model Kiln did not export has
no use for."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serving.execution import placement


def test_a_kind_gpu_config_on_a_cpu_only_runtime_is_refused_saying_to_make_it_kind_cpu() -> None:
    text = 'name: "mine" platform: "onnxruntime_onnx" instance_group [ { count: 1 kind: KIND_GPU } ]'
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    with pytest.raises(placement.PlacementError) as refused:
        placement.plan(config, ["CPUExecutionProvider"])
    said = str(refused.value)
    assert "model 'mine' asks for KIND_GPU" in said
    assert "instance_group kind KIND_CPU" in said and "config.pbtxt" in said
