"""The GPU bench measures a TensorRT plan only at the batch sizes its optimization profile takes
(bench/engines.py, ``engine_batches``): export/tensorrt.py builds each plan with one profile whose max
batch is the entry's ``max_batch_size``, and TensorRT refuses an input shape beyond it. The gpu profile
asks for batches (1, 8, 64, 256), and a Kiln export's max_batch_size is 64. Nothing runs here."""

from __future__ import annotations

import json

from bench import engines, gpu

GPU_FULL = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def _entries(root, max_batch_size=64):
    """resnet18 (ONNX) and resnet18_trt (a plan) exported from one checkpoint: enough for the job list."""
    ckpt = root / "resnet18.pt"
    ckpt.write_bytes(b"")
    for name, artifact in (("resnet18", "model.onnx"), ("resnet18_trt", "model.plan")):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / artifact).write_bytes(b"")
        meta = {
            "task": "classify",
            "model": {"name": "resnet18"},
            "precision": "fp32",
            "version": "1",
            "inputs": [{"dims": [-1, 32, 32, 3]}],
            "max_batch_size": max_batch_size,
            "source_checkpoint": {"path": str(ckpt)},
        }
        (root / name / "kiln.json").write_text(json.dumps(meta))
    return root


def test_the_tensorrt_plan_is_measured_only_within_its_profile(tmp_path):
    repo = _entries(tmp_path)
    status = gpu.CudaStatus(True, GPU_FULL, "H100")
    jobs = gpu.gpu_jobs(repo, tmp_path, "resnet18", (1, 8, 64, 256), 1.0, status)
    batches = {j.engine: j.batch_sizes for j in jobs}
    assert batches["tensorrt"] == (1, 8, 64)
    # the ONNX entries have a dynamic batch axis: every engine on them keeps every size
    assert batches["onnxruntime-cuda"] == batches["pytorch-cuda"] == (1, 8, 64, 256)


def test_only_a_plan_with_a_batch_axis_is_limited():
    assert engines.engine_batches("onnxruntime", (1, 256), {"max_batch_size": 64}, "m") == (1, 256)
    assert engines.engine_batches("tensorrt", (1, 256), {}, "m") == (1, 256)
    assert engines.engine_batches("tensorrt", (1, 256), {"max_batch_size": 0}, "m") == (1, 256)
    assert engines.engine_batches("tensorrt", (1, 32, 256), {"max_batch_size": 32}, "m") == (1, 32)
