"""Build a tiny classifier model repository for gateway tests (reused by the gRPC/Triton tests).

The repository is the real export output (``export.pipeline.export_checkpoint``) of random-init
registry models saved as checkpoints; a minimal hand-built entry following docs/kiln-json.md is only
the fallback while ``export`` is not importable.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

LABELS = ("zero", "one", "two")
SIZE, CHANNELS, MAX_BATCH = 16, 1, 8

CONFIG_TEMPLATE = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
input [ {{ name: "images" data_type: TYPE_UINT8 dims: [ {size}, {size}, {channels} ] }} ]
output [
  {{ name: "logits" data_type: TYPE_FP32 dims: [ {classes} ] label_filename: "labels.txt" }},
  {{ name: "probabilities" data_type: TYPE_FP32 dims: [ {classes} ] label_filename: "labels.txt" }}
]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 2000 }}
"""


def build_classifier_repository(root: Path, models: tuple[str, ...] = ("lenet",)) -> Path:
    """Create ``root`` as a model repository holding one tiny classifier per name in ``models``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        from export.pipeline import export_checkpoint
    except ModuleNotFoundError:
        export_checkpoint = None
    for seed, name in enumerate(models):
        if export_checkpoint is None:
            _write_minimal_entry(root / name, name, seed)
        else:
            checkpoint = _tiny_checkpoint(root.parent / f"{root.name}-checkpoints" / f"{name}.pt", name, seed)
            export_checkpoint(checkpoint, root, max_batch_size=MAX_BATCH, tensorrt="off", name=name)
    return root


def _tiny_checkpoint(path: Path, name: str, seed: int) -> Path:
    """A random-init registry model saved as a contract-1 checkpoint (no training)."""
    import torch

    from training.checkpoint import make_checkpoint, save_checkpoint
    from training.models import build_model

    torch.manual_seed(seed)
    args = {"num_classes": len(LABELS), "in_channels": CHANNELS}
    preprocessing = {"input_size": [SIZE, SIZE], "channels": CHANNELS, "mean": [0.5], "std": [0.25]}
    ckpt = make_checkpoint(
        task="classify",
        model_name=name,
        model_args=args,
        model=build_model(name, **args),
        train_config={"note": "random init for gateway tests"},
        metrics={},
        preprocessing=preprocessing,
        labels=list(LABELS),
    )
    return save_checkpoint(ckpt, path)


def _write_minimal_entry(directory: Path, name: str, seed: int) -> None:
    import torch
    from torch import nn

    class TinyClassifier(nn.Module):
        """uint8 images [B, H, W, C] -> (logits, probabilities) [B, classes], normalisation inside."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(CHANNELS, 4, 3, padding=1)
            self.fc = nn.Linear(4 * SIZE * SIZE, len(LABELS))

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0  # (B, C, H, W)
            x = torch.relu(self.conv((x - 0.5) / 0.25))  # (B, 4, H, W)
            logits = self.fc(x.flatten(1))  # (B, classes)
            return logits, torch.softmax(logits, dim=-1)

    torch.manual_seed(seed)
    (directory / "1").mkdir(parents=True, exist_ok=True)
    example = torch.randint(0, 256, (2, SIZE, SIZE, CHANNELS), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        _export(TinyClassifier().eval(), example, directory / "1" / "model.onnx")
    classes = len(LABELS)
    config = CONFIG_TEMPLATE.format(
        name=name, max_batch=MAX_BATCH, size=SIZE, channels=CHANNELS, classes=classes
    )
    (directory / "config.pbtxt").write_text(config)
    (directory / "labels.txt").write_text("\n".join(LABELS) + "\n")
    kiln = {
        "kiln_format": 1,
        "name": name,
        "task": "classify",
        "model": {"name": name, "args": {}},
        "version": "1",
        "precision": "fp32",
        "inputs": [{"name": "images", "datatype": "UINT8", "dims": [-1, SIZE, SIZE, CHANNELS]}],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "dims": [-1, classes]},
            {"name": "probabilities", "datatype": "FP32", "dims": [-1, classes]},
        ],
        "roles": {"images": "images", "logits": "logits", "probabilities": "probabilities"},
        "preprocessing": {
            "input_size": [SIZE, SIZE],
            "channels": CHANNELS,
            "mean": [0.5],
            "std": [0.25],
            "layout": "NHWC",
            "dtype": "uint8",
        },
        "labels": "labels.txt",
    }
    (directory / "kiln.json").write_text(json.dumps(kiln, indent=2))


def _export(module, example, path: Path) -> None:
    import torch

    torch.onnx.export(
        module,
        (example,),
        str(path),
        dynamo=False,
        input_names=["images"],
        output_names=["logits", "probabilities"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=17,
    )


class LiveServer:
    """Run an ASGI app with uvicorn in a background thread on a free 127.0.0.1 port (a context manager)."""

    def __init__(self, app: object) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.app = app
        self.url = f"127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        import threading
        import time

        import uvicorn

        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
