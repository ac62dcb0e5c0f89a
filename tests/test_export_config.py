"""config.pbtxt generation: golden files for each entry kind, and every generated config parses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from export.specs import BATCH, AxisRange, GraphSpec, TensorSpec, classifier_spec
from export.translator_entries import python_entry_config, python_steps
from export.triton_config import (
    bucket_sizes,
    config_from_spec,
    gpu_flavour,
    parse_pbtxt,
    to_pbtxt,
)

GOLDEN = Path(__file__).parent / "golden"
PREP = {"input_size": [32, 32], "channels": 1, "mean": [0.5], "std": [0.25]}
AXES = {BATCH: AxisRange(1, 16, 64), "src_len": AxisRange(1, 16, 64), "past_len": AxisRange(0, 16, 63)}

ENCODER = GraphSpec(
    "transformer_encoder",
    "encoder",
    inputs=(TensorSpec("src_ids", "int64", (BATCH, "src_len")),),
    outputs=(
        TensorSpec("src_mask", "bool", (BATCH, "src_len")),
        TensorSpec("cross_k", "float32", (BATCH, 2, 4, "src_len", 8)),
    ),
    axes={k: AXES[k] for k in (BATCH, "src_len")},
)
DECODER = GraphSpec(
    "transformer_decoder",
    "decoder",
    inputs=(
        TensorSpec("tokens", "int64", (BATCH,), "tokens"),
        TensorSpec("self_k", "float32", (BATCH, 2, 4, "past_len", 8), "cache"),
        TensorSpec("cache_mask", "bool", (BATCH, "past_len"), "cache_mask"),
    ),
    outputs=(
        TensorSpec("log_probs", "float32", (BATCH, 40)),
        TensorSpec("new_self_k", "float32", (BATCH, 2, 4, 1, 8)),
    ),
    axes={k: AXES[k] for k in (BATCH, "past_len")},
    max_batch_size=256,
)


def _graph(spec):
    import dataclasses

    return dataclasses.replace(config_from_spec(spec), dynamic_batching=False, warmup=False)


def _classifier():
    return config_from_spec(classifier_spec("lenet", PREP, 10), labels="labels.txt")


CONFIGS = {
    "classifier": _classifier,
    "classifier_gpu": lambda: gpu_flavour(_classifier(), precision="fp16"),
    "encoder": lambda: _graph(ENCODER),
    "decoder": lambda: _graph(DECODER),
    "translator": lambda: python_entry_config(
        "transformer", 64, "transformer_encoder", "transformer_decoder"
    ),
}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_generated_config_matches_its_golden_file(kind):
    text = to_pbtxt(CONFIGS[kind]())
    golden = GOLDEN / f"{kind}.pbtxt"
    if os.environ.get("KILN_UPDATE_GOLDEN") and (not golden.is_file() or text != golden.read_text()):
        golden.write_text(text)  # then fails: a rewritten file is never compared with itself
        pytest.fail(f"{golden} rewritten: review its diff, then rerun without KILN_UPDATE_GOLDEN")
    assert text == golden.read_text(), f"{golden} differs; rerun with KILN_UPDATE_GOLDEN=1 if intended"


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_every_generated_config_parses_with_tritons_model_config(kind):
    config = parse_pbtxt(to_pbtxt(CONFIGS[kind]()))
    assert config.name and config.max_batch_size > 0
    assert all(len(t.dims) >= 1 for t in (*config.input, *config.output))


def test_classifier_config_has_labels_batching_warmup_and_no_batch_dim():
    config = parse_pbtxt(to_pbtxt(CONFIGS["classifier"]()))
    assert config.platform == "onnxruntime_onnx" and list(config.input[0].dims) == [32, 32, 1]
    assert config.output[1].label_filename == "labels.txt" and not config.output[0].label_filename
    assert config.model_warmup[0].inputs["images"].zero_data


def test_classifier_batching_follows_tritons_defaults_no_preferred_sizes_and_no_delay():
    config = parse_pbtxt(to_pbtxt(CONFIGS["classifier"]()))
    assert config.HasField("dynamic_batching")
    assert list(config.dynamic_batching.preferred_batch_size) == []
    assert config.dynamic_batching.max_queue_delay_microseconds == 0


def test_measured_batching_settings_are_written_when_a_caller_passes_them():
    spec = classifier_spec("lenet", PREP, 10)
    config = parse_pbtxt(
        to_pbtxt(config_from_spec(spec, preferred_batch_sizes=(8, 64), max_queue_delay_us=200))
    )
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 64]
    assert config.dynamic_batching.max_queue_delay_microseconds == 200


def test_a_per_row_scalar_gets_dims_one_and_an_empty_reshape():
    config = parse_pbtxt(to_pbtxt(CONFIGS["decoder"]()))
    tokens = config.input[0]
    assert list(tokens.dims) == [1] and tokens.HasField("reshape") and list(tokens.reshape.shape) == []


def test_spec_rejects_undeclared_axes_and_old_opsets():
    with pytest.raises(ValueError, match="undeclared axes"):
        GraphSpec("x", "classifier", (TensorSpec("a", "float32", ("rows",)),), (), axes={})
    with pytest.raises(ValueError, match="opset"):
        GraphSpec("x", "classifier", (), (), axes={}, opset=13)
    with pytest.raises(ValueError, match="unsupported dtype"):
        TensorSpec("a", "complex64", (1,))


def test_gpu_config_places_the_model_on_a_gpu_with_tritons_tensorrt_accelerator():
    config = parse_pbtxt(to_pbtxt(CONFIGS["classifier_gpu"]()))
    assert [g.kind for g in config.instance_group] == [config.instance_group[0].KIND_GPU]
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": "1073741824",
    }
    assert not config.optimization.execution_accelerators.cpu_execution_accelerator


def test_gpu_config_buckets_are_its_preferred_sizes_and_every_bucket_is_warmed():
    config = parse_pbtxt(to_pbtxt(CONFIGS["classifier_gpu"]()))
    assert list(config.dynamic_batching.preferred_batch_size) == [1, 2, 4, 8, 16, 32, 64]
    assert [w.batch_size for w in config.model_warmup] == [1, 2, 4, 8, 16, 32, 64]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params == {"cudnn_conv_algo_search": "0", "kiln_bucketing": "1", "kiln_cuda_graphs": "0"}


def test_gpu_options_reach_the_parameters_and_the_tensorrt_precision_follows_the_entry():
    config = gpu_flavour(
        _classifier(), precision="fp32", cudnn_conv_algo_search="HEURISTIC", cuda_graphs=True
    )
    parsed = parse_pbtxt(to_pbtxt(config))
    params = {k: v.string_value for k, v in parsed.parameters.items()}
    assert params["cudnn_conv_algo_search"] == "1" and params["kiln_cuda_graphs"] == "1"
    accelerator = parsed.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.parameters["precision_mode"] == "FP32"


def test_an_unbatched_graph_on_gpu_gets_no_buckets_and_no_cuda_graphs():
    config = gpu_flavour(_graph(DECODER), cuda_graphs=True)
    parsed = parse_pbtxt(to_pbtxt(config))
    params = {k: v.string_value for k, v in parsed.parameters.items()}
    assert params["kiln_bucketing"] == "0" and params["kiln_cuda_graphs"] == "0"
    assert (
        not parsed.HasField("dynamic_batching")
        and parsed.instance_group[0].kind == parsed.instance_group[0].KIND_GPU
    )


def test_a_decoder_step_on_gpu_gets_no_tensorrt_accelerator_its_shape_changes_every_step():
    parsed = parse_pbtxt(to_pbtxt(gpu_flavour(_graph(DECODER), tensorrt=False)))
    assert parsed.instance_group[0].kind == parsed.instance_group[0].KIND_GPU
    assert not parsed.optimization.execution_accelerators.gpu_execution_accelerator


def test_bucket_sizes_are_powers_of_two_capped_by_the_max_batch_size():
    assert bucket_sizes(64) == (1, 2, 4, 8, 16, 32, 64)
    assert bucket_sizes(48) == (1, 2, 4, 8, 16, 32, 48)
    assert bucket_sizes(1) == (1,)


def test_only_onnx_configs_have_a_gpu_flavour_and_the_algo_search_is_checked():
    with pytest.raises(ValueError, match="only onnxruntime_onnx"):
        gpu_flavour(CONFIGS["translator"]())
    with pytest.raises(ValueError, match="cudnn algo search"):
        gpu_flavour(_classifier(), cudnn_conv_algo_search="FASTEST")


def test_the_batching_recommendation_keeps_tritons_defaults_and_says_whether_merging_pays():
    from export import batching

    spec = classifier_spec("lenet", PREP, 10)
    seen = []
    result = batching.measure(lambda feeds: seen.append(feeds["images"].shape), spec, budget_s=0.0)
    assert {(1, 32, 32, 1), (64, 32, 32, 1)} <= set(seen)
    assert result["preferred_batch_size"] == [] and result["max_queue_delay_microseconds"] == 0
    assert "batch64_ms_per_item" in result and result["recommendation"]
    assert batching.recommendation(3.0, 64).startswith("dynamic batching pays")
    assert "a queue delay would only add latency" in batching.recommendation(1.0, 64)


def test_the_translate_entry_steps_in_process_on_cpu_and_through_bls_on_gpu():
    assert python_steps("cpu") == "in_process"
    assert python_steps("gpu") == "bls"
    parsed = parse_pbtxt(to_pbtxt(python_entry_config("t", 8, "t_encoder", "t_decoder", python_steps("gpu"))))
    assert parsed.parameters["steps"].string_value == "bls"
