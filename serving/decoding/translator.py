"""Translation service of one ``<name>`` entry: tokenize -> encode -> scheduler -> detokenize.

Everything comes from the entry's kiln.json (``translator`` block: step spec, tokenizer files, the
encoder/decoder entry names), never from the model's name. The same service answers the friendly
``POST /v1/models/{name}/translate`` and KServe v2 infer requests (BYTES ``text`` in, BYTES
``translation`` out, decoding options as request parameters). A repository's translate entries are
served by the pool in :mod:`serving.decoding.translator_pool`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from serving.decoding import beam_search as bs
from serving.decoding import native, step_spec
from serving.decoding.fast_tokens import FastEncoder
from serving.decoding.options import options_from_parameters as parse_parameters
from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import DecodeObserver, SchedulerConfig
from serving.errors import (
    BadRequest,
    Deadline,
    DeadlineExceeded,
    Overloaded,
    PayloadTooLarge,
    Unavailable,
    UnprocessableInput,
    mark_models_answer,
    seconds_text,
)
from serving.execution.base import GraphChoice, InferRequest, InferResponse
from serving.execution.datatypes import datatype_of
from serving.threads import name_os_thread, os_name

# what decode workers ask a backend's encoder and decoder runners to open (the pool's, and the app's for
# those entries' batch sessions): the fused-attention graph where export wrote one and its operators
# compile (serving.decoding.native)
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
        return cls(_tokenizer(source), _tokenizer(target), spec)

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
        serial: int | None = None,
    ) -> None:
        self.name, self.codec = name, codec
        # its codec thread's OS name, told apart from other translators' by ``serial`` (decode_thread_name)
        self.codec_thread_name = os_name(
            f"kcod{serial}-{name}" if serial is not None else f"kiln-codec-{name}"
        )
        self.schedulers = [schedulers] if isinstance(schedulers, DecodingScheduler) else list(schedulers)
        if not self.schedulers:
            raise ValueError(f"translator {name!r} needs at least one scheduler")
        self.limits = limits or bs.LIMITS
        self.spec = self.schedulers[0].spec
        self._codec_thread: ThreadPoolExecutor | None = None
        self._configs: dict[tuple[Any, ...], bs.BeamConfig] = {}  # accepted options' configs (beam_config)

    async def start(self) -> None:
        if self._codec_thread is None:
            self._codec_thread = ThreadPoolExecutor(
                1,
                thread_name_prefix=f"kiln-codec-{self.name}",
                initializer=partial(name_os_thread, self.codec_thread_name),
            )
        for scheduler in self.schedulers:
            await scheduler.start()

    async def stop(self, grace_s: float = 30.0) -> None:
        await asyncio.gather(*(scheduler.stop(grace_s) for scheduler in self.schedulers))
        if self._codec_thread is not None:
            self._codec_thread.shutdown(wait=False)
            self._codec_thread = None

    def beam_config(self, options: bs.DecodingOptions) -> bs.BeamConfig:
        """The search settings, refusing values over the limits with the option named (422).

        Clients send the same few option sets, so an accepted set's config is kept (``CONFIGS_KEPT``;
        checking and building it was ~5 % of the event loop's time a translate request). Keyed by each
        value's type too: ``True == 1`` and ``1 == 1.0``, and a bool beam size must still be refused."""
        key = _options_key(options)
        config = self._configs.get(key) if key is not None else None
        if config is None:
            check_decoding_options(options, self.limits, self.spec.max_positions)
            spec = self.spec
            config = bs.config_for(
                options, eos_id=spec.eos_id, bos_id=spec.bos_id, max_positions=spec.max_positions
            )
            if key is not None:
                if len(self._configs) >= CONFIGS_KEPT:  # a client minting option sets cannot grow it
                    self._configs.clear()
                self._configs[key] = config
        return config

    def check_texts(self, texts: list[str]) -> None:
        """Refuse empty, overlong or too many texts, naming the text."""
        check_texts(texts, self.limits)

    def source_ids(self, texts: list[str]) -> list[list[int]]:
        """Tokenized sources (one batched call); a text longer than the model takes is refused."""
        self.check_texts(texts)
        return self._encode(texts)

    def _encode(self, texts: list[str], batched: bool = True) -> list[list[int]]:
        ids = self.codec.encode(texts, batched)
        check_source_lengths(ids, self.spec.max_positions)
        return ids

    def scheduler(self) -> DecodingScheduler:
        """The decode worker with the fewest rows running or waiting, of those serving: else of those
        restarting (a request waits for the restart), else any (one whose thread stopped for good
        refuses the request with a 503 naming why, when none is left)."""
        if len(self.schedulers) == 1:  # no load to read (it sums the waiting requests' rows)
            return self.schedulers[0]
        running = (
            [s for s in self.schedulers if not s.died and not s.restarting]
            or [s for s in self.schedulers if not s.died]
            or self.schedulers
        )
        return min(running, key=lambda s: s.load)

    def stopped(self) -> str:
        """Why no decode worker of this translator can decode now ("" while one can): each died on an
        error (:meth:`DecodingScheduler._died`) and is restarting or stopped for good; such a
        translator is not ready until one serves again (:meth:`gone`: never)."""
        if not all(s.died or s.restarting for s in self.schedulers):
            return ""
        return "; ".join(
            f"decode worker {s.name!r} stopped: {s.died}"
            if s.died
            else f"decode worker {s.name!r} is restarting (it died: {s.restarting})"
            for s in self.schedulers
        )

    def gone(self) -> str:
        """Why every decode worker of this translator has stopped for good ("" while one serves or
        restarts): each died more often than its restarts allow; only a restart of the gateway mends
        that (its liveness)."""
        if not all(s.died for s in self.schedulers):
            return ""
        return self.stopped()

    def waiting(self) -> int:
        """Requests waiting to join a decode batch, across the decode workers (``kiln_queue_depth``
        reads it at a scrape, as ``max_queue`` counts them)."""
        return sum(s.queued for s in self.schedulers)

    def _check_queue(self, config: SchedulerConfig) -> None:
        """429 once ``max_queue`` requests wait across the decode workers (``--max-queue-size``: per
        model, as Triton's): each worker's own cap alone let N workers queue N times as many."""
        if len(self.schedulers) == 1:  # its own cap is the model's
            return
        waiting = self.waiting()
        if waiting >= config.max_queue:
            raise Overloaded(
                f"translator {self.name!r}: {waiting} requests already waiting; retry later",
                retry_after=config.retry_after_s,
            )

    async def translate(
        self, texts: list[str], options: bs.DecodingOptions, timeout_s: float | None = None, version: str = ""
    ) -> list[list[Translation]]:
        """The ``n_best`` translations of each text, best first, within ``timeout_s``: the client's, which
        may only shorten the server's limit (its schedulers' ``timeout_s``, ``--request-timeout-s``);
        ``version``: the one a KServe request named, which its statistics count under."""
        config = self.beam_config(options)
        self.check_texts(texts)
        limit = self.schedulers[0].config.timeout_s  # the server's, every decode worker's alike
        timeout = limit if timeout_s is None else min(timeout_s, limit)
        deadline = Deadline(asyncio.get_running_loop().time() + timeout, timeout)  # (no timer: ~0.2 us)
        if sum(map(len, texts)) <= INLINE_CHARS:
            sources = self._encode(texts, False)
        else:  # held to the deadline in the tokenizer thread's queue, the search given what that leaves
            sources = await self._codec_within(deadline, self._encode, texts, "texts to be tokenized")
            timeout = deadline.left()
        scheduler = self.scheduler()
        self._check_queue(scheduler.config)
        try:
            results = await scheduler.submit(sources, config, timeout, version)
        except ValueError as exc:  # a setting the scheduler cannot honour (e.g. beam over its row cap)
            raise UnprocessableInput(str(exc)) from None
        tokens = [h.tokens for hyps in results for h in hyps]
        if sum(map(len, tokens)) <= INLINE_TOKENS:
            texts_out = iter(self.codec.decode(tokens, False))
        else:
            hypotheses = "translations to be detokenized"  # n_best a text
            texts_out = iter(await self._codec_within(deadline, self.codec.decode, tokens, hypotheses))
        return [
            [Translation(next(texts_out), h.tokens, h.score, h.normalized_score) for h in hyps]
            for hyps in results
        ]

    async def _codec(self, work: Callable[..., list[Any]], items: list[Any], inline: bool) -> list[Any]:
        """``work(items)`` here, text by text, when ``inline``; else batched in the codec thread."""
        if inline:
            return work(items, False)
        return await asyncio.get_running_loop().run_in_executor(self._codec_thread, work, items, True)

    async def _codec_within(
        self, deadline: Deadline, work: Callable[..., list[Any]], items: list[Any], what: str
    ) -> list[Any]:
        """``work(items)`` batched in the codec thread, where a long request's texts wait for those before
        them: a 504 at ``deadline`` (its work dropped from the thread's queue; work begun runs out) naming
        the time the request was given (three digits: the time a JSON parse left, 29.9968, reads 30) and
        ``what`` its ``items`` are."""
        timeout = asyncio.timeout_at(deadline.at)
        try:
            async with timeout:
                return await self._codec(work, items, False)
        except TimeoutError:
            if not timeout.expired():
                raise
            raise DeadlineExceeded(
                f"translation: the request's {seconds_text(deadline.seconds)} s deadline passed while it "
                f"waited for the tokenizer thread ({len(items)} {what}; long requests are tokenized one "
                "after another there)"
            ) from None

    async def infer(self, request: InferRequest) -> InferResponse:
        """KServe v2: BYTES ``text`` [n, 1] -> BYTES ``translation``, FP32 ``score`` and ``raw_score``, each
        [n, n_best] (those the request names, else all three)."""
        given, wanted = _infer_text_input(self.name, request)
        params = request.parameters or {}
        try:  # what Triton's <name> model refuses or fails at, past the checks its server makes above
            texts = [_as_text(value, i) for i, value in enumerate(given.reshape(-1))]
            options = options_from_parameters(params)
            results = await self.translate(texts, options, request.time_limit(None), request.version)
        except (Overloaded, Unavailable):  # its schedulers' queue full or stopped: refused, not run
            raise
        except Exception as error:
            mark_models_answer(error)  # (serving.errors.MODELS_ANSWER)
            raise
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


