"""Whether the gateway's classifier answers equal ONNX Runtime called directly, alone and under load.

Issue 13 asks that outputs stay identical to ONNX Runtime's direct answers while the gateway batches,
and a request alone now runs on another session (more threads) than a merged batch. Distinct images
go through the gateway over gRPC one at a time and then ``concurrency`` at a time (so they merge into
batches); each answer is compared bit for bit with a one-thread ONNX Runtime session run on that image
alone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np


def direct_answers(model_file: Path, images: np.ndarray) -> tuple[list[str], list[dict[str, np.ndarray]]]:
    """Every output of a one-thread session for each image alone (batch 1)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = session.get_inputs()[0].name
    return names, [dict(zip(names, session.run(names, {feed: image[None]}), strict=True)) for image in images]


async def gateway_answers(
    grpc_url: str,
    model: str,
    tensor_input: tuple[str, str],
    outputs: list[str],
    images: np.ndarray,
    concurrency: int,
) -> list[dict[str, np.ndarray]]:
    """The gateway's answer for each image (one request each, at most ``concurrency`` in flight);
    ``tensor_input`` is the input's (name, KServe datatype)."""
    from tritonclient.grpc import aio as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    gate = asyncio.Semaphore(concurrency)

    async def one(image: np.ndarray) -> dict[str, np.ndarray]:
        tensor = grpcclient.InferInput(tensor_input[0], [1, *image.shape], tensor_input[1])
        tensor.set_data_from_numpy(image[None])
        wanted = [grpcclient.InferRequestedOutput(name) for name in outputs]
        async with gate:
            result = await client.infer(model, [tensor], outputs=wanted)
        return {name: result.as_numpy(name) for name in outputs}

    try:
        return list(await asyncio.gather(*(one(image) for image in images)))
    finally:
        await client.close()


def compare(got: list[dict[str, np.ndarray]], want: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """How many answers are bit-identical, how many rank the same class first (on a GPU, whose float
    arithmetic differs from the CPU's, answers are close rather than identical), and the largest absolute
    difference over all of them."""
    identical, same_top1, worst = 0, 0, 0.0
    for have, expected in zip(got, want, strict=True):
        same, top1 = True, True
        for name, value in expected.items():
            other = np.asarray(have[name]).reshape(value.shape)
            if not np.array_equal(other, value):
                same = False
                worst = max(worst, float(np.max(np.abs(other.astype(np.float64) - value))))
                if value.ndim and np.issubdtype(value.dtype, np.floating):
                    top1 &= bool(np.array_equal(other.argmax(-1), value.argmax(-1)))
                else:
                    top1 = False
        identical += same
        same_top1 += top1
    return {"sent": len(want), "identical": identical, "same_top1": same_top1, "max_abs_diff": worst}


def check(
    grpc_url: str,
    repository: Path,
    model: str,
    input_dims: tuple[int, ...],
    *,
    n: int = 256,
    concurrency: int = 64,
) -> dict[str, Any]:
    """``{"alone": {...}, "under_load": {...}}``: the comparison one at a time (``n // 8`` images) and at
    ``concurrency`` (``n`` images)."""
    import json

    from serving.execution.datatypes import numpy_dtype

    spec = json.loads((repository / model / "kiln.json").read_text(encoding="utf-8"))["inputs"][0]
    tensor_input = (spec["name"], spec["datatype"])
    images = (
        np.random.default_rng(7).integers(0, 256, size=(n, *input_dims)).astype(numpy_dtype(spec["datatype"]))
    )
    from serving.execution.version_policy import served_version

    # the version the gateway answers a call naming none with: the newest its version_policy serves
    served = Path(served_version(str(repository / model)))
    names, want = direct_answers(served / "model.onnx", images)
    alone = max(1, n // 8)
    result = {}
    for label, count, c in (("alone", alone, 1), ("under_load", n, concurrency)):
        got = asyncio.run(gateway_answers(grpc_url, model, tensor_input, names, images[:count], c))
        result[label] = {"concurrency": c, **compare(got, want[:count])}
    return result


def identical_percent(result: dict[str, Any]) -> float:
    """The share of identical answers over both phases (NaN when nothing was compared)."""
    sent = sum(part["sent"] for part in result.values())
    return 100.0 * sum(part["identical"] for part in result.values()) / sent if sent else float("nan")
