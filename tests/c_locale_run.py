"""Train, export and serve a classifier whose class folders have non-ASCII names, in a process started
under a C locale without UTF-8 mode (``LC_ALL=C python -X utf8=0``: the locale's and the file names'
encoding are ASCII), and sweep procfs while this process maps a file with a non-ASCII name. Prints one
JSON line (ASCII) of what it saw, for ``tests/test_paths_and_encodings.py``.

Usage: ``python -X utf8=0 tests/c_locale_run.py <scratch> <data>``, ``<data>`` an image folder."""

from __future__ import annotations

import base64
import io
import json
import locale
import mmap
import os
import sys
from pathlib import Path

# A comment of a config.pbtxt edited by hand, which Triton reads as UTF-8.
HAND_COMMENT = "# modèle édité à la main\n"


def train_and_export(scratch: Path, data: str) -> tuple[dict, Path]:
    """The checkpoint of one epoch on ``data`` and the repository it is exported to."""
    from export.pipeline import export_checkpoint
    from training import classify
    from training.checkpoint import load_checkpoint

    argv = ["--model", "lenet", "--dataset", "folder", "--data-path", data, "--image-size", "12"]
    argv += ["--batch-size", "4", "--epochs", "1", "--no-progress", "--device", "cpu"]
    if classify.main([*argv, "--output-dir", str(scratch / "out")]) != 0:
        raise SystemExit("training failed")
    checkpoint = scratch / "out" / "lenet.pt"
    repository = scratch / "repository"
    export_checkpoint(checkpoint, repository, tensorrt="off", max_batch_size=4)
    return load_checkpoint(checkpoint), repository


def served_labels(repository: Path) -> list[str]:
    """The labels the gateway answers a classification with, best first."""
    import httpx
    import numpy as np
    from PIL import Image

    from serving.app import create_app
    from serving.settings import Settings
    from tests.repo_fixtures import LiveServer

    png = io.BytesIO()
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(png, format="PNG")
    body = {"images": [base64.b64encode(png.getvalue()).decode()], "top_k": 3}
    settings = Settings(model_repository=repository, grpc_port=0, intra_op_threads=1)
    with LiveServer(create_app(settings)) as live:
        answer = httpx.post(f"http://{live.url}/v1/models/lenet/classify", json=body, timeout=60)
    answer.raise_for_status()
    return [p["label"] for p in answer.json()["predictions"][0]]


def procfs_sweeps(scratch: Path) -> dict:
    """What the gateway's procfs readers find while this process maps a file named ``modèle.bin``."""
    from serving import metrics
    from serving.triton import shm_regions

    folder = os.fsencode(scratch / "mapped")
    os.makedirs(folder, exist_ok=True)
    name = os.path.join(folder, "modèle.bin".encode())
    with open(name, "wb") as file:
        file.write(b"\0" * mmap.PAGESIZE)
    with open(name, "rb") as file, mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ):
        metrics.forget_gone_processes(folder.decode("ascii"), own=True)  # a gateway starting
        mapped = shm_regions.mapped_files(folder.decode("ascii"))
    return {"mapped": [os.fsencode(path).decode("utf-8") for path in mapped]}


def main() -> None:
    scratch, data = Path(sys.argv[1]), sys.argv[2]
    seen = {"encoding": locale.getpreferredencoding(False), "filesystem": sys.getfilesystemencoding()}
    ckpt, repository = train_and_export(scratch, data)
    seen["labels"] = ckpt["labels"]
    entry = repository / "lenet"
    seen["labels_txt"] = (entry / "labels.txt").read_bytes().decode("utf-8")
    seen["parity_data"] = json.loads((entry / "kiln.json").read_bytes())["parity"]["data"]
    config = entry / "config.pbtxt"
    config.write_bytes(HAND_COMMENT.encode() + config.read_bytes())
    seen["served"] = served_labels(repository)
    seen.update(procfs_sweeps(scratch))
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