CONFIGS_KEPT = 64  # accepted option sets whose BeamConfig a translator keeps (Translator.beam_config)


def _options_key(options: bs.DecodingOptions) -> tuple[Any, ...] | None:
    """``options`` with each value's type, or None where a value cannot be a dict key."""
    values = (options.beam_size, options.n_best, options.max_length, options.length_penalty, options.alpha)
    key = tuple((type(v), v) for v in values)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def check_decoding_options(
    options: bs.DecodingOptions, limits: bs.DecodingLimits, max_positions: int | None
) -> None:
    """Refuse options over the limits (or the model's positions) with the option named: a 422, whoever
    decodes (the gateway's schedulers, or a backend's ``<name>`` model behind the REST route)."""
    try:
        bs.check_options(options, limits, max_positions)
    except (TypeError, ValueError) as exc:
        raise UnprocessableInput(f"invalid decoding options: {exc}") from None


def check_texts(texts: list[str], limits: bs.DecodingLimits) -> None:
    """Refuse empty, overlong or too many texts, naming the text (422 / 413), whoever decodes them."""
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
            raise PayloadTooLarge(f"texts[{i}] has {len(text)} characters; the limit is {limits.max_chars}")


def check_source_lengths(ids: list[list[int]], max_positions: int | None) -> None:
    """Refuse a source longer than the model takes (its ids and EOS), naming the text (413), whoever
    decodes it: the gateway's schedulers, or a backend's ``<name>`` model behind the REST route."""
    for i, row in enumerate(ids):
        if max_positions and len(row) + 1 > max_positions:
            raise PayloadTooLarge(
                f"texts[{i}] is {len(row) + 1} tokens long; the model takes {max_positions}"
            )


