"""The default decode workers of a translator: 2 on the CPU in a lone gateway process with 2 cores or
more (measured 1.35x the sentences/s of 1 at c=32 on 2 cores, since the decode thread recounts its rows
before answering), 1 in each of several ``--workers`` processes, 1 for a decoder that is not on ONNX
Runtime's CPU provider (a GPU's, Triton's); ``--decode-workers`` wins over all of it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from serving.decoding.scheduler_config import SchedulerConfig
from serving.decoding.translator_pool import decode_workers
from serving.lifespan import cpu_decode_workers, scheduler_config
from serving.settings import Settings
from tests.test_translate_serving import backend_and_pool


@pytest.mark.parametrize(
    ("workers", "board", "cpus", "expected"),
    [(1, None, 2, 2), (1, None, 16, 2), (1, None, 1, 1), (2, None, 2, 1), (1, Path("/dev/shm/b"), 4, 1)],
)
def test_the_cpu_default_follows_the_gateway_processes_cores(tmp_path, workers, board, cpus, expected):
    settings = Settings(model_repository=tmp_path, workers=workers, worker_board=board)
    assert cpu_decode_workers(settings, cpus=cpus) == expected


def test_the_settings_flag_wins_and_unset_leaves_the_choice_to_the_decoders_placement(tmp_path):
    assert scheduler_config(Settings(model_repository=tmp_path, decode_workers=3)).workers == 3
    assert scheduler_config(Settings(model_repository=tmp_path)).workers is None


class _Runner:
    def __init__(self, **attrs: object) -> None:
        self.__dict__.update(attrs)


def test_a_decoder_on_the_cpu_gets_the_cpu_default_any_other_one_worker():
    auto = SchedulerConfig(cpu_workers=2)
    assert decode_workers(auto, _Runner(on_cpu=True)) == 2
    assert decode_workers(auto, _Runner(on_cpu=False)) == 1  # CUDA provider
    assert decode_workers(auto, _Runner()) == 1  # Triton's runners say nothing of a placement
    assert decode_workers(SchedulerConfig(workers=3, cpu_workers=2), _Runner(on_cpu=False)) == 3


def test_an_onnxruntime_cpu_translator_runs_the_cpu_default_and_translates_alike(exported_translator_models):
    root, _ = exported_translator_models
    from serving.decoding.beam_search import DecodingOptions

    options = DecodingOptions(beam_size=4, max_length=16)
    texts = ["one two three", "seven", "twenty one", "forty four"]

    async def translate(config: SchedulerConfig) -> tuple[int, list]:
        async with backend_and_pool(root, config) as (_, pool):
            translator = pool.get("transformer")
            answers = await asyncio.gather(*(translator.translate([t], options) for t in texts))
            return len(translator.schedulers), [a[0][0].tokens for a in answers]

    two, tokens_two = asyncio.run(translate(SchedulerConfig(cpu_workers=2)))
    one, tokens_one = asyncio.run(translate(SchedulerConfig(workers=1, cpu_workers=2)))
    assert (two, one) == (2, 1)
    assert tokens_two == tokens_one
