"""Reduced precisions of an fp32 ONNX graph: fp16 (IO types kept) and int8 (gated).

Classifier int8 uses ONNX Runtime static quantization in QDQ format: uint8 activations (all
convolutions become integer on AVX-512 VNNI CPUs), int8 per-channel weights, calibrated on training
images; the entry is only written when validation top-1 drops by at most ``max_drop`` points
(:class:`GateResult`), or, without validation labels, when int8 picks fp32's class on at least
``1 - max_drop / 100`` of the images (:class:`AgreementGate`).
Translator int8 quantizes the decoder step's weight MatMuls dynamically (activation ranges measured
per call, so no calibration set); the entry is only written when beam search over it stays
token-identical to fp32 on enough held-out sentences and BLEU barely moves (:class:`TranslationGate`).

Classifier int8 weights stay within 7 bits (``reduce_range``): x86 CPUs without VNNI (AVX2, AVX-512F)
multiply uint8 by int8 with ``VPMADDUBSW``, whose 16-bit sums of two products saturate past 32767;
255 x 127 x 2 does, 255 x 64 x 2 does not (ONNX Runtime's quantization guide). Full-range weights
gave the demo ResNet-18 0.56 points less top-1 on such a CPU (its gate refused it), 7 bits none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from export.onnx_export import save_model

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
STATIC_REDUCE_RANGE = True  # 7-bit weights: no U8S8 saturation on CPUs without VNNI (module docstring)


def to_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and compute with Cast nodes at the boundary, so inputs/outputs keep their types."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    half = convert_float_to_float16(model, keep_io_types=True)
    save_model(half, dst)
    onnx.checker.check_model(str(dst), full_check=True)
    return dst


class ImageCalibrationReader:
    """CalibrationDataReader over uint8 NHWC images, in batches (ONNX Runtime protocol)."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int = 16) -> None:
        self.input_name, self.images, self.batch = input_name, images, batch
        self._iter: Iterator[dict[str, np.ndarray]] | None = None

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.images), self.batch):
            yield {self.input_name: self.images[i : i + self.batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = self._batches()
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None


@contextlib.contextmanager
def quantizer_temporaries_in(directory: Path) -> Iterator[None]:
    """ONNX Runtime's quantizers make temporary directories of their own in TMPDIR (``ort.quant.*``,
    ``pre.quant.*``: a copy of the graph, and the calibration graph with every activation an output, as
    large as the model and more): an export killed while quantizing (the OOM killer, ``kill -9``, a CI
    job's hard timeout) left them in TMPDIR for good, since the next export sweeps only its own working
    directories (``export.work_dir``). Made in ``directory`` (the export's working directory) instead,
    they go with it. ``tempfile.tempdir`` is the process's: export quantizes one graph at a time."""
    previous = tempfile.tempdir
    tempfile.tempdir = str(directory)
    try:
        yield
    finally:
        tempfile.tempdir = previous


def no_room_for(graph: Path, directory: Path) -> OSError | None:
    """ENOSPC naming ``directory`` where it has less room left than ``graph`` (and its ``.data`` file)
    takes, else None: a quantizer that failed there was cut short by a full disk. ONNX's shape inference
    writes its graph in C++ without checking the write, so on a full TMPDIR the quantizer failed parsing
    the cut-short file back ("DecodeError: Error parsing message", a traceback) and ``quant_pre_process``'s
    failure was warned about as a pre-processing one, not said to be the disk's."""
    try:
        stat = os.statvfs(directory)
        needed = sum(p.stat().st_size for p in (graph, Path(f"{graph}.data")) if p.exists())
    except OSError:
        return None
    if stat.f_bavail * stat.f_frsize >= needed:
        return None
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))


@contextlib.contextmanager
def full_disk_named(graph: Path, directory: Path) -> Iterator[None]:
    """A quantizer's failure while ``directory`` has no room for ``graph`` raised as the full disk's
    OSError (``no_room_for``), as every other write of an export on a full disk is."""
    try:
        yield
    except OSError:
        raise
    except Exception as exc:
        full = no_room_for(graph, directory)
        if full is None:
            raise
        raise full from exc


