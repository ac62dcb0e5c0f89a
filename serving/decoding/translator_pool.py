"""The translator pool: every ``translate`` entry of a repository served by a :class:`Translator`.

At construction each entry's config is made to declare the outputs a translator answers
(:func:`declare_outputs`); at start each entry gets its translator (:func:`serving.decoding.translator.
translator_from_entry`), one decode worker per scheduler, each over its own encoder/decoder runners from
the backend, with rows and encoder batch capped by those entries' ``max_batch_size``. One entry that
cannot be served is reported and never keeps the others from serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import replace
from functools import partial
from typing import Any

from tritonclient.grpc import model_config_pb2

from serving.decoding import beam_search as bs
from serving.decoding import native_decoder, step_spec
from serving.decoding.scheduler_config import DecodeObserver, SchedulerConfig
from serving.decoding.translator import FUSED_ATTENTION, OUTPUTS, Translator, translator_from_entry
from serving.errors import BadRequest
from serving.execution.repository import check_not_replaced

log = logging.getLogger("serving.decoding.translator")  # the translators' log, whichever part writes it


class TranslatorPool:
    """Every ``task == "translate"`` entry of a repository, over encoder/decoder runners a backend provides."""

    def __init__(
        self,
        repository: Any,
        *,
        scheduler_config: SchedulerConfig | None = None,
        limits: bs.DecodingLimits | None = None,
        observer: DecodeObserver | None = None,
    ) -> None:
        self.repository = repository
        self.scheduler_config = scheduler_config or SchedulerConfig()
        self.limits, self.observer = limits, observer
        self.translators: dict[str, Translator] = {}
        self.failed: dict[str, str] = {}
        for name in self.names():  # their metadata and config list what their infer answers
            declare_outputs(repository.entries[name])

    def names(self) -> list[str]:
        """The translate entries of the repository (served by this pool, never by a batcher)."""
        return sorted(n for n, e in self.repository.entries.items() if e.task == "translate")

    async def start(self, runner_for: Any) -> None:
        """Build and start one translator per entry; ``runner_for(entry_name)`` gives a Runner or raises.

        Each decode worker gets its own encoder/decoder runners (a backend may give each call its
        own session)."""
        for name in self.names():
            entry = self.repository.entries[name]
            try:
                encoder, decoder = step_entries(entry)
                check_one_checkpoint(entry, [self.repository.get(encoder), self.repository.get(decoder)])
                config = _capped(self.scheduler_config, self.repository, encoder, decoder)
                first = _runner_pair(runner_for, encoder, decoder)
                pair = partial(_runner_pair, runner_for, encoder, decoder, again=True)  # the other workers'
                config = replace(config, workers=decode_workers(config, first[1]))
                translator = translator_from_entry(
                    entry.path,
                    entry.kiln,
                    *first,
                    scheduler_config=config,
                    limits=self.limits,
                    observer=self.observer,
                    more_runners=pair,
                )
                for read in (entry, self.repository.get(encoder), self.repository.get(decoder)):
                    check_not_replaced(read)  # its graphs and tokenizers were opened from these
                self.translators[name] = translator  # stopped by stop() even if its start fails half-way
                await translator.start()
                if self.observer is not None:  # read at a scrape: nothing per request
                    self.observer.watch_queue_depth(translator.name, translator.waiting)
            except Exception as exc:  # noqa: BLE001 - one broken translator must not stop the others
                log.error("translator %s cannot be served: %s", name, exc)
                self.failed[name] = f"{type(exc).__name__}: {exc}"
                broken = self.translators.pop(name, None)
                if broken is not None:
                    try:
                        await broken.stop(0.0)
                    except Exception:  # noqa: BLE001 - already reported as not served
                        log.debug("translator %s: stop after a failed start", name, exc_info=True)

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop every translator together, each within ``grace_s``; one that fails to stop is logged
        and does not leave the others running (the first such error is raised once all are stopped)."""
        translators = list(self.translators.items())
        self.translators.clear()
        results = await asyncio.gather(*(t.stop(grace_s) for _, t in translators), return_exceptions=True)
        errors = [
            (name, r)
            for (name, _), r in zip(translators, results, strict=True)
            if isinstance(r, BaseException)
        ]
        for name, error in errors:
            log.error("translator %s did not stop cleanly", name, exc_info=error)
        if errors:
            raise errors[0][1]

    def get(self, name: str) -> Translator | None:
        return self.translators.get(name)


def declare_outputs(entry: Any) -> None:
    """Make a ``<name>`` entry's config declare the outputs its translator answers (:data:`OUTPUTS`, each
    [n, n_best]: one variable dim after the batch axis), whatever its export wrote (``translation`` alone,
    as [n, 1]), so the gateway's metadata and config of it list what an infer returns."""
    config = entry.config
    dims = [-1] if config.max_batch_size > 0 else [-1, -1]
    served = [(name, data_type, dims) for name, data_type in OUTPUTS]
    declared = [(o.name, model_config_pb2.DataType.Name(o.data_type), list(o.dims)) for o in config.output]
    if declared == served:
        return
    log.debug(
        "translator %s: serving outputs %s where its config.pbtxt declares %s", entry.name, served, declared
    )
    del config.output[:]
    for name, data_type, shape in served:
        config.output.add(name=name, data_type=data_type, dims=shape)


