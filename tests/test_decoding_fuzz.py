"""Decoding options fuzzed against the PyTorch reference (``training.decoding.beam_search`` run alone per
sentence with the same options): the served engine's search, numpy and compiled, with sentences of
different options sharing steps and joining between them; the gateway's translator over the tiny
exported translators under concurrent clients; and the REST route through a backend's ``<name>`` model
refusing the same mistakes as the gateway's own translators, and taking as many texts."""

from __future__ import annotations

import asyncio
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from serving.decoding import beam_search as bs
from serving.decoding import compiled_step, native
from serving.decoding.options import options_from_parameters
from serving.errors import BadRequest, PayloadTooLarge, ServingError, UnprocessableInput
from serving.execution.base import InferRequest, InferResponse, ModelMetadata, TensorMeta
from training import decoding

PAD, BOS, EOS = 0, 1, 2
FUZZ = settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# --- the search itself: a table decoder with ties, -inf entries and tiny vocabularies ---------------------


def table_log_probs(seed: int, vocab: int, prefix: tuple[int, ...]) -> np.ndarray:
    """float32 [vocab] log-probs of a sentence after ``prefix`` (generated tokens, no BOS): coarse values
    so candidates tie exactly, some tokens impossible, EOS sometimes likely."""
    rng = np.random.default_rng(zlib.crc32(np.array([seed, vocab, *prefix], dtype=np.int64).tobytes()))
    lp = (-rng.integers(0, 6, size=vocab) * 0.75).astype(np.float32)
    lp[rng.random(vocab) < 0.2] = -np.inf
    lp[[PAD, BOS]] = -np.inf
    if rng.random() < 0.3:
        lp[EOS] = -0.1
    return lp


