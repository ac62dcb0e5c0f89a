"""``POST /v1/models/{name}/translate``: batched beam-search translation of a list of texts.

The body is parsed by hand (invalid UTF-8 or JSON is a 400, not a 422 or 500) and then validated by a
strict pydantic schema (unknown fields are a 422). When the gateway decodes (its translator pool over
the backend's runners) ``translator(name)`` answers; otherwise the backend is reached through KServe
infer on the ``<name>`` entry (BYTES ``text`` in, ``translation`` out, options as request parameters).

The route is lean: one request per sentence is how translation clients call, so the event loop's time
per request bounds the gateway. FastAPI's dependency solving (each sync dependency a worker-thread hop)
and its response-model pass are skipped (:class:`DirectRoute`), and :mod:`serving.protocol.lean` answers
it ahead of Starlette's middleware stack and router, with the same body limit and the same error
handlers; the OpenAPI document is still generated from the endpoint's signature and declared models.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal, TypeVar

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from serving.decoding.options import DEFAULT_MAX_LENGTH, DEFAULTS, LIMITS, DecodingOptions
from serving.decoding.translator import (
    INLINE_CHARS,
    Translation,
    check_decoding_options,
    check_source_lengths,
    check_texts,
    entry_max_positions,
    entry_source_tokenizer,
)
from serving.decoding.translator_pool import cannot_translate
from serving.errors import (
    Deadline,
    ModelNotFound,
    PayloadTooLarge,
    Unavailable,
    UnprocessableInput,
)
from serving.execution.base import Backend, InferRequest, InferResponse
from serving.metrics import CLIENT_LEFT, GatewayMetrics, count_cut, observed
from serving.protocol.deps import get_backend, get_metrics, get_repository, get_settings, validated
from serving.protocol.lean import WATCHED_BY_PROTOCOL
from serving.protocol.limits import CONTENT_ENCODING_PARAMETER, request_body
from serving.protocol.request_values import JsonInt, parse_json, unicode_text
from serving.protocol.responses import OVERLOAD, errors


class DirectRoute(APIRoute):
    """A route whose endpoint takes the request and its path parameters and returns the Response itself.

    FastAPI still documents it from the endpoint's signature and ``response_model``; at run time the
    endpoint is awaited directly, without dependency solving or response validation (measured: the
    dependencies' thread hops were most of the event loop's time per translate request).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            return await endpoint(request, **request.path_params)

        return handler


router = APIRouter(prefix="/v1", tags=["friendly"], route_class=DirectRoute)


class TranslateRequest(BaseModel):
    """What a client may send; anything else is refused."""

    model_config = ConfigDict(extra="forbid", strict=True)  # 0 is not false, "2" is not an integer

    texts: list[str] = Field(min_length=1, description="texts to translate (each non-empty)")
    beam_size: JsonInt = Field(
        DEFAULTS.beam_size, ge=1, le=LIMITS.max_beam_size, description="beam width (1 = greedy)"
    )
    n_best: JsonInt = Field(
        DEFAULTS.n_best,
        ge=1,
        le=LIMITS.max_beam_size,
        description="hypotheses per text (<= beam_size); fewer where the search finishes fewer",
    )
    max_length: JsonInt = Field(
        DEFAULT_MAX_LENGTH,
        ge=1,
        le=LIMITS.max_length,
        description="most tokens generated per text, EOS included (when not sent: "
        f"{DEFAULT_MAX_LENGTH}, or the model's max_positions if lower)",
    )
    length_penalty: Literal["average", "gnmt", "none"] = DEFAULTS.length_penalty
    alpha: float = Field(
        DEFAULTS.alpha, ge=0, le=LIMITS.max_alpha, allow_inf_nan=False, description="length penalty exponent"
    )
    return_scores: bool = Field(False, description="add raw and normalized log-prob scores")

    def options(self) -> DecodingOptions:
        return DecodingOptions(
            beam_size=self.beam_size,
            n_best=self.n_best,
            max_length=self.max_length if "max_length" in self.model_fields_set else None,
            length_penalty=self.length_penalty,
            alpha=self.alpha,
        )


