"""Before `bench/gpu_check.sh` spends a GPU machine's time: is every module Kiln imports there?

A machine prepared by hand (``../shared/gpu/prepare.sh``: wheels on ``PYTHONPATH``, no pip install of the
project) lacks whatever the project started to depend on after the list of wheels was written: the
gateway then stops at start-up, stage after stage. This names every missing module at once, with the
distribution to download, and exits 1.

    python -m bench.gpu_preflight
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

# Each of pyproject.toml's [project.dependencies] (tests keep the two equal) -> the modules Kiln imports
# from it; plus the module of the onnxruntime the gpu extra installs.
MODULES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "numpy": ("numpy",),
    "scikit-learn": ("sklearn",),
    "pillow": ("PIL",),
    "matplotlib": ("matplotlib",),
    "tqdm": ("tqdm",),
    "rich": ("rich",),
    "tokenizers": ("tokenizers",),
    "num2words": ("num2words",),
    "sacrebleu": ("sacrebleu",),
    "onnx": ("onnx",),
    "onnxscript": ("onnxscript",),
    "onnxslim": ("onnxslim",),
    "fastapi": ("fastapi",),
    "uvicorn": ("uvicorn",),
    "pydantic": ("pydantic",),
    "pydantic-settings": ("pydantic_settings",),
    "python-multipart": ("python_multipart",),
    "httpx": ("httpx",),
    "grpcio": ("grpc",),
    "hpack": ("hpack",),
    "protobuf": ("google.protobuf",),
    "tritonclient": ("tritonclient.grpc", "tritonclient.http"),
    "prometheus-client": ("prometheus_client",),
}
EXTRA = {"onnxruntime-gpu": ("onnxruntime",)}


def missing(modules: dict[str, tuple[str, ...]]) -> dict[str, list[str]]:
    """The distributions of ``modules`` with a module that does not import, and which modules."""
    out: dict[str, list[str]] = {}
    for dist, names in modules.items():
        for name in names:
            try:
                found = importlib.util.find_spec(name) is not None
                if found and "." in name:
                    importlib.import_module(name)  # tritonclient.http needs gevent & co. to import
            except Exception:  # noqa: BLE001 - a module whose own imports fail is missing too
                found = False
            if not found:
                out.setdefault(dist, []).append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m bench.gpu_preflight", description=__doc__.split("\n\n")[0]
    ).parse_args(argv)
    absent = missing({**MODULES, **EXTRA})
    if not absent:
        print("gpu preflight: every module Kiln imports is here")
        return 0
    for dist, names in absent.items():
        print(f"gpu preflight: {dist} missing ({', '.join(names)} does not import)", file=sys.stderr)
    dists = " ".join(d for d in absent if d not in EXTRA)
    if dists:
        print(
            "download them where there is network (with their own dependencies; tritonclient.http needs "
            f"gevent geventhttpclient greenlet zope.event zope.interface brotli), e.g.\n  pip download "
            f"--no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d deps {dists}\n"
            "and install them into a folder on PYTHONPATH (README, 'An offline GPU machine')",
            file=sys.stderr,
        )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