def to_int8(src: Path, dst: Path, calibration: np.ndarray, input_name: str = "images") -> Path:
    """Static QDQ quantization: activations QUInt8, weights QInt8 per channel in 7 bits (no U8S8
    saturation on CPUs without VNNI, see the module's docstring), MinMax calibration.

    The nodes that produce the graph's outputs (the logits' Gemm, the Softmax) stay fp32: quantized,
    the outputs themselves went through a uint8 round trip, probabilities in steps of 1/255 (half of
    the demo ResNet-18's exactly 0, rows summing to 1 +- 0.016) and logits tied within a step.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ValueError("int8 quantization needs calibration images; none were given")
    CalibrationDataReader.register(ImageCalibrationReader)
    dst.parent.mkdir(parents=True, exist_ok=True)
    prepared = dst.with_name("prepared.onnx")
    big = keeps_external_data(src)
    try:
        with quantizer_temporaries_in(dst.parent):
            quant_pre_process(
                str(src),
                str(prepared),
                skip_symbolic_shape=True,
                save_as_external_data=big,
                all_tensors_to_one_file=True,
                external_data_location=f"{prepared.name}.data",
            )
    except Exception as exc:  # noqa: BLE001 - pre-processing only improves quantization
        full = no_room_for(src, dst.parent)
        if full is not None:
            raise full from exc
        log.warning("quant_pre_process failed (%s); quantizing the graph as it is", exc)
        save_model(onnx.load(str(src)), prepared)
    try:
        model = onnx.load(str(prepared))
        if name_output_producers(model):
            save_model(model, prepared)
        with quantizer_temporaries_in(dst.parent), full_disk_named(prepared, dst.parent):
            quantize_static(
                str(prepared),
                str(dst),
                ImageCalibrationReader(input_name, calibration),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=STATIC_REDUCE_RANGE,
                nodes_to_exclude=output_producers(model),
                use_external_data_format=big,
            )
    finally:
        remove_graph(prepared)
    onnx.checker.check_model(str(dst), full_check=True)
    return dst


# Ops between a classifier's last product and its outputs that only move, pool or squash values: the
# outputs' nodes are followed back through them to that product (NiN's logits are
# Flatten(GlobalAveragePool(Relu(Conv))): excluding the Flatten alone left the Conv's output quantized)
PASS_THROUGH = frozenset(
    {
        "Flatten",
        "Reshape",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Transpose",
        "GlobalAveragePool",
        "Relu",
        "Softmax",
    }
)


def output_producers(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that make the graph's outputs (quantization excludes nodes by name): each
    output's producer, followed back through ``PASS_THROUGH`` ops to the product that feeds them."""
    producer = {out: node for node in model.graph.node for out in node.output}
    names: list[str] = []
    wanted = [o.name for o in model.graph.output]
    while wanted:
        node = producer.get(wanted.pop())
        if node is None or node.name in names:
            continue
        names.append(node.name)
        if node.op_type in PASS_THROUGH and node.input:
            wanted.append(node.input[0])  # the data input
    return names


def name_output_producers(model: onnx.ModelProto) -> int:
    """Name, in place, each unnamed node (those :func:`output_producers` names must have a name);
    returns how many were named."""
    unnamed = [n for n in model.graph.node if not n.name]
    for index, node in enumerate(unnamed):
        node.name = f"kiln_node_{index}_{node.output[0] if node.output else node.op_type}"
    return len(unnamed)


def gemms_as_matmuls(model: onnx.ModelProto) -> int:
    """Rewrite in place each plain ``Gemm`` (alpha = beta = 1, A not transposed) with a constant B as
    ``MatMul`` by B (transposed ahead of time when ``transB``), plus ``Add`` of its bias C if any.

    ONNX Runtime's dynamic quantization rewrites MatMuls only; a step that keeps its rows 2-D exports
    its projections as Gemm (the faster fp32 form). Returns the number of Gemms rewritten.
    """
    weights = {t.name: t for t in model.graph.initializer}
    nodes, rewritten = [], 0
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        plain = (
            attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        )
        if node.op_type != "Gemm" or not plain or node.input[1] not in weights:
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            transposed = onnx.numpy_helper.to_array(weights[weight]).T.copy()
            weight = f"{node.input[1]}__transposed_{rewritten}"
            model.graph.initializer.append(onnx.numpy_helper.from_array(transposed, weight))
        has_bias = len(node.input) > 2 and node.input[2] != ""
        product = f"{node.output[0]}__matmul" if has_bias else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], weight], [product], name=node.name))
        if has_bias:
            nodes.append(
                onnx.helper.make_node(
                    "Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"
                )
            )
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return rewritten


def weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul nodes whose second input is a constant weight (projections, FFN, vocabulary)."""
    weights = {t.name for t in model.graph.initializer}
    weights |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


# ONNX Runtime's quantize_dynamic logs this on the root logger (a WARNING line per translator entry in
# `make export`) for any graph without quant_pre_process's mark. Its pre-processing fuses the MatMul + Add
# pairs of gemms_as_matmuls back into Gemm, which dynamic quantization skips (a one-layer Transformer
# step kept 1 of its 9 weight products), so to_int8_dynamic quantizes without it on purpose; the gate
# measures the result.
PRE_PROCESS_ADVICE = "Please consider to run pre-processing before quantization"


class _DropPreProcessAdvice(logging.Filter):
    """Drops ONNX Runtime's :data:`PRE_PROCESS_ADVICE` record (on the root logger) alone."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root" and str(record.msg).startswith(PRE_PROCESS_ADVICE))


@contextlib.contextmanager
def without_pre_process_advice() -> Iterator[None]:
    """ONNX Runtime's advice to pre-process (see :data:`PRE_PROCESS_ADVICE`) dropped for the block, and
    nothing else it logs."""
    root, advice = logging.getLogger(), _DropPreProcessAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


class NoWeightProducts(ValueError):
    """A graph has no MatMul or Gemm with a constant weight: dynamic quantization has nothing to do."""


def to_int8_dynamic(src: Path, dst: Path) -> Path:
    """Dynamic int8 quantization of the weight MatMuls (and Gemms, as MatMul + Add) only: int8
    weights in 8 bits, uint8 activations per call (7-bit weights, as :func:`to_int8`'s, measured no
    better here: the demo GRU gate 99.0 -> 99.5 %, the LSTM's 98.0 -> 97.5 %, the Transformer's 100 %).

    Activation x activation MatMuls (attention scores and weighted sums) stay fp32: they have no
    constant operand to quantize ahead of time and are a small share of a decoder step.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    gemms_as_matmuls(model)
    nodes = weight_matmuls(model)
    if not nodes:
        raise NoWeightProducts(f"{src}: no MatMul or Gemm with a constant weight to quantize")
    dst.parent.mkdir(parents=True, exist_ok=True)
    prepared = dst.with_name("prepared.onnx")
    save_model(model, prepared)
    try:
        with (
            without_pre_process_advice(),
            quantizer_temporaries_in(dst.parent),
            full_disk_named(prepared, dst.parent),
        ):
            quantize_dynamic(
                str(prepared),
                str(dst),
                weight_type=QuantType.QInt8,
                nodes_to_quantize=nodes,
                use_external_data_format=keeps_external_data(prepared),
            )
    finally:
        remove_graph(prepared)
    onnx.checker.check_model(str(dst), full_check=True)
    return dst


def keeps_external_data(path: Path) -> bool:
    """Whether the graph at ``path`` keeps tensors in external files (a model over
    :data:`export.onnx_export.EXTERNAL_DATA_THRESHOLD`): the quantizers then write their
    intermediate graphs the same way, as one file over protobuf's 2 GiB could not be read back."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    return any(uses_external_data(t) for t in _get_all_tensors(model))


def remove_graph(path: Path) -> None:
    """Remove an intermediate graph and the ``<name>.data`` file :func:`save_model` may have written
    beside it (as large as the model's weights)."""
    path.unlink(missing_ok=True)
    Path(f"{path}.data").unlink(missing_ok=True)


def at_most(value: float, bound: float) -> bool:
    """``value <= bound``, a threshold met exactly included: figures computed from counts carry float
    rounding (199/200 - 198/200 is 0.5000000000000004 points, not the 0.5 a gate of 0.5 allows)."""
    return value <= bound or math.isclose(value, bound, rel_tol=1e-9, abs_tol=1e-12)


def shown_apart(value: float, bound: float) -> str:
    """``value`` to two decimals, or to as many more as it takes not to read as ``bound``: a refusal
    must not say "drop 0.50 > 0.5" of the 0.502 points that 251 of ImageNet's 50 000 images cost."""
    for digits in range(2, 13):
        if f"{value:.{digits}f}" != f"{bound:.{digits}f}":
            return f"{value:.{digits}f}"
    return f"{value:.2f}"  # equal to it (the other figure of the gate refused)


