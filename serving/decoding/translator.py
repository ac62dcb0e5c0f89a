"""Translation service of one ``<name>`` entry: tokenize -> encode -> scheduler -> detokenize.

Everything comes from the entry's kiln.json (``translator`` block: step spec, tokenizer files, the
encoder/decoder entry names), never from the model's name. The same service answers the friendly
``POST /v1/models/{name}/translate`` and KServe v2 infer requests (BYTES ``text`` in, BYTES
``translation`` out, decoding options as request parameters).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2

from serving.decoding import beam_search as bs
from serving.decoding import native, native_decoder, step_spec
from serving.decoding.fast_tokens import FastEncoder
from serving.decoding.options import options_from_parameters as parse_parameters
from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import DecodeObserver, SchedulerConfig
from serving.errors import BadRequest, PayloadTooLarge, UnprocessableInput
from serving.execution.base import GraphChoice, InferRequest, InferResponse
from serving.threads import name_os_thread

log = logging.getLogger(__name__)
# what decode workers ask a backend's encoder and decoder runners to open: the fused-attention graph
# where export wrote one and its operators compile (serving.decoding.native)
FUSED_ATTENTION = GraphChoice(native.graph_to_open, native.session_options)


# The KServe outputs of a translator's ``<name>`` entry as :meth:`Translator.infer` answers them, (name,
# config data type) in metadata order: BYTES ``translation``, FP32 ``score`` (normalized: the search's
# ranking) and FP32 ``raw_score`` (the sum of the tokens' log-probs), each [n, n_best] for ``text``
# [n, 1]; a request naming no output gets all (KServe v2: "if not specified all outputs produced by the
# model will be returned"), as Triton's ``<name>`` model answers it.
OUTPUTS = (("translation", "TYPE_STRING"), ("score", "TYPE_FP32"), ("raw_score", "TYPE_FP32"))
DEFAULT_OUTPUTS = [name for name, _ in OUTPUTS]

# Requests this small are tokenized / detokenized on the event loop, text by text holding the GIL:
# measured ~10 us for a 40-character sentence and ~3 us for its translation, far less than a hop to
# the codec thread and back.
INLINE_CHARS = 1024
INLINE_TOKENS = 512


@dataclass(frozen=True)
class Translation:
    """One hypothesis: detokenized text, generated ids (EOS included), raw and normalized score."""

    text: str
    tokens: list[int]
    score: float
    normalized_score: float


class TextCodec:
    """The entry's serialized tokenizers: text -> source ids, target ids -> text."""

    def __init__(self, source: Any, target: Any, spec: step_spec.StepSpec) -> None:
        self.source, self.target, self.spec = source, target, spec
        # the same ids in Python for plain short texts (fast_tokens: ~4 vs ~23 us a sentence)
        self.fast = FastEncoder.of(source)

    @classmethod
    def from_files(cls, source: Path, target: Path, spec: step_spec.StepSpec) -> TextCodec:
        from tokenizers import Tokenizer  # lazy: nothing heavy at import time

        return cls(Tokenizer.from_file(str(source)), Tokenizer.from_file(str(target)), spec)

    def encode(self, texts: list[str], batched: bool = True) -> list[list[int]]:
        """Source ids without EOS (the stepper appends it).

        ``batched``: one call that gives up the GIL and runs in parallel, for a worker thread; else text
        by text keeping the GIL, for the event loop, where giving the GIL up costs a switch interval (up
        to 5 ms) whenever the decode thread runs Python (measured on the gateway), in Python where
        the text allows (:mod:`serving.decoding.fast_tokens`).
        """
        if batched:
            return [e.ids for e in self.source.encode_batch(texts)]
        return [self._encode_one(text) for text in texts]

    def _encode_one(self, text: str) -> list[int]:
        ids = self.fast.encode(text) if self.fast is not None else None
        return self.source.encode(text).ids if ids is None else ids

    def decode(self, hypotheses: list[list[int]], batched: bool = True) -> list[str]:
        """Texts of hypotheses: ids up to the first EOS, without BOS / padding / specials (``batched``:
        as in :meth:`encode`)."""
        spec = self.spec
        kept = [
            bs.output_tokens(t, eos_id=spec.eos_id, pad_id=spec.pad_id, bos_id=spec.bos_id)
            for t in hypotheses
        ]
        if batched:
            return self.target.decode_batch(kept, skip_special_tokens=True) if kept else []
        return [self.target.decode(ids, skip_special_tokens=True) for ids in kept]


