"""A GPU config's ``cudnn_conv_algo_search`` parameter is checked where the placement is read
(serving/execution/placement.py, ``conv_algo_search``). ONNX Runtime's CUDA provider takes exactly
EXHAUSTIVE, HEURISTIC or DEFAULT (its ``ort_cudnn_conv_algo_search_mapping``); with any other value the
provider is not created, ``InferenceSession`` falls back to the CPU provider, and the load failed with
``check_session``'s "CUDAExecutionProvider did not load ... CUDA and cuDNN must match" instead of naming
the parameter. No GPU is needed: the placement is a pure function of the config."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serving.execution import placement

WITH_CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
CPU_ONLY = ["CPUExecutionProvider"]


def config(search: str, kind: str = "KIND_GPU") -> model_config_pb2.ModelConfig:
    text = (
        f'name: "resnet" max_batch_size: 8 instance_group {{ kind: {kind} }} '
        f'parameters {{ key: "cudnn_conv_algo_search" value {{ string_value: "{search}" }} }}'
    )
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("value", ["3", "FASTEST", "-1", "1.0"])
def test_a_value_the_cuda_provider_does_not_take_is_refused_naming_the_parameter(value):
    with pytest.raises(placement.PlacementError) as refused:
        placement.plan(config(value), WITH_CUDA)
    text = str(refused.value)
    assert f"model 'resnet': parameter cudnn_conv_algo_search is {value!r}" in text
    assert '"0" (EXHAUSTIVE), "1" (HEURISTIC) or "2" (DEFAULT)' in text


@pytest.mark.parametrize(
    ("value", "option"),
    [
        ("0", "EXHAUSTIVE"),
        ("1", "HEURISTIC"),
        ("2", "DEFAULT"),
        ("HEURISTIC", "HEURISTIC"),
        ("heuristic", "HEURISTIC"),
        (" 2 ", "DEFAULT"),
    ],
)
def test_triton_encodings_and_onnx_runtime_names_reach_the_cuda_provider(value, option):
    where = placement.plan(config(value), WITH_CUDA)
    assert where.providers()[0] == ("CUDAExecutionProvider", {"cudnn_conv_algo_search": option})


def test_an_empty_value_leaves_the_provider_default_and_the_cpu_ignores_the_parameter():
    assert placement.plan(config(""), WITH_CUDA).providers()[0] == ("CUDAExecutionProvider", {})
    assert placement.plan(config("3", kind="KIND_CPU"), WITH_CUDA).providers() == ["CPUExecutionProvider"]
    assert placement.plan(config("3", kind="KIND_AUTO"), CPU_ONLY).provider == "CPUExecutionProvider"
