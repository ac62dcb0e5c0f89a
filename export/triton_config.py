"""config.pbtxt from a dataclass, through Triton's own ModelConfig proto (pytriton generator style).

Each section of the config is set by one small function; the text is produced by
``text_format.MessageToString`` of ``tritonclient.grpc.model_config_pb2.ModelConfig``, so it is always
a valid Triton config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.specs import GraphSpec, TensorSpec

PLATFORMS = {"onnxruntime_onnx": "platform", "tensorrt_plan": "platform", "python": "backend"}

# Model-level ``parameters`` of a GPU config (their meaning, for Triton and the gateway: docs/kiln-json.md).
# Triton's own key (its onnxruntime backend reads it too): "0" EXHAUSTIVE, "1" HEURISTIC, "2" DEFAULT.
CUDNN_CONV_ALGO_SEARCH = "cudnn_conv_algo_search"
CUDNN_ALGO_SEARCH_VALUES = {"EXHAUSTIVE": "0", "HEURISTIC": "1", "DEFAULT": "2"}
KILN_BUCKETING = "kiln_bucketing"  # "1": pad merged batches to a bucket size, one session per bucket
KILN_CUDA_GRAPHS = "kiln_cuda_graphs"  # "1": each bucket replays a captured CUDA graph (IO binding)
# Not int8: TensorRT reads Q/DQ as symmetric int8 only, and the int8 graph's activations are uint8 with
# their own zero points (export/tensorrt.py, ENGINE_PRECISIONS): the TensorRT EP refused some of its Q/DQ
# nodes and read the rest's uint8 as int8, clipping every activation above half its range.
TRT_PRECISION_MODES = {"fp32": "FP32", "fp16": "FP16"}
TRT_WORKSPACE_BYTES = 1 << 30  # Triton's documented default for max_workspace_size_bytes
# About half of one GPU call: resnet18 on an H200 took 0.65 ms at batch 1 and 0.71 ms at batch 64
# (ONNX Runtime CUDA, 2026-11-30), so waiting for company costs little. The delay itself was not A/B'd.
GPU_QUEUE_DELAY_US = 500


@dataclass(frozen=True)
class Accelerator:
    """One entry of ``optimization.execution_accelerators.gpu_execution_accelerator`` (name + parameters)."""

    name: str
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TritonTensor:
    name: str
    data_type: str  # TYPE_FP32, TYPE_UINT8, TYPE_STRING ...
    dims: tuple[int, ...]  # without the batch axis when max_batch_size > 0
    label_filename: str = ""


@dataclass(frozen=True)
class TritonModelConfig:
    """The parts of a Triton model configuration Kiln writes."""

    name: str
    platform: str  # onnxruntime_onnx | tensorrt_plan | python
    max_batch_size: int
    inputs: tuple[TritonTensor, ...]
    outputs: tuple[TritonTensor, ...]
    preferred_batch_sizes: tuple[int, ...] = ()  # Triton's guidance: none unless a model gains from them
    max_queue_delay_us: int = 0  # Triton's default: a lone request is never held back
    dynamic_batching: bool = True
    instance_kind: str = "KIND_CPU"
    instance_count: int = 1
    latest_versions: int = 1
    warmup: bool = True
    parameters: dict[str, str] = field(default_factory=dict)
    gpu_accelerators: tuple[Accelerator, ...] = ()
    warmup_batch_sizes: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        if self.platform not in PLATFORMS:
            raise ValueError(f"{self.name}: unknown platform {self.platform!r}; known: {sorted(PLATFORMS)}")
        if self.instance_kind not in ("KIND_CPU", "KIND_GPU"):
            raise ValueError(
                f"{self.name}: instance kind must be KIND_CPU or KIND_GPU, got {self.instance_kind}"
            )


def tensor_from_spec(tensor: TensorSpec, batched: bool, label_filename: str = "") -> TritonTensor:
    """Spec tensor -> Triton tensor: dynamic axes become -1 and the batch axis is dropped when batched."""
    dims = tuple(tensor.dims[1:] if batched else tensor.dims)
    return TritonTensor(tensor.name, tensor.triton_type, dims, label_filename)


def preferred_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two from 4 up to max_batch_size: bucket sizes for shape-stable (GPU) execution.

    Not a default for CPU entries: Triton's batcher guide says preferred sizes "should not be used for
    most models", and with them plus a queue delay a lone request waits the whole delay.
    """
    sizes, size = [], 4
    while size <= max_batch_size:
        sizes.append(size)
        size *= 2
    return tuple(sizes) or (max_batch_size,)


