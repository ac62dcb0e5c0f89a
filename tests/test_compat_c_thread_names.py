"""Each translator's decode and codec threads have OS names of their own: Linux keeps 15 bytes of a
thread's name, and ``kiln-decode-<name>`` left ``kiln-decode-tra`` for every decode worker of every
translator, so ``top -H``, py-spy and perf could not tell transformer's from transformer_int8's."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from serving.decoding.options import DecodingOptions
from serving.decoding.scheduler_config import SchedulerConfig
from serving.decoding.translator import decode_thread_name, translator_from_entry
from serving.threads import NAME_BYTES
from tests.test_scheduler import SPEC, FakeDecoder, fake_encoder
from tests.waiting import until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc/<pid>/task/<tid>/comm is Linux's")

NAMES = ("transformer", "transformer_int8")  # the same first 3 bytes after "kiln-decode-", and more


def _entry(root: Path, name: str) -> tuple[Path, dict]:
    """A ``<name>`` translate entry over the scripted step spec, with word-level tokenizers."""
    path = root / name
    path.mkdir()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate("abcdef")}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = Whitespace()
    for file in ("source_tokenizer.json", "target_tokenizer.json"):
        tokenizer.save(str(path / file))
    kiln = {"name": name, "translator": {"step_spec": SPEC}}
    (path / "kiln.json").write_text(json.dumps(kiln))
    return path, kiln


def _os_name(thread: threading.Thread) -> str:
    return Path(f"/proc/self/task/{thread.native_id}/comm").read_text().strip()


def test_every_decode_and_codec_thread_of_two_translators_has_a_distinct_os_name(tmp_path) -> None:
    translators = [
        translator_from_entry(
            *_entry(tmp_path, name), fake_encoder, FakeDecoder(), scheduler_config=SchedulerConfig(workers=2)
        )
        for name in NAMES
    ]

    async def started() -> tuple[list[str], list[str]]:
        for translator in translators:
            await translator.start()
        try:
            threads = [scheduler._thread for t in translators for scheduler in t.schedulers]
            await until(lambda: all(_os_name(t).startswith(("kdec", "kiln-")) for t in threads))  # named
            codec = []
            for translator in translators:
                await translator.translate(["a b"], DecodingOptions(beam_size=2, max_length=4))
                codec.append(await asyncio.wrap_future(translator._codec_thread.submit(_current_os_name)))
            return [_os_name(thread) for thread in threads], codec
        finally:
            for translator in translators:
                await translator.stop(5)

    decode, codec = asyncio.run(started())
    expected = [s.thread_name for t in translators for s in t.schedulers]
    assert decode == expected  # what the start-up line prints is what the OS shows
    assert len(set(decode)) == 4, decode  # was ["kiln-decode-tra"] * 4
    assert len(set(codec)) == 2, codec  # was ["kiln-codec-tran"] * 2
    assert all(len(name.encode()) <= NAME_BYTES for name in decode + codec)
    assert all(name.startswith("kdec") for name in decode)  # bench.frontend_cost counts these as decode


def _current_os_name() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


def test_the_numbers_that_make_a_decode_thread_name_unique_are_never_cut() -> None:
    long = "a_translator_with_a_long_name"
    assert decode_thread_name(0, 1, long) == "kdec0.1-a_trans"
    assert decode_thread_name(123, 45, long) == "kdec123.45-a_tr"
    assert decode_thread_name(0, 0, "é" * 8) == "kdec0.0-ééé"  # whole characters within 15 bytes


def test_the_start_up_line_maps_each_decode_thread_name_to_its_translator(caplog) -> None:
    from serving.gateway import Gateway
    from tests.test_log_hunt import _Translating

    class Pool:
        failed: dict[str, str] = {}
        translators: dict[str, object] = {}

        async def start(self, runner_for: object) -> None:
            self.translators = {
                "transformer": SimpleNamespace(
                    schedulers=[SimpleNamespace(thread_name=f"kdec0.{i}-transforme") for i in range(2)]
                ),
            }

    gateway = Gateway(_Translating(), None)
    gateway.translators = Pool()
    with caplog.at_level(logging.INFO, logger="serving.gateway"):
        asyncio.run(gateway.start())
    assert [r.getMessage() for r in caplog.records if r.name == "serving.gateway"] == [
        "translators serving transformer (2 decode workers: threads kdec0.0-transforme, kdec0.1-transforme)"
    ]