@dataclass(frozen=True)
class TranslationGate:
    """The translator int8 gate: agreement of int8 beam search with fp32 and the BLEU drop it costs.

    ``bleu_reference`` says what BLEU is measured against: the held-out references, or the fp32
    translations themselves when no references exist (then ``bleu_fp32`` is 100 by definition).
    """

    agreement: float  # fraction of sentences whose best hypothesis is token-identical to fp32
    sentences: int
    bleu_fp32: float
    bleu_int8: float
    bleu_reference: str
    min_agreement: float = 0.995
    max_bleu_drop: float = 0.2

    @property
    def bleu_drop(self) -> float:
        return self.bleu_fp32 - self.bleu_int8

    @property
    def passed(self) -> bool:
        return at_most(self.min_agreement, self.agreement) and at_most(self.bleu_drop, self.max_bleu_drop)

    def reason(self) -> str:
        """Why the gate refused (empty when it passed)."""
        if self.passed:
            return ""
        return (
            f"int8 agreement {shown_apart(100 * self.agreement, 100 * self.min_agreement)}% "
            f"(need >= {100 * self.min_agreement:.2f}%), BLEU drop "
            f"{shown_apart(self.bleu_drop, self.max_bleu_drop)} (max {self.max_bleu_drop}) "
            f"on {self.sentences} sentences"
        )

    def as_dict(self) -> dict[str, float | int | str | bool]:
        return {**dataclasses.asdict(self), "bleu_drop": self.bleu_drop, "passed": self.passed}


@dataclass(frozen=True)
class GateResult:
    """The int8 accuracy gate: top-1 in points before/after and whether the drop is acceptable."""

    accuracy_fp32: float
    accuracy_int8: float
    max_drop: float

    @property
    def drop(self) -> float:
        return 100.0 * (self.accuracy_fp32 - self.accuracy_int8)

    @property
    def passed(self) -> bool:
        return at_most(self.drop, self.max_drop)

    def reason(self) -> str:
        """Why the gate refused (empty when it passed)."""
        drop = shown_apart(self.drop, self.max_drop)
        return "" if self.passed else f"int8 top-1 drop {drop} > {self.max_drop} points"

    def as_dict(self) -> dict[str, float | bool]:
        return {
            "accuracy_fp32": self.accuracy_fp32,
            "accuracy_int8": self.accuracy_int8,
            "top1_drop_points": self.drop,
            "max_drop_points": self.max_drop,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class AgreementGate:
    """The classifier int8 gate when no labelled validation split exists: accuracy cannot be measured,
    so int8 must give fp32's top-1 class on at least ``1 - max_drop / 100`` of the images. Accuracy
    can drop by no more than the share of images whose class changed, so this bounds the drop by
    ``max_drop`` points whatever the labels would have been (and refuses when nothing was measured)."""

    agreement: float  # share of images where int8's top-1 class is fp32's
    images: int
    max_drop: float
    data: str  # what the images were (e.g. "random")

    GATE = "top-1 agreement with fp32 (no labels)"

    @property
    def min_agreement(self) -> float:
        return 1.0 - self.max_drop / 100.0

    @property
    def passed(self) -> bool:
        return self.images > 0 and at_most(self.min_agreement, self.agreement)

    def reason(self) -> str:
        """Why the gate refused (empty when it passed)."""
        agreement = shown_apart(100 * self.agreement, 100 * self.min_agreement)
        measured = f"{agreement}% < {100 * self.min_agreement:.2f}%"
        where = f"on {self.images} unlabelled ({self.data}) images"
        return "" if self.passed else f"int8 top-1 agreement with fp32 {measured} {where}"

    def as_dict(self) -> dict[str, float | int | str | bool]:
        return {
            "gate": self.GATE,
            "top1_agreement": self.agreement,
            "min_agreement": self.min_agreement,
            "images": self.images,
            "data": self.data,
            "max_drop_points": self.max_drop,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class MalformedGraph:
    """An int8 graph refused before its accuracy gate: parity found an output missing, of another shape
    or dtype, or NaN/inf where PyTorch's is finite. Its values are not bounded (int8 is judged on
    accuracy), but no accuracy figure excuses such a graph, and serving would refuse or return it."""

    errors: tuple[str, ...]

    GATE = "int8 outputs well formed"

    @property
    def passed(self) -> bool:
        return not self.errors

    def reason(self) -> str:
        """Why the graph was refused (empty when it was not)."""
        if not self.errors:
            return ""
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        return f"int8 graph malformed: {self.errors[0]}{more}"

    def as_dict(self) -> dict[str, str | list[str] | bool]:
        return {"gate": self.GATE, "errors": list(self.errors), "passed": self.passed}