def config_from_spec(
    spec: GraphSpec,
    *,
    name: str | None = None,
    platform: str = "onnxruntime_onnx",
    instance_kind: str = "KIND_CPU",
    labels: str = "",
    max_queue_delay_us: int = 0,
    preferred_batch_sizes: tuple[int, ...] = (),
) -> TritonModelConfig:
    """The Triton config of one exported graph, derived from the same spec as the ONNX export.

    Batching follows Triton's guidance: dynamic batching merges whatever is queued when an instance
    frees up, with no preferred sizes and no delay unless the caller passes measured ones.
    """
    batched = spec.max_batch_size > 0
    return TritonModelConfig(
        name=name or spec.name,
        platform=platform,
        max_batch_size=spec.max_batch_size,
        inputs=tuple(tensor_from_spec(t, batched) for t in spec.inputs),
        outputs=tuple(
            tensor_from_spec(t, batched, labels if t.role == "probabilities" else "") for t in spec.outputs
        ),
        preferred_batch_sizes=preferred_batch_sizes,
        max_queue_delay_us=max_queue_delay_us,
        instance_kind=instance_kind,
    )


def bucket_sizes(max_batch_size: int) -> tuple[int, ...]:
    """GPU buckets: powers of two from 1, then max_batch_size (1, 2, 4, ..., 64 for 64: seven sessions)."""
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i < max_batch_size]
    return (*sizes, max_batch_size)


def gpu_flavour(
    config: TritonModelConfig,
    *,
    precision: str = "fp32",
    cudnn_conv_algo_search: str = "EXHAUSTIVE",
    cuda_graphs: bool = False,
    tensorrt: bool = True,
) -> TritonModelConfig:
    """The GPU variant of an ONNX config: KIND_GPU, buckets as preferred sizes, Triton's TensorRT
    accelerator block, and the parameters the gateway reads to keep every CUDA session on one shape.

    ``tensorrt=False`` leaves the accelerator out: a translator's decoder step changes shape every
    step (its cache grows), and a TensorRT engine per shape would be rebuilt for ever. An int8 graph
    has none either (:data:`TRT_PRECISION_MODES`): it runs on the CUDA EP."""
    if config.platform != "onnxruntime_onnx":
        raise ValueError(
            f"{config.name}: only onnxruntime_onnx configs have a GPU flavour, not {config.platform}"
        )
    if cudnn_conv_algo_search not in CUDNN_ALGO_SEARCH_VALUES:
        raise ValueError(f"cudnn algo search must be one of {sorted(CUDNN_ALGO_SEARCH_VALUES)}")
    accelerator = Accelerator(
        "tensorrt",
        {
            "precision_mode": TRT_PRECISION_MODES.get(precision, ""),
            "max_workspace_size_bytes": str(TRT_WORKSPACE_BYTES),
        },
    )
    tensorrt = tensorrt and precision in TRT_PRECISION_MODES
    batched = config.dynamic_batching and config.max_batch_size > 0
    buckets = bucket_sizes(config.max_batch_size)
    parameters = {
        **config.parameters,
        CUDNN_CONV_ALGO_SEARCH: CUDNN_ALGO_SEARCH_VALUES[cudnn_conv_algo_search],
        KILN_BUCKETING: "1" if batched else "0",
        KILN_CUDA_GRAPHS: "1" if cuda_graphs and batched else "0",
    }
    return dataclasses.replace(
        config,
        instance_kind="KIND_GPU",
        preferred_batch_sizes=buckets if batched else config.preferred_batch_sizes,
        warmup_batch_sizes=buckets if batched else config.warmup_batch_sizes,
        max_queue_delay_us=GPU_QUEUE_DELAY_US if batched else config.max_queue_delay_us,
        parameters=parameters,
        gpu_accelerators=(accelerator,) if tensorrt else (),
    )


def _set_platform(proto: mc.ModelConfig, config: TritonModelConfig) -> None:
    if PLATFORMS[config.platform] == "backend":
        proto.backend = config.platform
    else:
        proto.platform = config.platform