class Translator:
    """Validate, tokenize, decode on the least-loaded of its schedulers, detokenize.

    Each scheduler is one decode worker (its own thread and batch: CTranslate2's ``inter_threads``);
    tokenization and detokenization run batched (one call per request), in a codec thread off the
    event loop unless the request is small (``INLINE_CHARS``, ``INLINE_TOKENS``), where the thread hop
    would cost more than the work.
    """

    def __init__(
        self,
        name: str,
        codec: TextCodec,
        schedulers: DecodingScheduler | Sequence[DecodingScheduler],
        limits: bs.DecodingLimits | None = None,
    ) -> None:
        self.name, self.codec = name, codec
        self.schedulers = [schedulers] if isinstance(schedulers, DecodingScheduler) else list(schedulers)
        if not self.schedulers:
            raise ValueError(f"translator {name!r} needs at least one scheduler")
        self.limits = limits or bs.LIMITS
        self.spec = self.schedulers[0].spec
        self._codec_thread: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        if self._codec_thread is None:
            self._codec_thread = ThreadPoolExecutor(
                1, thread_name_prefix=f"kiln-codec-{self.name}", initializer=name_os_thread
            )
        for scheduler in self.schedulers:
            await scheduler.start()

    async def stop(self, grace_s: float = 30.0) -> None:
        await asyncio.gather(*(scheduler.stop(grace_s) for scheduler in self.schedulers))
        if self._codec_thread is not None:
            self._codec_thread.shutdown(wait=False)
            self._codec_thread = None

    def beam_config(self, options: bs.DecodingOptions) -> bs.BeamConfig:
        """The search settings, refusing values over the limits with the option named (422)."""
        try:
            bs.check_options(options, self.limits, self.spec.max_positions)
            return bs.config_for(options, eos_id=self.spec.eos_id, bos_id=self.spec.bos_id)
        except (TypeError, ValueError) as exc:
            raise UnprocessableInput(f"invalid decoding options: {exc}") from None

    def check_texts(self, texts: list[str]) -> None:
        """Refuse empty, overlong or too many texts, naming the text."""
        limits = self.limits
        if not texts:
            raise UnprocessableInput("texts must hold at least one text")
        if len(texts) > limits.max_texts:
            raise PayloadTooLarge(f"{len(texts)} texts in one request; the limit is {limits.max_texts}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise BadRequest(f"texts[{i}] must be a string")
            if not text.strip():
                raise UnprocessableInput(f"texts[{i}] is empty or only whitespace")
            if len(text) > limits.max_chars:
                raise PayloadTooLarge(
                    f"texts[{i}] has {len(text)} characters; the limit is {limits.max_chars}"
                )

    def source_ids(self, texts: list[str]) -> list[list[int]]:
        """Tokenized sources (one batched call); a text longer than the model takes is refused."""
        self.check_texts(texts)
        return self._encode(texts)

    def _encode(self, texts: list[str], batched: bool = True) -> list[list[int]]:
        ids = self.codec.encode(texts, batched)
        cap = self.spec.max_positions
        for i, row in enumerate(ids):
            if cap and len(row) + 1 > cap:
                raise PayloadTooLarge(f"texts[{i}] is {len(row) + 1} tokens long; the model takes {cap}")
        return ids

    def scheduler(self) -> DecodingScheduler:
        """The decode worker with the fewest rows running or waiting."""
        return min(self.schedulers, key=lambda s: s.load)

    async def translate(
        self, texts: list[str], options: bs.DecodingOptions, timeout_s: float | None = None
    ) -> list[list[Translation]]:
        """The ``n_best`` translations of each text, best first, within ``timeout_s``: the client's, which
        may only shorten the server's limit (its schedulers' ``timeout_s``, ``--request-timeout-s``)."""
        config = self.beam_config(options)
        self.check_texts(texts)
        sources = await self._codec(self._encode, texts, sum(map(len, texts)) <= INLINE_CHARS)
        scheduler = self.scheduler()
        limit = scheduler.config.timeout_s
        timeout = limit if timeout_s is None else min(timeout_s, limit)
        try:
            results = await scheduler.submit(sources, config, timeout)
        except ValueError as exc:  # a setting the scheduler cannot honour (e.g. beam over its row cap)
            raise UnprocessableInput(str(exc)) from None
        tokens = [h.tokens for hyps in results for h in hyps]
        texts_out = iter(await self._codec(self.codec.decode, tokens, sum(map(len, tokens)) <= INLINE_TOKENS))
        return [
            [Translation(next(texts_out), h.tokens, h.score, h.normalized_score) for h in hyps]
            for hyps in results
        ]

    async def _codec(self, work: Callable[..., list[Any]], items: list[Any], inline: bool) -> list[Any]:
        """``work(items)`` here, text by text, when ``inline``; else batched in the codec thread."""
        if inline:
            return work(items, False)
        return await asyncio.get_running_loop().run_in_executor(self._codec_thread, work, items, True)

    async def infer(self, request: InferRequest) -> InferResponse:
        """KServe v2: BYTES ``text`` [n, 1] -> BYTES ``translation`` [n, n_best] (+ FP32 ``score`` on ask)."""
        if set(request.inputs) != {"text"}:
            raise BadRequest(
                f"model {self.name!r} takes exactly one input 'text'; got {sorted(request.inputs)}"
            )
        params = request.parameters or {}
        if request.classification:
            raise BadRequest(
                f"model {self.name!r}: the classification extension needs a numeric output; "
                f"{sorted(request.classification)} are BYTES (or not outputs)"
            )
        given = np.asarray(request.inputs["text"])
        if given.ndim != 2 or given.shape[1] != 1:  # its metadata's [-1, 1], as Triton checks it
            raise BadRequest(f"model {self.name!r}: input 'text' has shape [-1, 1], got {list(given.shape)}")
        texts = [_as_text(value, i) for i, value in enumerate(given.reshape(-1))]
        wanted = request.outputs or DEFAULT_OUTPUTS
        served = [name for name, _ in OUTPUTS]
        unknown = sorted(set(wanted) - set(served))
        if unknown:  # before any decoding: the client's mistake costs no work
            raise BadRequest(f"model {self.name!r} has no output(s) {unknown}; outputs: {served}")
        options = options_from_parameters(params)
        results = await self.translate(texts, options, request.time_limit(None))
        width = options.n_best
        text = np.array(
            [[_pad(hyps, j).text.encode() for j in range(width)] for hyps in results], dtype=np.object_
        )  # [n, n_best]
        outputs = {"translation": text}
        if "score" in wanted:
            outputs["score"] = np.array(
                [[_pad(hyps, j).normalized_score for j in range(width)] for hyps in results], dtype=np.float32
            )  # [n, n_best]
        if "raw_score" in wanted:
            outputs["raw_score"] = np.array(
                [[_pad(hyps, j).score for j in range(width)] for hyps in results], dtype=np.float32
            )  # [n, n_best]
        return InferResponse(self.name, "", {k: outputs[k] for k in wanted}, request.request_id)


def _pad(hyps: list[Translation], j: int) -> Translation:
    """The j-th hypothesis, or an empty one when the search finished fewer than ``n_best``."""
    return hyps[j] if j < len(hyps) else Translation("", [], -math.inf, -math.inf)


def _as_text(value: Any, index: int) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"text[{index}] is not valid UTF-8") from None
    if isinstance(value, str):
        return value
    raise BadRequest(f"text[{index}] must be BYTES (a UTF-8 string), got {type(value).__name__}")


