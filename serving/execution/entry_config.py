"""A model entry's settings files, read and checked: its config.pbtxt as Triton's model-config
validation checks it, and its kiln.json as the gateway reads it (docs/kiln-json.md).

Every refusal is a ValueError naming the file and what is wrong in it, which the repository reader
(:mod:`serving.execution.repository`) reports as the entry's load failure, as Triton fails the load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serving.execution.batch_policy import batching_problems
from serving.execution.datatypes import CONFIG_TYPE_TO_DATATYPE, DATATYPE_TO_NUMPY

WILDCARD = -1  # a variable-size dimension

# The kiln.json fields the gateway reads as JSON objects (docs/kiln-json.md); the others it reads
# tolerate any type (a ``labels`` that is no file name is ignored, a non-string ``task`` serves nothing).
KILN_OBJECTS = ("roles", "preprocessing", "export")


def read_config(directory: Path) -> model_config_pb2.ModelConfig:
    """The config.pbtxt of model directory ``directory``, its name filled in from the directory's;
    one that does not parse, names another model or that Triton refuses is a ValueError."""
    config_path = directory / "config.pbtxt"
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(config_path.read_text(encoding="utf-8"), config)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config_path}: not a valid Triton config.pbtxt: {exc}") from None
    if not config.name:
        config.name = directory.name
    if config.name != directory.name:
        raise ValueError(
            f"config.pbtxt names the model {config.name!r} but its directory is {directory.name!r}"
        )
    complete_backend_fields(config, directory)
    problems = config_problems(config)
    if problems:
        raise ValueError(f"{config_path}: {'; '.join(problems)} (Triton refuses to load it too)")
    return config


ONNX_BACKEND, ONNX_PLATFORM, ONNX_FILENAME = "onnxruntime", "onnxruntime_onnx", "model.onnx"
TENSORRT_PLATFORM = "tensorrt_plan"
# The platform each backend Triton knows takes ("unexpected 'platform' and 'backend' pair" otherwise)
BACKEND_PLATFORMS = {ONNX_BACKEND: ONNX_PLATFORM, "tensorrt": TENSORRT_PLATFORM}


def complete_backend_fields(config: model_config_pb2.ModelConfig, directory: Path) -> None:
    """Fill in an ONNX model's ``backend`` and ``platform`` where the config leaves them out, as Triton's
    ``AutoCompleteBackendFields`` does before anything reads them (also with auto-complete disabled;
    its ``default_model_filename`` is filled in where the config is shown, ``as_triton_shows``): a
    ``backend: "onnxruntime"`` config was "onnxruntime" in its metadata, not Triton's
    "onnxruntime_onnx", and a config naming neither, beside a ``model.onnx``, was refused. One
    listing no input is left alone: Triton completes its tensors from the model file too, which the
    gateway does not, and its refusal says so (``unnamed_platform``). A ``backend: "tensorrt"`` config
    gets its ``tensorrt_plan`` platform as in Triton (it was refused as a mismatched pair)."""
    guessed = bool(config.input) and not config.platform and _names_onnx_file(config, directory)
    if not config.backend and (config.platform == ONNX_PLATFORM or guessed):
        config.backend = ONNX_BACKEND
    if config.backend in BACKEND_PLATFORMS:
        config.platform = config.platform or BACKEND_PLATFORMS[config.backend]


def _names_onnx_file(config: model_config_pb2.ModelConfig, directory: Path) -> bool:
    """Whether the config's ``default_model_filename`` is an ONNX model's or, naming none, the first
    subdirectory of ``directory`` (by name, any name: the one Triton looks in) holds a ``model.onnx``."""
    if config.default_model_filename:
        return config.default_model_filename == ONNX_FILENAME
    try:
        first = min((p for p in directory.iterdir() if p.is_dir()), default=None)
        return first is not None and (first / ONNX_FILENAME).exists()
    except OSError:  # unreadable: no model file found, as none would load
        return False


def config_problems(config: model_config_pb2.ModelConfig) -> list[str]:
    """What Triton's model-config validation refuses in ``config``, each naming its field: a hand edit
    that Triton would not load (a zero dimension, a preferred batch size past ``max_batch_size``) is
    refused at load instead of loading READY and failing every request, or batching otherwise."""
    batching = int(config.max_batch_size)
    problems = [] if batching >= 0 else [f"max_batch_size must be 0 or more, got {batching}"]
    problems += _platform_problems(config)
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for tensor in tensors:
            problems += _tensor_problems(kind, tensor, batching)
            problems += _format_problems(kind, tensor, config.platform)
    if config.HasField("dynamic_batching"):
        problems += batching_problems(config.dynamic_batching, batching)
    return problems + _ensemble_problems(config)


def _platform_problems(config: model_config_pb2.ModelConfig) -> list[str]:
    """Triton's rule that a backend it knows runs its own platform only: ``platform: "onnxruntime_onnx"``
    beside ``backend: "tensorrt"`` loaded here as an ONNX model, and fails Triton's load."""
    wanted = BACKEND_PLATFORMS.get(config.backend)
    if wanted is None or config.platform == wanted:
        return []
    return [
        f"platform {config.platform!r} and backend {config.backend!r} do not go together "
        f"(backend {config.backend!r} takes platform {wanted!r})"
    ]


