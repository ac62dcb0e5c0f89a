"""The flags of ``python -m bench`` and the profiles ``--profile`` chooses: what each profile measures
(batch sizes, concurrencies, durations, rounds) and which repository, checkpoints and entries it
measures them on. The entry point (:mod:`bench.__main__`) parses with :func:`build_parser`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench import engines, inputs

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "batches": (1, 8, 64),
        "engine_budget_s": 1.5,
        "concurrency": (1, 16, 64),
        "duration_s": 4.0,
        "beams": (4,),
        "translate_concurrency": (1, 32),
        "sentences": 128,
        "pa_concurrency": (1, 64),
        "pa_rounds": 3,
        "paired_rounds": 5,  # gateway / CTranslate2 alternations behind the translation targets
    },
    "full": {
        "batches": (1, 2, 4, 8, 16, 32, 64, 128, 256),
        "engine_budget_s": 3.0,
        "concurrency": (1, 2, 4, 8, 16, 32, 64, 128, 256),
        "duration_s": 8.0,
        "beams": (1, 4, 8),
        "translate_concurrency": (1, 8, 32, 64),
        "sentences": 256,
        "pa_concurrency": (1, 8, 32, 64),
        "pa_rounds": 5,
        "paired_rounds": 7,
    },
    # CUDA engines only (bench.gpu); says so and measures nothing on a machine without CUDA.
    # and, with --cpu-repository, the gateway on the GPU against the same gateway on this machine's CPU
    # (bench.gpu_serving)
    "gpu": {
        "batches": (1, 8, 64, 256),
        "engine_budget_s": 2.0,
        "serving_workers": None,  # 1, a quarter and half of the cores (1, 4, 8 on 16 cores)
        "serving_concurrency": (1, 64),
        "serving_duration_s": 3.0,
        "client_processes": 8,
        "translate_concurrency": 32,
        "sentences": 256,
    },
}


def build_parser(description: str) -> argparse.ArgumentParser:
    """The parser of ``python -m bench``, under ``description`` (the entry point's docstring)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=description)
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="quick",
        help="quick (~10 min on 2 cores), full (every batch, concurrency and beam), gpu (CUDA engines and "
        "the gateway on the GPU against the CPU); default: quick",
    )
    _add_model_options(parser)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["engines", "servers", "translation", "replicas"],
        help="run only these parts (default: all; with --profile gpu: engines, servers)",
    )
    parser.add_argument(
        "--threads",
        type=inputs.positive_int,
        default=engines.default_threads(),
        help="threads per engine and per server (default: the cores this process may use)",
    )
    parser.add_argument(
        "--gateway-workers",
        type=inputs.positive_int,
        default=engines.default_threads(),
        help="gateway processes (SO_REUSEPORT), --threads split among them; measured best: one per core",
    )
    _add_gpu_options(parser)
    parser.add_argument(
        "--output", type=Path, help="default: bench/results/<timestamp> (gpu-<timestamp> with --profile gpu)"
    )
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """What is measured: the repository, its checkpoints and the entries."""
    parser.add_argument(
        "--repository",
        type=Path,
        default=Path("model_repository"),
        help="the exported repository to serve (default: model_repository)",
    )
    parser.add_argument(
        "--checkpoints",
        type=Path,
        default=Path("checkpoints"),
        help="the checkpoints it was exported from: the PyTorch and CTranslate2 rows (default: checkpoints)",
    )
    parser.add_argument(
        "--classifier",
        default="resnet18",
        help="classifier entry to measure, with the precision twins exported from its checkpoint "
        "(default: resnet18)",
    )
    parser.add_argument(
        "--models-from",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first, so that the PyTorch rows can rebuild a classifier of your own that "
        "it registers (repeatable; also KILN_MODELS_FROM, comma-separated; README, 'Your own classifier')",
    )
    parser.add_argument("--translator", default="transformer", help="translator entry to measure")
    parser.add_argument(
        "--identity-translators",
        nargs="*",
        help="translators checked for identity with their PyTorch reference through the gateway and Triton, "
        "trained small and exported when missing (default: every other registered translator; the flag alone: none)",
    )


def _add_gpu_options(parser: argparse.ArgumentParser) -> None:
    """PROFILE=gpu: the gateways on the GPU and on the CPU measured side by side."""
    parser.add_argument(
        "--cpu-repository",
        type=Path,
        help="PROFILE=gpu: the same checkpoints exported with --device cpu, whose gateway is measured "
        "beside the gateway serving --repository on the GPU (default: exported to <repository>-cpu)",
    )
    parser.add_argument(
        "--serving-workers",
        type=inputs.positive_int,
        nargs="+",
        help="PROFILE=gpu: the gateway processes of each layout measured (default: 1, a quarter and half "
        "of the cores)",
    )
    parser.add_argument(
        "--serving-devices",
        nargs="+",
        choices=["gpu", "cpu"],
        default=["gpu", "cpu"],
        help="PROFILE=gpu: the gateways measured, on the GPU repository, the CPU one or both (default: "
        "both; gpu alone exports and measures no CPU side)",
    )