def options_from_parameters(params: dict[str, Any]) -> bs.DecodingOptions:
    """Decoding options from KServe request parameters (:func:`serving.decoding.options.
    options_from_parameters`, which Triton's ``<name>`` model reads them with too); a parameter of the
    wrong type is a 400."""
    try:
        return parse_parameters(params)
    except ValueError as error:
        raise BadRequest(str(error)) from None


def translator_from_entry(
    path: Path,
    kiln: dict[str, Any],
    run_encoder: step_spec.Runner,
    run_decoder: step_spec.Runner,
    *,
    scheduler_config: SchedulerConfig | None = None,
    limits: bs.DecodingLimits | None = None,
    observer: DecodeObserver | None = None,
    more_runners: Callable[[], tuple[step_spec.Runner, step_spec.Runner]] | None = None,
) -> Translator:
    """A translator for the ``<name>`` entry at ``path`` (its kiln.json already parsed), with
    ``scheduler_config.workers`` decode workers: the first over ``run_encoder``/``run_decoder``, each
    other over its own ``more_runners()`` pair when given (else they share the first pair)."""
    block = kiln.get("translator")
    if not isinstance(block, dict) or "step_spec" not in block:
        raise ValueError(f"{path}/kiln.json has no 'translator' block with a step_spec")
    spec = step_spec.parse_step_spec(block["step_spec"])
    codec = TextCodec.from_files(
        path / block.get("source_tokenizer", "source_tokenizer.json"),
        path / block.get("target_tokenizer", "target_tokenizer.json"),
        spec,
    )
    name = kiln.get("name", path.name)
    config = scheduler_config or SchedulerConfig()
    runners = [(run_encoder, run_decoder)]
    runners += [more_runners() if more_runners else runners[0] for _ in range(config.workers - 1)]
    schedulers = [
        DecodingScheduler(
            f"{name}" if i == 0 else f"{name}#{i}",
            spec,
            encoder,
            decoder,
            config,
            observer=observer,
            model=name,
        )
        for i, (encoder, decoder) in enumerate(runners)
    ]
    return Translator(name, codec, schedulers, limits)


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
                block = entry.kiln.get("translator") or {}
                encoder, decoder = block["encoder"], block["decoder"]
                config = _capped(self.scheduler_config, self.repository, encoder, decoder)
                pair = partial(_runner_pair, runner_for, encoder, decoder)
                translator = translator_from_entry(
                    entry.path,
                    entry.kiln,
                    *pair(),
                    scheduler_config=config,
                    limits=self.limits,
                    observer=self.observer,
                    more_runners=pair,
                )
                self.translators[name] = translator  # stopped by stop() even if its start fails half-way
                await translator.start()
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


def _runner_pair(runner_for: Any, encoder: str, decoder: str) -> tuple[step_spec.Runner, step_spec.Runner]:
    """One decode worker's encoder and decoder runners, on their fused-attention graphs where written
    (the decoder's steps compiled where it can be)."""
    decoder_runner = runner_for(decoder, graph=FUSED_ATTENTION)
    return runner_for(encoder, graph=FUSED_ATTENTION), native_decoder.attach(decoder_runner)


def _capped(config: SchedulerConfig, repository: Any, encoder: str, decoder: str) -> SchedulerConfig:
    """Rows and encoder batch within the encoder / decoder entries' ``max_batch_size``."""
    rows = repository.get(decoder).max_batch_size or config.max_rows
    sentences = repository.get(encoder).max_batch_size or config.max_encoder_batch
    return replace(
        config,
        max_rows=min(config.max_rows, rows),
        max_encoder_batch=min(config.max_encoder_batch, sentences),
    )