def _pad(hyps: list[Translation], j: int) -> Translation:
    """The j-th hypothesis, or an empty one when the search finished fewer than ``n_best``."""
    return hyps[j] if j < len(hyps) else Translation("", [], -math.inf, -math.inf)


def _as_text(value: Any, index: int) -> str:
    """One text of the ``text`` input, named ``texts[i]`` as every other text error names it."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"texts[{index}] is not valid UTF-8") from None
    if isinstance(value, str):
        return value
    raise BadRequest(f"texts[{index}] must be BYTES (a UTF-8 string), got {type(value).__name__}")


def _infer_text_input(name: str, request: InferRequest) -> tuple[np.ndarray, list[str]]:
    """A translator's KServe v2 request's ``text`` tensor and the outputs it wants, refused (400) where
    its inputs, shape, outputs or classification do not fit ``name``'s metadata."""
    if set(request.inputs) != {"text"}:
        raise BadRequest(f"model {name!r} takes exactly one input 'text'; got {sorted(request.inputs)}")
    if request.classification:
        raise BadRequest(
            f"model {name!r}: the classification extension needs a class axis, which a "
            f"translator's outputs do not have ({sorted(request.classification)} asked for)"
        )
    given = np.asarray(request.inputs["text"])
    if given.dtype.kind not in "OSU":  # its metadata's BYTES, as Triton checks it: named, not texts[0]'s
        raise BadRequest(f"model {name!r}: input 'text' expects datatype BYTES, got {datatype_of(given)}")
    if given.ndim != 2 or given.shape[1] != 1:  # its metadata's [-1, 1], as Triton checks it
        raise BadRequest(f"model {name!r}: input 'text' has shape [-1, 1], got {list(given.shape)}")
    wanted = request.outputs or DEFAULT_OUTPUTS
    served = [output for output, _ in OUTPUTS]
    unknown = sorted(set(wanted) - set(served))
    if unknown:  # before any decoding: the client's mistake costs no work
        raise BadRequest(f"model {name!r} has no output(s) {unknown}; outputs: {served}")
    return given, wanted