IMAGE_FORMATS = (model_config_pb2.ModelInput.FORMAT_NHWC, model_config_pb2.ModelInput.FORMAT_NCHW)


def _format_problems(kind: str, tensor: Any, platform: str) -> list[str]:
    """Triton's ``ValidateModelInput``/``ValidateModelOutput`` rules on a tensor's layout flags: an
    image ``format`` takes 3 dims, and shape tensors and non-linear formats are TensorRT's alone (the
    embedded backend served such a config as if the flag were not there)."""
    where = f"{kind} {tensor.name!r}"
    problems = []
    if kind == "input" and tensor.format in IMAGE_FORMATS and len(tensor.dims) != 3:
        name = model_config_pb2.ModelInput.Format.Name(tensor.format)
        problems.append(
            f"{where} has format {name}, which requires 3 dims, got {[int(d) for d in tensor.dims]}"
        )
    if platform != TENSORRT_PLATFORM:
        for flag in ("is_shape_tensor", "is_non_linear_format_io"):
            if getattr(tensor, flag):
                problems.append(f"{where} sets {flag}, which only the {TENSORRT_PLATFORM} platform takes")
    return problems


ENSEMBLE = "ensemble"


def _ensemble_problems(config: model_config_pb2.ModelConfig) -> list[str]:
    """Triton's rule that ``ensemble_scheduling`` and ``platform: "ensemble"`` go together: an
    onnxruntime entry given steps by hand loaded READY and ran its own graph, the steps ignored. An
    ensemble's block must hold a step too, as Triton's "must specify 'step' for ensemble" says (an empty
    ``ensemble_scheduling {}`` loaded without a word here)."""
    steps = config.HasField("ensemble_scheduling")
    if steps and config.platform != ENSEMBLE:
        return [f"ensemble_scheduling cannot be set on a model whose platform is not {ENSEMBLE!r}"]
    if config.platform == ENSEMBLE and not steps:
        return [f"platform {ENSEMBLE!r} must have an ensemble_scheduling block"]
    if config.platform == ENSEMBLE and not config.ensemble_scheduling.step:
        return ["ensemble_scheduling must have at least one step"]
    return []


def _tensor_problems(kind: str, tensor: Any, max_batch_size: int) -> list[str]:
    """Triton's ``ValidateIOShape``: a name, a data_type, dims of sizes >= 1 or -1, and a reshape of
    the same element count."""
    where = f"{kind} {tensor.name!r}"
    if not tensor.name:
        return [f"an {kind} has no name"]
    problems = []
    if tensor.data_type == model_config_pb2.TYPE_INVALID:
        problems.append(f"{where} must specify data_type")
    dims = [int(d) for d in tensor.dims]
    if not dims:
        problems.append(f"{where} must specify dims")
    if any(d < 1 and d != WILDCARD for d in dims):
        problems.append(f"{where} dims {dims}: each must be >= 1, or -1 for a variable size")
    if not tensor.HasField("reshape"):
        return problems
    shape = [int(d) for d in tensor.reshape.shape]
    if not shape and max_batch_size == 0:
        problems.append(
            f"{where} cannot have an empty reshape in a model without batching (max_batch_size 0)"
        )
    elif any(d < 1 and d != WILDCARD for d in shape):
        problems.append(f"{where} reshape {shape}: each must be >= 1, or -1 for a variable size")
    elif _trunks(dims) != (_trunks(shape) if shape else [1]):  # an empty reshape holds one element
        problems.append(f"{where}: dims {dims} and reshape {shape} hold different numbers of elements")
    return problems


def _trunks(dims: list[int]) -> list[int]:
    """The element counts between variable-size dimensions ([2, 4, -1, 6] -> [8, 6]): a reshape keeps them."""
    counts = [1]
    for dim in dims:
        if dim == WILDCARD:
            counts.append(1)
        else:
            counts[-1] *= dim
    return counts


def read_kiln(path: Path) -> dict[str, Any]:
    """Parse a kiln.json; a file that is no JSON object, or a field of the wrong type, names itself
    (instead of an AttributeError stopping the gateway at start-up or a 500 at a request)."""
    try:
        kiln = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # invalid JSON or not UTF-8
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(kiln, dict):
        raise ValueError(f"{path}: must hold a JSON object, not a {type(kiln).__name__}")
    for key in KILN_OBJECTS:
        if key in kiln and not isinstance(kiln[key], dict):
            raise ValueError(f"{path}: {key!r} must be a JSON object, got {kiln[key]!r}")
    problems = preprocessing_problems(kiln.get("preprocessing", {}))
    if problems:
        raise ValueError(f"{path}: {'; '.join(problems)}")
    return kiln