class TableTranslator(nn.Module):
    """A translator module whose source row ``[seed, EOS]`` decodes :func:`table_log_probs` of ``seed``;
    the fed tokens live in a ``cache`` role, so the reference's spec-driven state carries the prefix."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def encode(self, src_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sentence": src_ids[:, 0]}  # (B,)

    def step_spec(self) -> dict:
        history = {
            "name": "history",
            "role": "cache",
            "output": "new_history",
            "axis": 1,
            "init_shape": [-1, 0],
        }
        return {
            "pad_id": PAD,
            "bos_id": BOS,
            "eos_id": EOS,
            "vocab_size": self.vocab,
            "encoder": {"inputs": ["src_ids"], "outputs": ["sentence"]},
            "decoder": {
                "inputs": [
                    {"name": "tokens", "role": "tokens"},
                    history,
                    {"name": "cache_mask", "role": "cache_mask"},
                    {"name": "sentence", "role": "encoder"},
                ],
                "outputs": ["log_probs", "new_history"],
            },
            "dtypes": {"history": "int64", "new_history": "int64", "sentence": "int64"},
        }

    def decode_step(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rows = zip(
            inputs["sentence"].tolist(), inputs["history"].tolist(), inputs["tokens"].tolist(), strict=True
        )
        lp = [torch.from_numpy(table_log_probs(s, self.vocab, tuple((fed + [t])[1:]))) for s, fed, t in rows]
        return {"log_probs": torch.stack(lp), "new_history": inputs["tokens"][:, None]}  # (B, V), (B, 1)


def reference_alone(seed: int, vocab: int, config: bs.BeamConfig) -> list[tuple]:
    (hyps,) = decoding.beam_search(
        TableTranslator(vocab),
        torch.tensor([[seed, EOS]]),
        beam_size=config.beam_size,
        n_best=config.n_best,
        max_length=config.max_length,
        min_length=config.min_length,
        length_penalty=config.length_penalty,
        alpha=config.alpha,
    )
    return [(h.tokens, h.score, h.normalized_score) for h in hyps]


def engine_together(sentences: list[tuple[int, bs.BeamConfig, int]], vocab: int, step) -> list[list[tuple]]:
    """The served search over every sentence (seed, config, the step it joins at): one ``step`` call a
    decoder step for all live rows, finished sentences leaving between steps."""
    beams, keys, results, clock = None, [], {}, 0
    while len(results) < len(sentences):
        joiners = [i for i, (_, _, at) in enumerate(sentences) if at == clock]
        if joiners:
            new = bs.start([sentences[i][1] for i in joiners])
            beams, keys = (new if beams is None else bs.concat(beams, new)), keys + joiners
        clock += 1
        if beams is None or not beams.sentences:
            continue
        rows = [  # each live row's sentence and prefix, in row order
            (keys[s], tuple(beams.prefixes[r, 1 : beams.step[s] + 1].tolist()))
            for r, s in enumerate(np.repeat(np.arange(beams.sentences), beams.rows))
        ]
        lp = np.stack([table_log_probs(sentences[k][0], vocab, p) for k, p in rows])  # [R, V]
        beams = step(beams, lp).beams
        for s in np.flatnonzero(beams.done):
            results[keys[s]] = [(h.tokens, h.score, h.normalized_score) for h in bs.results(beams, s)]
        keys = [k for k, done in zip(keys, beams.done, strict=True) if not done]
        beams, _ = bs.remove(beams, beams.done)
    return [results[i] for i in range(len(sentences))]


@st.composite
def beam_configs(draw) -> bs.BeamConfig:
    beam = draw(st.sampled_from([1, 2, 3, 4, 5, 8, 16]))
    max_length = draw(st.integers(1, 9))
    return bs.BeamConfig(
        beam_size=beam,
        n_best=draw(st.integers(1, beam)),
        max_length=max_length,
        min_length=draw(st.integers(0, max_length - 1)),
        length_penalty=draw(st.sampled_from(bs.LENGTH_PENALTIES)),
        alpha=draw(st.sampled_from([0.0, 0.6, 1.0, 2.0, 10.0])),
    )


SENTENCES = st.lists(
    st.tuples(st.integers(0, 10**6), beam_configs(), st.integers(0, 3)), min_size=1, max_size=6
)


@pytest.mark.parametrize("implementation", ["numpy", "compiled"])
@FUZZ
@given(vocab=st.sampled_from([3, 4, 5, 8, 40]), sentences=SENTENCES)
def test_sentences_of_random_options_sharing_steps_get_the_references_hypotheses_bit_for_bit(
    implementation, vocab, sentences
) -> None:
    """Beams wider than the vocabulary, min_length up to max_length - 1, max_length 1, every penalty,
    joins at different steps: each sentence's hypotheses, raw and normalized scores equal the
    reference's alone (the same float32 log-probs in, so exactly)."""
    if implementation == "compiled" and native.load() is None:
        pytest.skip("the compiled beam step could not be built here")
    step = compiled_step.step if implementation == "compiled" else bs.step
    together = engine_together(sentences, vocab, step)
    for (seed, config, _), got in zip(sentences, together, strict=True):
        assert got == reference_alone(seed, vocab, config), (seed, config)


# --- the gateway's translator over the tiny exported translators --------------------------------------

NAMES = ("transformer", "gru_attention")


@pytest.fixture(scope="module")
def exported(exported_translator_models) -> Path:
    root, errors = exported_translator_models
    failed = {name: errors[name] for name in NAMES if name in errors}
    if failed:
        pytest.fail(f"export failed: {failed}")
    return root


@pytest.fixture(scope="module")
def references(exported: Path) -> dict:
    """Per model: the rebuilt PyTorch module and the source tokenizer."""
    from tokenizers import Tokenizer

    from training.checkpoint import load_checkpoint, rebuild_model

    return {
        name: (
            rebuild_model(load_checkpoint(exported / "checkpoints" / f"{name}.pt")),
            Tokenizer.from_file(str(exported / "model_repository" / name / "source_tokenizer.json")),
        )
        for name in NAMES
    }