async def check_backend_infer(
    name: str, request: InferRequest, max_positions: int | None, source: Any | None = None
) -> None:
    """Refuse a KServe v2 request for translator ``name`` that a backend's own ``<name>`` model decodes
    (Triton's, ``--triton-translate triton``) as :meth:`Translator.infer` refuses it: the same 400, 413
    and 422 (gRPC ``RESOURCE_EXHAUSTED`` for a 413) in the gateway's words, where Triton answered every
    mistake ``INVALID_ARGUMENT`` (its model's 400s, its server's batch and shape checks in its own
    words). ``source``: the entry's source tokenizer, measuring the texts against ``max_positions``."""
    given, _ = _infer_text_input(name, request)
    try:  # what the model would refuse: its answer, as Translator.infer marks it
        texts = [_as_text(value, i) for i, value in enumerate(given.reshape(-1))]
        options = options_from_parameters(request.parameters or {})
        check_decoding_options(options, bs.LIMITS, max_positions)
        check_texts(texts, bs.LIMITS)
        if source is not None and max_positions:
            if sum(map(len, texts)) <= INLINE_CHARS:
                ids = [e.ids for e in source.encode_batch(texts)]
            else:
                ids = await asyncio.to_thread(lambda: [e.ids for e in source.encode_batch(texts)])
            check_source_lengths(ids, max_positions)
    except Exception as error:
        mark_models_answer(error)
        raise


def options_from_parameters(params: dict[str, Any]) -> bs.DecodingOptions:
    """Decoding options from KServe request parameters (:func:`serving.decoding.options.
    options_from_parameters`, which Triton's ``<name>`` model reads them with too); a parameter of the
    wrong type is a 400."""
    try:
        return parse_parameters(params)
    except ValueError as error:
        raise BadRequest(str(error)) from None