LAYOUTS = ("NHWC", "NCHW")


def preprocessing_problems(preprocessing: dict[str, Any]) -> list[str]:
    """What in kiln.json's ``preprocessing`` the classify route cannot lay an image out by, each naming
    its field: such an entry loaded READY, and every image sent to it was a 500 ("internal error:
    ValueError") that named neither the file nor the field."""
    problems = []
    size = preprocessing.get("input_size", [1, 1])  # absent: each image at its own size
    if not (isinstance(size, list) and len(size) == 2 and all(map(_positive, size))):
        problems.append(f"'preprocessing.input_size' must be [height, width] in pixels, got {size!r}")
    channels = preprocessing.get("channels", 3)
    if not _positive(channels):
        problems.append(f"'preprocessing.channels' must be a positive integer, got {channels!r}")
    layout = preprocessing.get("layout", LAYOUTS[0])
    if layout not in LAYOUTS:
        problems.append(f"'preprocessing.layout' must be one of {list(LAYOUTS)}, got {layout!r}")
    dtype = preprocessing.get("dtype", "uint8")
    if not _numeric_dtype(dtype):
        problems.append(f"'preprocessing.dtype' must name a numeric dtype (uint8, float32...), got {dtype!r}")
    return problems


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _numeric_dtype(name: Any) -> bool:
    try:
        return isinstance(name, str) and np.dtype(name).kind in "biuf"
    except (TypeError, ValueError, SyntaxError):  # "," or "(2,3" are parsed as Python: SyntaxError
        return False


IMAGE_CHANNELS = (1, 3)  # grey or RGB: what the classify route lays an image out in
# What the classify route lays an image out by where kiln.json's ``preprocessing`` leaves a field out
IMAGE_DEFAULTS = {"layout": LAYOUTS[0], "channels": 3, "input_size": "each image at its own size"}


def image_input_problems(preprocessing: dict[str, Any], tensor: Any) -> list[str]:
    """What in kiln.json's ``preprocessing`` lays an image out otherwise than the model's images input
    ``tensor`` (config.pbtxt) takes one, each naming its field: such an entry loads and serves KServe v2
    infer, but every image sent to /v1 classify was a 400 blaming the client's image for the server's
    configuration. ``tensor.dims`` are one image's: the route adds the batch dimension where it has one."""
    channels = preprocessing.get("channels", 3)
    if channels not in IMAGE_CHANNELS:
        return [
            f"'preprocessing.channels' is {channels}; the classify route sends 1 (grey) or 3 (RGB) channels"
        ]
    problems = []
    dtype = np.dtype(preprocessing.get("dtype", "uint8"))
    datatype = CONFIG_TYPE_TO_DATATYPE.get(model_config_pb2.DataType.Name(tensor.data_type), "")
    if DATATYPE_TO_NUMPY.get(datatype) != dtype:
        problems.append(f"'preprocessing.dtype' is {dtype.name!r} but input {tensor.name!r} is {datatype}")
    dims = [int(d) for d in tensor.dims]
    layout, size = preprocessing.get("layout", LAYOUTS[0]), preprocessing.get("input_size")
    shape = _laid_out(layout, channels, size)
    if len(dims) != len(shape):
        problems.append(f"input {tensor.name!r} takes {dims}, not one image's [H, W, C] or [C, H, W]")
    elif not _fits(shape, dims):
        other = LAYOUTS[1 - LAYOUTS.index(layout)]
        channel = 0 if layout == "NCHW" else 2
        wrong = [i for i in range(3) if not _fits(shape[i : i + 1], dims[i : i + 1])]
        field = "layout" if _fits(_laid_out(other, channels, size), dims) else "input_size"
        field = "channels" if field == "input_size" and wrong[0] == channel else field
        value = preprocessing.get(field, f"absent, so {IMAGE_DEFAULTS[field]}")
        problems.append(
            f"'preprocessing.{field}' is {value}: an image laid out as {shape} ({layout}), "
            f"but input {tensor.name!r} takes {dims}"
        )
    return problems


def _laid_out(layout: str, channels: int, size: list[int] | None) -> list[int]:
    """The shape the classify route gives one image: (H, W, C) or (C, H, W), -1 where it keeps the
    image's own height and width (no ``input_size``)."""
    height, width = size or (WILDCARD, WILDCARD)
    return [channels, height, width] if layout == "NCHW" else [height, width, channels]


def _fits(shape: list[int], dims: list[int]) -> bool:
    return len(shape) == len(dims) and all(
        WILDCARD in (s, d) or s == d for s, d in zip(shape, dims, strict=True)
    )