def gateway_translator(repository: Path, name: str, config):
    """The translator the gateway builds for ``name``: fused graphs, the decoder's steps compiled."""
    from serving.decoding.native_decoder import open_runner
    from serving.decoding.translator import translator_from_entry

    kiln = json.loads((repository / name / "kiln.json").read_text())
    block = kiln["translator"]
    graph = {part: repository / block[part] / "1" / "model.onnx" for part in ("encoder", "decoder")}
    encoder, decoder = open_runner(graph["encoder"]), open_runner(graph["decoder"], decoder=True)
    return translator_from_entry(repository / name, kiln, encoder, decoder, scheduler_config=config)


TEXTS = [
    "three hundred and twelve",
    "forty-two",
    "nine",
    "seven thousand two hundred",
    "€€",
    "\u0301",
    "one " * 62,
]


@st.composite
def decoding_options(draw) -> bs.DecodingOptions:
    beam = draw(st.sampled_from([1, 2, 4, 5, 16]))
    return bs.DecodingOptions(
        beam_size=beam,
        n_best=draw(st.integers(1, beam)),
        max_length=draw(st.sampled_from([1, 2, 5, 24, 64])),
        length_penalty=draw(st.sampled_from(bs.LENGTH_PENALTIES)),
        alpha=draw(st.sampled_from([0.0, 1.0, 10.0])),
    )


REQUESTS = st.lists(
    st.tuples(st.lists(st.sampled_from(TEXTS), min_size=1, max_size=2), decoding_options()),
    min_size=2,
    max_size=6,
)


@pytest.mark.parametrize("name", NAMES)
@settings(FUZZ, max_examples=6)
@given(requests=REQUESTS, hold=st.sampled_from([0, 8]))
def test_concurrent_requests_of_random_options_equal_the_reference_alone(
    exported, references, name, requests, hold
) -> None:
    """Two clients each sending its requests one after the other: sentences of different options share
    steps, join while others run and leave between steps; a source of 63 tokens + EOS fills the
    model's 64 positions and max_length 64 its target ones."""
    from serving.decoding.scheduler_config import SchedulerConfig

    model, tokenizer = references[name]
    config = SchedulerConfig(join_wait_steps=0, finish_hold_steps=hold)

    async def serve() -> list:
        translator = gateway_translator(exported / "model_repository", name, config)
        await translator.start()
        pending, answers = list(enumerate(requests)), {}

        async def client() -> None:
            while pending:
                i, (texts, options) = pending.pop(0)
                answers[i] = await translator.translate(texts, options)

        try:
            await asyncio.gather(client(), client())
        finally:
            await translator.stop()
        return [answers[i] for i in range(len(requests))]

    for (texts, options), answer in zip(requests, asyncio.run(serve()), strict=True):
        for text, hyps in zip(texts, answer, strict=True):
            src = torch.tensor([tokenizer.encode(text).ids + [EOS]])
            (want,) = decoding.beam_search(model, src, **options.__dict__)
            assert [h.tokens for h in hyps] == [h.tokens for h in want], (text, options)
            assert [h.normalized_score for h in hyps] == pytest.approx(
                [h.normalized_score for h in want], abs=1e-4
            )
            assert [h.score for h in hyps] == pytest.approx([h.score for h in want], abs=1e-4)


# --- REST through a backend's <name> model (Triton's python model) ------------------------------------