class Hypothesis(BaseModel):
    text: str
    score: float | None = Field(None, description="sum of token log-probs (return_scores)")
    normalized_score: float | None = Field(None, description="length-normalized score (return_scores)")


class TranslationResult(BaseModel):
    hypotheses: list[Hypothesis] = Field(
        description="the n_best best hypotheses, best first; fewer (at least one, never padding) where "
        "the search finished fewer before max_length, e.g. at max_length 1"
    )


class TranslateResponse(BaseModel):
    model: str
    translations: list[TranslationResult] = Field(description="one per input text, in order")


# What the translator strips (str.strip: the characters str.isspace takes), as a regex class written out:
# a text of only these is empty (422). JSON Schema's regexes are ECMA-262's, whose \s lacks \x1c-\x1f
# and \x85 and has \ufeff (Rust's, pydantic's, lacks \x1c-\x1f), so a schema pattern of \S accepted
# "\x1c" that the server refused and refused "\ufeff" that it translates; this class reads alike in all.
WHITESPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
TEXT_PATTERN = f"[^{WHITESPACE}]"  # a text the translator takes has a character outside it


def request_schema() -> dict[str, Any]:
    """TranslateRequest's schema with the bounds the translator enforces on texts and options.

    Texts: at most ``max_texts`` (else 413), each with a character other than whitespace
    (:data:`TEXT_PATTERN`, else 422) and at most ``max_chars`` characters (else 413). A model whose
    ``max_positions`` is lower than ``max_length`` refuses longer ``max_length`` values with a 422
    naming its own bound.
    """
    limits = LIMITS
    schema = TranslateRequest.model_json_schema()
    properties = schema["properties"]
    properties["texts"].update(
        maxItems=limits.max_texts,
        items={"type": "string", "minLength": 1, "maxLength": limits.max_chars, "pattern": TEXT_PATTERN},
    )
    for name, high in (
        ("beam_size", limits.max_beam_size),
        ("n_best", limits.max_beam_size),
        ("max_length", limits.max_length),
    ):
        properties[name]["maximum"] = min(properties[name].get("maximum", high), high)
    return schema


TRANSLATE_BODY = {
    "parameters": [CONTENT_ENCODING_PARAMETER],
    "requestBody": {"required": True, "content": {"application/json": {"schema": request_schema()}}},
}


@router.post(
    "/models/{name}/translate",
    summary="Translate texts (batched beam search)",
    openapi_extra=TRANSLATE_BODY,
    responses=errors(400, 404, 413, 415, 422, *OVERLOAD),
    response_model=TranslateResponse,
    response_model_exclude_none=True,
)
async def translate(request: Request, name: str) -> Response:
    entry = get_repository(request).get(name)  # 404 before anything else
    settings = get_settings(request)
    # then the body, whatever the model (inflated no further than a valid body can be long; a large one
    # parsed off the event loop)
    try:
        raw = await request_body(request, min(settings.max_body_bytes, MAX_BODY_BYTES))
        offload = request.app.state.json_offload
        # a large body waits its turn for the JSON helper, held to the request's deadline there; the model
        # then gets what that leaves (left: None, the whole of it)
        deadline = Deadline.from_now(settings.request_timeout_s) if offload.offloads(len(raw)) else None
        body = await offload.call(len(raw), parse_body, raw, deadline=deadline)
    except asyncio.CancelledError as cut:  # before its model: a stop's cut (its 503) or its client gone
        count_cut(get_metrics(request), name, cut)
        raise
    left = None if deadline is None else deadline.left()
    if entry.task != "translate":
        raise cannot_translate(entry, get_repository(request).entries)
    backend, metrics = get_backend(request), get_metrics(request)
    finder = getattr(backend, "translator", None)
    translator = finder(name) if finder is not None else None  # None: the backend translates via infer
    if translator is not None:
        work = observed(metrics, name, translator.translate(body.texts, body.options(), left))
    else:
        positions = _max_positions(entry.kiln)
        work = _via_infer(
            backend, metrics, name, body, entry.max_batch_size, positions, _source_of(entry), left
        )
    results = await until_client_leaves(request, work)
    if results is None:
        return Response(status_code=CLIENT_LEFT)  # sent nowhere: the server drops it
    return response_json(name, results, body.return_scores)