def _set_tensors(proto: mc.ModelConfig, config: TritonModelConfig) -> None:
    batched = config.max_batch_size > 0
    for tensor in config.inputs:
        item = proto.input.add(name=tensor.name, data_type=mc.DataType.Value(tensor.data_type))
        _set_dims(item, tensor.dims, batched)
    for tensor in config.outputs:
        item = proto.output.add(name=tensor.name, data_type=mc.DataType.Value(tensor.data_type))
        _set_dims(item, tensor.dims, batched)
        if tensor.label_filename:
            item.label_filename = tensor.label_filename


def _config_dims(dims: tuple[int, ...], batched: bool) -> tuple[int, ...]:
    """Triton needs at least one dim: a per-row scalar ([batch] tensor) is dims [1] (reshaped to [])."""
    return dims if dims or not batched else (1,)


def _set_dims(item: mc.ModelInput | mc.ModelOutput, dims: tuple[int, ...], batched: bool) -> None:
    item.dims.extend(_config_dims(dims, batched))
    if not dims and batched:
        item.reshape.SetInParent()


def _set_batching(proto: mc.ModelConfig, config: TritonModelConfig) -> None:
    if config.dynamic_batching and config.max_batch_size > 0:
        proto.dynamic_batching.SetInParent()  # an empty block is Triton's default batcher
        proto.dynamic_batching.preferred_batch_size.extend(config.preferred_batch_sizes)
        proto.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_us


def _set_instances(proto: mc.ModelConfig, config: TritonModelConfig) -> None:
    kind = mc.ModelInstanceGroup.Kind.Value(config.instance_kind)
    proto.instance_group.add(count=config.instance_count, kind=kind)
    proto.version_policy.latest.num_versions = config.latest_versions


def _set_warmup(proto: mc.ModelConfig, config: TritonModelConfig) -> None:
    """One zero-data request per warm-up batch size (dynamic dims as 1) so no first real request is slow;
    a GPU config warms every bucket, since each new shape costs a CUDA session its kernel planning.
    As Triton's ModelWarmup reads them: an unbatched model's sample has batch size 1 (Triton skips a
    batch 0 sample), and each input's dims are the config's (a per-row scalar's [1], not its reshape)."""
    if not config.warmup:
        return
    batched = config.max_batch_size > 0
    for size in config.warmup_batch_sizes if batched else (1,):
        name = "zero_batch" if size <= 1 else f"zero_batch_{size}"
        warmup = proto.model_warmup.add(name=name, batch_size=size)
        for tensor in config.inputs:
            item = warmup.inputs[tensor.name]
            item.data_type = mc.DataType.Value(tensor.data_type)
            item.dims.extend(d if d > 0 else 1 for d in _config_dims(tensor.dims, batched))
            item.zero_data = True


def _set_parameters(proto: mc.ModelConfig, config: TritonModelConfig) -> None:
    for key, value in sorted(config.parameters.items()):
        proto.parameters[key].string_value = value


def _set_optimization(proto: mc.ModelConfig, config: TritonModelConfig) -> None:
    """Triton's ``optimization { execution_accelerators { gpu_execution_accelerator [...] } }``."""
    for accelerator in config.gpu_accelerators:
        item = proto.optimization.execution_accelerators.gpu_execution_accelerator.add(name=accelerator.name)
        for key, value in sorted(accelerator.parameters.items()):
            item.parameters[key] = value


def to_proto(config: TritonModelConfig) -> mc.ModelConfig:
    """Build Triton's ModelConfig message step by step."""
    proto = mc.ModelConfig(name=config.name, max_batch_size=config.max_batch_size)
    steps = (_set_platform, _set_tensors, _set_batching, _set_instances, _set_warmup, _set_parameters)
    for step in (*steps, _set_optimization):
        step(proto, config)
    return proto


def to_pbtxt(config: TritonModelConfig) -> str:
    """The config.pbtxt text of ``config``."""
    return text_format.MessageToString(to_proto(config))


def proto_text(proto: mc.ModelConfig) -> str:
    """The config.pbtxt text of a parsed (``parse_pbtxt``) and edited config."""
    return text_format.MessageToString(proto)


def parse_pbtxt(text: str) -> mc.ModelConfig:
    """Parse config.pbtxt text with Triton's proto (raises ``text_format.ParseError`` when invalid)."""
    return text_format.Parse(text, mc.ModelConfig())