def _runner_pair(
    runner_for: Any, encoder: str, decoder: str, *, again: bool = False
) -> tuple[step_spec.Runner, step_spec.Runner]:
    """One decode worker's encoder and decoder runners, on their fused-attention graphs where written
    (the decoder's steps compiled where it can be; ``again``: not the first worker's, logged at debug)."""
    decoder_runner = native_decoder.attach(runner_for(decoder, graph=FUSED_ATTENTION), decoder, again=again)
    return runner_for(encoder, graph=FUSED_ATTENTION), decoder_runner


def decode_workers(config: SchedulerConfig, run_decoder: Any) -> int:
    """A translator's decode workers: ``config.workers`` where set, else ``config.cpu_workers`` for a
    decoder on ONNX Runtime's CPU provider (its runner's ``on_cpu``), else 1: several CPU workers
    are CTranslate2's ``inter_threads``, measured faster on 2 cores; a GPU decoder or Triton's
    steps were not measured with more than one."""
    if config.workers is not None:
        return config.workers
    return config.cpu_workers if getattr(run_decoder, "on_cpu", False) else 1


def _capped(config: SchedulerConfig, repository: Any, encoder: str, decoder: str) -> SchedulerConfig:
    """Rows and encoder batch within the encoder / decoder entries' ``max_batch_size``."""
    rows = repository.get(decoder).max_batch_size or config.max_rows
    sentences = repository.get(encoder).max_batch_size or config.max_encoder_batch
    return replace(
        config,
        max_rows=min(config.max_rows, rows),
        max_encoder_batch=min(config.max_encoder_batch, sentences),
    )


def check_one_checkpoint(entry: Any, steps: list[Any]) -> None:
    """Refuse a translator whose encoder or decoder entry was exported from another checkpoint than its
    ``<name>`` entry (their kiln.json ``source_checkpoint.sha256``): export writes the three one after the
    other, so a run stopped between them (a full disk) after a retrain left a new encoder beside an old
    decoder, which would translate wrongly without a word. Entries without the record are not checked."""
    sources = {e.name: _source_sha256(e) for e in (entry, *steps)}
    known = {name: sha for name, sha in sources.items() if sha is not None}
    if len(set(known.values())) > 1:
        shown = ", ".join(f"{name} from {sha[:12]}" for name, sha in known.items())
        raise ValueError(
            f"its entries were exported from different checkpoints ({shown}); export its checkpoint again "
            "(python -m export CHECKPOINT) to write them together"
        )


def _source_sha256(entry: Any) -> str | None:
    source = entry.kiln.get("source_checkpoint") if isinstance(entry.kiln, dict) else None
    sha = source.get("sha256") if isinstance(source, dict) else None
    return sha if isinstance(sha, str) else None


def cannot_translate(entry: Any, entries: dict[str, Any]) -> BadRequest:
    """The 400 for a translate call to ``entry``, a model of another task: for a translator's encoder or
    decoder entry, naming the translator that calls it (it said only "a translate_encoder model; it
    cannot translate", and the user looked for the entry that does)."""
    owners = []
    for name, other in entries.items():
        if other.task == "translate" and name != entry.name:
            with contextlib.suppress(ValueError):
                if entry.name in step_entries(other):
                    owners.append(name)
    whose = "the translator whose step it is" if len(owners) == 1 else "the translators whose step it is"
    hint = f"; translate with {' or '.join(map(repr, sorted(owners)))}, {whose}" if owners else ""
    return BadRequest(
        f"model {entry.name!r} is a {entry.task or 'non-translate'} model; it cannot translate{hint}"
    )


def step_entries(entry: Any) -> tuple[str, str]:
    """The encoder and decoder entries a translator's kiln.json names (a KeyError named neither); a
    name that is not a plain entry name (empty, ``.``, ``..``, or with a path separator) is a ValueError
    naming kiln.json and the field, as the Triton python model refuses it
    (``serving.triton.translator_model.step_entry``), where it was looked up as an unknown model."""
    block = entry.kiln.get("translator")
    block = block if isinstance(block, dict) else {}
    missing = [key for key in ("encoder", "decoder") if not isinstance(block.get(key), str)]
    if missing:
        raise ValueError(
            f"{entry.path / 'kiln.json'}: its 'translator' block names no {' and no '.join(missing)} entry"
        )
    for field in ("encoder", "decoder"):
        name = block[field]
        if name in ("", ".", "..") or any(sep and sep in name for sep in ("/", os.sep, os.altsep)):
            raise ValueError(
                f"{entry.path / 'kiln.json'}: 'translator.{field}' must name an entry of the model "
                f"repository (a directory name without '/', as export writes <name>_{field}), got {name!r}"
            )
    return block["encoder"], block["decoder"]