T = TypeVar("T")


async def until_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """``await work``, cancelled (a translation's rows leave the decode batch) and None if the client
    disconnects first: the ASGI server's ``http.disconnect``, watched beside the work once the body is read.

    A request the gateway's HTTP/1 protocol took whole (:mod:`serving.protocol.http1`, through
    :meth:`LeanRoutes.respond`) is not watched: that protocol cancels the answer itself when its
    connection is lost, and marks the scope so no watcher task is made there.
    """
    if request.scope.get(WATCHED_BY_PROTOCOL):
        return await work
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and not watch.result():  # a receive that spoke of something else: unwatched
            return await task
    except BaseException:  # this request was cancelled (the server stops), or its receive failed
        task.cancel()
        watch.cancel()
        raise
    watch.cancel()
    if task.done():
        return task.result()
    task.cancel()  # its client left: its rows leave the decode batch at the next step
    await asyncio.wait((task,))
    if not task.cancelled():
        task.exception()  # retrieved: whatever it ended with, nobody is there to be told
    return None


async def _disconnected(receive: Callable[[], Awaitable[dict[str, Any]]]) -> bool:
    """Whether the next message is the client gone (after the body, ASGI sends nothing else)."""
    return (await receive())["type"] == "http.disconnect"


def response_json(name: str, results: list[list[Translation]], scores: bool) -> Response:
    """TranslateResponse as JSON, written directly (what pydantic would send with exclude_none)."""
    translations = [{"hypotheses": [_hypothesis(h, scores) for h in hyps]} for hyps in results]
    content = json.dumps(
        {"model": name, "translations": translations}, ensure_ascii=False, separators=(",", ":")
    )
    return Response(content.encode(), media_type="application/json")


# The longest body a valid request can have: every character of every text written as a surrogate pair
# of \u escapes (12 bytes), with room for the options and any whitespace. A longer body is refused
# before it is parsed: the parse holds the event loop (a 64 MB body of numbers ~1.2 s here), so one
# body the schema refuses anyway stalled every other request of the process first.
MAX_BODY_BYTES = LIMITS.max_texts * (12 * LIMITS.max_chars + 64) + (64 << 10)


def parse_body(raw: bytes) -> TranslateRequest:
    """JSON body -> request; bad bytes are a 400, schema violations a 422 naming the field, a body
    longer than any valid request a 413 before it is parsed."""
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(
            f"a translate request body is at most {MAX_BODY_BYTES} bytes ({LIMITS.max_texts} texts of at "
            f"most {LIMITS.max_chars} characters), got {len(raw)}"
        )
    body = validated(TranslateRequest, parse_json(raw, "request body"), "translate request")
    for i, text in enumerate(body.texts):
        unicode_text(text, f"texts[{i}]")
    return body


def _hypothesis(h: Translation, scores: bool) -> dict[str, Any]:
    """One Hypothesis; a score that is not finite is null, as pydantic writes it."""
    if scores:
        return {"text": h.text, "score": _finite(h.score), "normalized_score": _finite(h.normalized_score)}
    return {"text": h.text}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