def entry_max_positions(kiln: dict[str, Any]) -> int | None:
    """The longest target a ``<name>`` entry's model takes (its step spec's ``max_positions``), if it says."""
    spec = (kiln.get("translator") or {}).get("step_spec") or {}
    value = spec.get("max_positions")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def entry_source_tokenizer(entry: Any) -> Any | None:
    """The source tokenizer of a ``<name>`` entry (read once), or None where the gateway's copy of the
    repository has none to read: ``<name>``'s model then measures the texts alone."""
    block = entry.kiln.get("translator") if isinstance(entry.kiln, dict) else None
    if not isinstance(block, dict):
        return None
    try:
        return source_tokenizer(tokenizer_path(entry.path, block, "source_tokenizer"))
    except (OSError, ValueError):
        return None


def tokenizer_path(path: Path, block: dict[str, Any], field: str) -> Path:
    """The file kiln.json's ``translator.<field>`` names in the entry directory ``path`` (export writes
    ``source_tokenizer.json`` / ``target_tokenizer.json``). A name that is not a relative path inside
    the entry (absolute, or with a ``..`` part) is a ValueError naming the file and the field: Python's
    ``/`` took ``/etc/x`` as is and followed ``..``, so a hand-edited or foreign repository made the
    gateway read a file outside itself without a word, and a number was a TypeError naming neither.
    Links inside the entry are followed, as for every file of the repository."""
    name = block.get(field, f"{field}.json")
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(
            f"{path / 'kiln.json'}: 'translator.{field}' must name a file in the entry's directory "
            f"(a relative path without '..', as export writes {field}.json), got {name!r}"
        )
    return path / name


def source_tokenizer(path: Path) -> Any:
    """The tokenizer file at ``path``, read once per version of the file (:func:`_tokenizer`): the REST
    route through a backend's ``<name>`` model measures texts with its entry's source tokenizer, request
    after request, and a re-export replaces the file under the same path."""
    stat = path.stat()
    return _file_tokenizer(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _file_tokenizer(path: Path, mtime_ns: int, size: int) -> Any:
    return _tokenizer(path)


def _tokenizer(path: Path) -> Any:
    """The ``tokenizers`` file at ``path``; a missing or unreadable one is named (the library's own
    error, "No such file or directory (os error 2)", names no file). A special token's text typed by a
    client ("</s>", "<pad>") is read as text, as training reads it (``training.data.tokenizer.
    literal_specials``; the file cannot say so: the library does not save the setting)."""
    from tokenizers import Tokenizer  # lazy: nothing heavy at import time

    if not path.is_file():
        raise FileNotFoundError(f"the tokenizer file {path} is missing")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the library raises a bare Exception for a damaged file
        raise ValueError(f"the tokenizer file {path} cannot be read: {exc}") from exc
    tokenizer.encode_special_tokens = True
    return tokenizer


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
        tokenizer_path(path, block, "source_tokenizer"),
        tokenizer_path(path, block, "target_tokenizer"),
        spec,
    )
    name = kiln.get("name", path.name)
    config = scheduler_config or SchedulerConfig()
    runners = [(run_encoder, run_decoder)]
    extra = (config.workers or 1) - 1  # unresolved (no pool to read the placement): one
    runners += [more_runners() if more_runners else runners[0] for _ in range(extra)]
    serial = next(_SERIALS)
    schedulers = [
        DecodingScheduler(
            f"{name}" if i == 0 else f"{name}#{i}",
            spec,
            encoder,
            decoder,
            config,
            observer=observer,
            model=name,
            thread_name=decode_thread_name(serial, i, name),
        )
        for i, (encoder, decoder) in enumerate(runners)
    ]
    return Translator(name, codec, schedulers, limits, serial=serial)


# Translators built in this process, in order: their number keeps their threads' OS names apart.
# Linux keeps 15 bytes of a thread's name, so "kiln-decode-<name>" showed "kiln-decode-tra" for
# every decode worker of every translator (transformer and transformer_int8 alike) in top -H,
# py-spy and perf; the gateway's start-up line maps each name to its translator.
_SERIALS = itertools.count()


def decode_thread_name(serial: int, worker: int, name: str) -> str:
    """The OS name of decode worker ``worker`` of the ``serial``-th translator, ``name``:
    ``kdec<serial>.<worker>-<name>`` cut to 15 bytes, the numbers (which make it unique) always whole."""
    return os_name(f"kdec{serial}.{worker}-{name}")