class NameModelBackend:
    """A backend translating through ``<name>``'s KServe infer as Triton serves it: a batch over the
    entry's ``max_batch_size`` refused (400), and every mistake in options or texts a 400 too (its
    INVALID_ARG); otherwise each text's translation is the text upper-cased, n_best wide."""

    def __init__(self, max_batch_size: int) -> None:
        self.max_batch_size, self.batches = max_batch_size, []

    def metadata(self, name: str, version: str = "") -> ModelMetadata:
        outputs = [TensorMeta(o, "FP32", [-1, -1]) for o in ("translation", "score", "raw_score")]
        return ModelMetadata(name, ["1"], "python", [], outputs)

    async def infer(self, request: InferRequest) -> InferResponse:
        texts = [t.decode() for t in request.inputs["text"].reshape(-1)]
        if len(texts) > self.max_batch_size:
            raise BadRequest(f"inference request batch-size must be <= {self.max_batch_size}")
        try:
            bs.check_options(options_from_parameters(request.parameters), bs.LIMITS, 64)
        except ValueError as error:
            raise BadRequest(f"Triton: {error}") from None
        self.batches.append(texts)
        width = int(request.parameters.get("n_best", 1))
        answers = {
            "translation": np.array([[t.upper().encode()] * width for t in texts], dtype=np.object_),
            "score": np.full((len(texts), width), -0.5, dtype=np.float32),
            "raw_score": np.full((len(texts), width), -1.0, dtype=np.float32),
        }
        return InferResponse(request.model, "1", {k: answers[k] for k in request.outputs})


def test_rest_through_a_name_model_sends_texts_in_batches_it_takes_and_answers_them_in_order() -> None:
    """Triton refuses a batch over ``<name>``'s max_batch_size (16 in an export), so 17 of the 64 texts
    a REST request may hold were a 400 through ``--triton-translate triton``: now batches of 16."""
    from serving.metrics import GatewayMetrics
    from serving.protocol.translate import TranslateRequest, _via_infer

    texts = [f"text {i}" for i in range(40)]
    body = TranslateRequest(texts=texts, beam_size=2, n_best=2, return_scores=True)
    backend, metrics = NameModelBackend(16), GatewayMetrics()
    answer = asyncio.run(_via_infer(backend, metrics, "t", body, 16, 64))  # type: ignore[arg-type]
    assert [len(batch) for batch in backend.batches] == [16, 16, 8]
    assert [[h.text for h in hyps] for hyps in answer] == [[t.upper()] * 2 for t in texts]
    assert {(h.score, h.normalized_score) for hyps in answer for h in hyps} == {(-1.0, -0.5)}
    assert metrics.sample("kiln_requests_total", model="t", outcome="success") == 1  # one REST request


SAME_MISTAKES = [
    ("n_best over beam_size", ["one"], {"beam_size": 2, "n_best": 3}),
    ("max_length over the model's positions", ["one"], {"max_length": 65}),
    ("empty text", ["one", " \u3000"], {}),
    ("too many texts", ["one"] * 65, {}),
    ("text over the character cap", ["a" * 1001], {}),
]


@pytest.mark.parametrize(("case", "texts", "options"), SAME_MISTAKES, ids=[c for c, _, _ in SAME_MISTAKES])
def test_rest_through_a_name_model_refuses_a_mistake_as_the_gateways_translator_does(
    exported, case, texts, options
) -> None:
    """Through Triton's ``<name>`` every mistake came back as its 400 (``Triton: n_best must be ...``),
    where the gateway's own translator answers 422 / 413: now the same error, before any infer."""
    from serving.decoding.translator import translator_from_entry
    from serving.metrics import GatewayMetrics
    from serving.protocol.translate import TranslateRequest, _max_positions, _via_infer

    repository = exported / "model_repository"
    kiln = json.loads((repository / "transformer" / "kiln.json").read_text())
    assert _max_positions(kiln) == 64

    def unused(feed):  # noqa: ANN001, ANN202 - the mistake is refused before any model call
        raise AssertionError("no model call for a refused request")

    own = translator_from_entry(repository / "transformer", kiln, unused, unused)
    body = TranslateRequest(texts=texts, **options)
    with pytest.raises(ServingError) as gateway:
        asyncio.run(own.translate(body.texts, body.options()))
    backend = NameModelBackend(16)
    with pytest.raises(ServingError) as through:
        asyncio.run(_via_infer(backend, GatewayMetrics(), "transformer", body, 16, _max_positions(kiln)))  # type: ignore[arg-type]
    assert isinstance(gateway.value, UnprocessableInput | PayloadTooLarge), gateway.value
    assert (type(through.value), str(through.value)) == (type(gateway.value), str(gateway.value))
    assert backend.batches == []