async def _via_infer(
    backend: Backend,
    metrics: GatewayMetrics,
    name: str,
    body: TranslateRequest,
    max_batch: int = 0,
    max_positions: int | None = None,
    source: Any | None = None,
    left_s: float | None = None,
) -> list[list[Translation]]:
    """Translate through KServe infer on ``<name>`` (e.g. Triton's python model), which answers
    ``translation``, the normalized ``score`` and the ``raw_score``, [n, n_best], padded with -inf where a
    search found fewer. A ``<name>`` exported before ``raw_score`` existed refuses ``return_scores``.

    Texts and options are checked as the gateway's own translators check them (the same 413 / 422, where
    Triton's model answers every mistake 400), and the texts go in requests of at most ``max_batch``
    (``<name>``'s ``max_batch_size``, 0: no limit), sent together: Triton refuses a larger batch, and a
    request may hold up to ``max_texts``. ``source``: the entry's source tokenizer, which measures the
    texts against ``max_positions`` here (413 naming the text); ``<name>``'s own refusal was a 400
    naming its place in the part of the request that model got (``texts[4]`` for the 21st text)."""
    check_texts(body.texts, LIMITS)
    options = body.options()
    check_decoding_options(options, LIMITS, max_positions)
    if source is not None and max_positions:
        texts = body.texts
        if sum(map(len, texts)) <= INLINE_CHARS:  # as the gateway's translators tokenize: inline when small
            check_source_lengths(_source_ids(source, texts), max_positions)
        else:
            check_source_lengths(await asyncio.to_thread(_source_ids, source, texts), max_positions)
    # the score tells a padding hypothesis ("" at -inf) from a real one; n_best 1 needs no padding
    outputs = ["translation"] + (["score"] if body.n_best > 1 or body.return_scores else [])
    outputs += ["raw_score"] if body.return_scores else []
    answered = _answered(backend, name, outputs)
    missing = [o for o in outputs if o not in answered]
    if missing:
        wanted = "return_scores" if body.return_scores else f"n_best {body.n_best}"
        raise UnprocessableInput(
            f"model {name!r} answers no {' or '.join(repr(o) for o in missing)} output (exported by an older "
            f"Kiln; export it again), so {wanted} cannot be served"
        )
    size = max_batch if max_batch > 0 else len(body.texts)
    # no timeout_s: that is the client's own (KServe's ``timeout``); the backend applies the server's,
    # shortened to ``left_s``, what the request's deadline left after its body's wait to be parsed
    requests = [
        InferRequest(
            name,
            {"text": _texts_tensor(part)},
            outputs=outputs,
            parameters=_parameters(options),
            deadline_s=left_s,
        )
        for part in (body.texts[i : i + size] for i in range(0, len(body.texts), size))
    ]
    responses = await observed(metrics, name, asyncio.gather(*(backend.infer(r) for r in requests)))
    return [
        hyps
        for request, response in zip(requests, responses, strict=True)
        for hyps in _translations(response, outputs, len(request.inputs["text"]))
    ]


_source_of = entry_source_tokenizer  # the source tokenizer of a ``<name>`` entry, or None


def _source_ids(source: Any, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in source.encode_batch(texts)]


def _answered(backend: Backend, name: str, outputs: list[str]) -> set[str]:
    """The outputs of ``outputs`` that ``<name>``'s metadata declares, all of them where the backend
    does not know the model yet (Triton's backend fetches its list again when the infer asks for it, so
    the infer, not this check, says whether it is served). ``translation`` alone is never looked up."""
    if outputs == ["translation"]:
        return set(outputs)
    try:
        return {o.name for o in backend.metadata(name).outputs}
    except (ModelNotFound, Unavailable):
        return set(outputs)


def _parameters(options: DecodingOptions) -> dict[str, Any]:
    """The options as request parameters; one the client did not choose is left to ``<name>``'s default."""
    return {k: v for k, v in vars(options).items() if v is not None}


def _texts_tensor(texts: list[str]) -> np.ndarray:
    return np.array([[t.encode()] for t in texts], dtype=np.object_)  # [n, 1]


def _translations(response: InferResponse, outputs: list[str], n: int) -> list[list[Translation]]:
    """Each of ``n`` texts' hypotheses from ``<name>``'s [n, n_best] outputs, without the padding ones."""
    out = np.asarray(response.outputs["translation"]).reshape(n, -1)  # [n, n_best]
    nan = np.full(out.shape, np.nan)
    norms, raws = (
        np.asarray(response.outputs[k], dtype=np.float64).reshape(out.shape) if k in outputs else nan
        for k in ("score", "raw_score")
    )
    return [
        [
            Translation(_text(text), [], float(raw), float(norm))
            for j, (text, norm, raw) in enumerate(zip(*rows, strict=True))
            if j == 0 or math.isfinite(norm)  # the best is always real; padding after it is -inf
        ]
        for rows in zip(out, norms, raws, strict=True)
    ]


_max_positions = entry_max_positions  # the longest target the entry's model takes, if it says


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
