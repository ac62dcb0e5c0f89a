"""Translation through the gateway (embedded ONNX Runtime): exact parity with the PyTorch reference,
iteration-level batching under concurrency, strict input checking, KServe HTTP and gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from serving.app import create_app
from serving.decoding.options import DecodingOptions
from serving.settings import Settings
from tests.repo_fixtures import LiveServer, held_grpc_port, infer_or_refusal, wire_fuzz_settings
from tests.waiting import eventually

TRANSLATORS = {
    "transformer": {
        "d_model": 32,
        "heads": 2,
        "ffn_dim": 64,
        "encoder_layers": 1,
        "decoder_layers": 2,
        "share_embeddings": True,
        "tie_output": True,
    },
    "gru_attention": {
        "embed_dim": 16,
        "hidden_size": 32,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "attention_dim": 16,
    },
}
MAX_LENGTH = 24


def _pairs(n: int, seed: int) -> list[tuple[str, str]]:
    from training.data.numbers import generate_pairs

    return generate_pairs(n, lang="fr", seed=seed)


def _train_a_little(model: torch.nn.Module, tokenizers, pairs, steps: int = 40) -> None:
    """A few teacher-forced steps, so hypotheses end with EOS at varied lengths (not at max_length)."""
    from training.data.text_batches import pad_ids

    src_all = tokenizers.encode_source([s for s, _ in pairs])
    tgt_all = tokenizers.encode_target([t for _, t in pairs])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(pairs), (32,), generator=gen).tolist()
        src = pad_ids([src_all[i] for i in idx])
        tgt_in = pad_ids([[1] + tgt_all[i] for i in idx])  # BOS + target
        tgt_out = pad_ids([tgt_all[i] + [2] for i in idx])  # target + EOS
        loss = F.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt_out.flatten(), ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def build_translator_repository(root: Path, names: tuple[str, ...] = tuple(TRANSLATORS)) -> tuple[Path, dict]:
    """Tiny trained translators exported with export's API; returns (repository, {name: error})."""
    from export.pipeline import export_checkpoint
    from training.checkpoint import make_checkpoint, save_checkpoint
    from training.data.tokenizer import TokenizerConfig, build_tokenizers
    from training.models import make_config
    from training.models.registry import get_entry

    pairs = _pairs(400, seed=0)
    tokenizers = build_tokenizers(pairs, TokenizerConfig(vocab_size=120, shared=True))
    repository, errors = root / "model_repository", {}
    for name in names:
        torch.manual_seed(0)
        cfg = make_config(
            name,
            src_vocab_size=tokenizers.src_vocab_size,
            tgt_vocab_size=tokenizers.tgt_vocab_size,
            dropout=0.0,
            max_positions=64,
            **TRANSLATORS[name],
        )
        model = get_entry(name).builder(cfg)
        _train_a_little(model, tokenizers, pairs)
        ckpt = make_checkpoint(
            task="translate",
            model_name=name,
            model_args=asdict(cfg),
            model=model,
            train_config={"steps": 40},
            metrics={},
            tokenizers=tokenizers.to_dict(),
        )
        path = save_checkpoint(ckpt, root / "checkpoints" / f"{name}.pt")
        try:
            export_checkpoint(
                path, repository, max_batch_size=16, beam_sentences=8, validation=[[5, 6, 7], [9]]
            )
        except Exception as exc:  # noqa: BLE001 - reported as the reason the model's tests fail
            errors[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return repository, errors


def exported_translators(
    shared: tuple[Path, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
    label: str,
    names: tuple[str, ...],
) -> Path:
    """The translators ``names`` of the session's export (conftest's ``exported_translator_models``,
    passed as ``shared``) copied into a fresh directory of the module's own, so that it may write
    beside them; the test fails with export's errors. Returns the copy's repository, whose parent holds
    ``checkpoints/`` as the export's does."""
    root, errors = shared
    failed = {name: errors[name] for name in names if name in errors}
    if failed:
        pytest.fail(f"export failed: {failed}")
    copy = tmp_path_factory.mktemp(label)
    (copy / "checkpoints").mkdir()
    for name in names:
        shutil.copy2(root / "checkpoints" / f"{name}.pt", copy / "checkpoints")
        translator = json.loads((root / "model_repository" / name / "kiln.json").read_text())["translator"]
        for entry in (name, translator["encoder"], translator["decoder"]):
            shutil.copytree(root / "model_repository" / entry, copy / "model_repository" / entry)
    return copy / "model_repository"


def texts_of_mixed_lengths(n: int, seed: int = 7) -> list[str]:
    return [src for src, _ in _pairs(n, seed)]


def reference(root: Path, name: str, texts: list[str], beam: int) -> list[tuple[list[int], float]]:
    """training.decoding.beam_search on each text alone: (best tokens, normalized score)."""
    from tokenizers import Tokenizer

    from training.checkpoint import load_checkpoint, rebuild_model
    from training.decoding import beam_search

    model = rebuild_model(load_checkpoint(root / "checkpoints" / f"{name}.pt"))
    tok = Tokenizer.from_file(str(root / "model_repository" / name / "source_tokenizer.json"))
    out = []
    for text in texts:
        src = torch.tensor([tok.encode(text).ids + [2]])
        (hyps,) = beam_search(model, src, beam_size=beam, max_length=MAX_LENGTH)
        out.append((hyps[0].tokens, hyps[0].normalized_score))
    return out


@pytest.fixture(scope="module")
def exported(exported_translator_models) -> tuple[Path, dict]:
    return exported_translator_models  # shared with test_crash_hunt (conftest)


@pytest.fixture(scope="module")
def gateway(exported):
    root, _ = exported
    with held_grpc_port() as grpc_port:
        settings = Settings(
            model_repository=root / "model_repository",
            grpc_port=grpc_port,
            reuse_port=True,
            max_queue_size=512,
            request_timeout_s=120.0,
        )
        app = create_app(settings)
        with LiveServer(app) as server:
            server.app_state = app.state
            server.grpc_url = f"127.0.0.1:{settings.grpc_port}"
            yield server


@pytest.fixture(params=sorted(TRANSLATORS))
def name(request, exported) -> str:
    _, errors = exported
    if request.param in errors:
        pytest.fail(f"export of {request.param} failed: {errors[request.param]}")
    return request.param


def _post(server, name: str, body: dict | bytes, timeout: float = 60.0) -> httpx.Response:
    url = f"http://{server.url}/v1/models/{name}/translate"
    if isinstance(body, bytes):
        return httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=timeout)
    return httpx.post(url, json=body, timeout=timeout)


def test_translations_one_at_a_time_equal_the_pytorch_reference_token_for_token(
    exported, gateway, name
) -> None:
    root, _ = exported
    texts = texts_of_mixed_lengths(24)
    expected = reference(root, name, texts, beam=4)
    tokens = asyncio.run(_solo_tokens(root / "model_repository", name, texts))
    assert tokens == [t for t, _ in expected]
    assert len({len(t) for t in tokens}) > 1, "the tiny model should stop at varied lengths"
    target = _target_tokenizer(root, name)
    for text, (want_tokens, want_score) in zip(texts, expected, strict=True):
        body = {"texts": [text], "beam_size": 4, "max_length": MAX_LENGTH, "return_scores": True}
        (hyp,) = _post(gateway, name, body).json()["translations"][0]["hypotheses"]
        assert hyp["text"] == target.decode([t for t in want_tokens if t > 3])
        assert hyp["normalized_score"] == pytest.approx(want_score, abs=1e-4)


async def _solo_tokens(
    repository: Path, name: str, texts: list[str], max_length: int = MAX_LENGTH
) -> list[list[int]]:
    """The gateway's translator service built in-process on the same entries: ids of each text alone."""
    translator = _translator(repository, name)
    await translator.start()
    try:
        options = DecodingOptions(beam_size=4, max_length=max_length)
        return [(await translator.translate([t], options))[0][0].tokens for t in texts]
    finally:
        await translator.stop()


def _translator(repository: Path, name: str):
    """The gateway's translator service of ``name``, built in-process over its ONNX entries (not started)."""
    from serving.decoding.translator import translator_from_entry
    from serving.execution.onnxruntime import onnxruntime_runner

    kiln = json.loads((repository / name / "kiln.json").read_text())
    run = {
        part: onnxruntime_runner(repository / f"{name}_{part}" / "1" / "model.onnx")
        for part in ("encoder", "decoder")
    }
    return translator_from_entry(repository / name, kiln, run["encoder"], run["decoder"])


def _target_tokenizer(root: Path, name: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(root / "model_repository" / name / "target_tokenizer.json"))


def test_64_concurrent_requests_of_mixed_lengths_and_beams_equal_their_solo_results(
    exported, gateway, name
) -> None:
    root, _ = exported
    texts = texts_of_mixed_lengths(64, seed=11)
    beams = [(1, 2, 4, 5)[i % 4] for i in range(64)]
    expected = {b: dict(zip(*_ref_by_beam(root, name, texts, beams, b), strict=True)) for b in set(beams)}

    async def all_at_once():
        async with httpx.AsyncClient(timeout=120) as client:
            url = f"http://{gateway.url}/v1/models/{name}/translate"
            body = {"max_length": MAX_LENGTH, "return_scores": True}
            return await asyncio.gather(
                *(
                    client.post(url, json={**body, "texts": [t], "beam_size": b})
                    for t, b in zip(texts, beams, strict=True)
                )
            )

    replies = asyncio.run(all_at_once())
    assert [r.status_code for r in replies] == [200] * 64
    for text, beam, reply in zip(texts, beams, replies, strict=True):
        (hyp,) = reply.json()["translations"][0]["hypotheses"]
        want_text, want_score = expected[beam][text]
        assert hyp["text"] == want_text, (text, beam)
        assert hyp["normalized_score"] == pytest.approx(want_score, abs=1e-4)


def _ref_by_beam(root, name, texts, beams, beam):
    chosen = [t for t, b in zip(texts, beams, strict=True) if b == beam]
    target = _target_tokenizer(root, name)
    refs = reference(root, name, chosen, beam)
    decoded = [(target.decode([t for t in tokens if t > 3]), score) for tokens, score in refs]
    return chosen, decoded


def _sample(server, metric: str, model: str) -> float:
    return server.app_state.metrics.sample(metric, model=model) or 0.0


def test_200_concurrent_requests_are_all_answered_and_steps_serve_several_requests(gateway) -> None:
    name = "transformer"
    texts = texts_of_mixed_lengths(200, seed=3)

    async def flood():
        async with httpx.AsyncClient(timeout=120) as client:
            url = f"http://{gateway.url}/v1/models/{name}/translate"
            return await asyncio.gather(
                *(client.post(url, json={"texts": [t], "beam_size": 2, "max_length": 16}) for t in texts)
            )

    replies = asyncio.run(flood())
    assert [r.status_code for r in replies] == [200] * 200
    assert all(r.json()["translations"][0]["hypotheses"][0]["text"] is not None for r in replies)
    metrics = httpx.get(f"http://{gateway.url}/metrics").text
    assert f'kiln_decoder_steps_total{{model="{name}",version="1"}}' in metrics
    shared = [
        line
        for line in metrics.splitlines()
        if line.startswith("kiln_decoder_requests_per_step_bucket")
        and f'model="{name}"' in line
        and 'le="1.0"' in line
    ]
    single = float(shared[0].rsplit(" ", 1)[1])
    total = _sample(gateway, "kiln_decoder_requests_per_step_count", name)
    assert total > single, "some decoder steps must have served rows of several requests"
    assert _sample(gateway, "kiln_tokens_generated_total", name) > 0


BAD_INPUTS = [
    ("empty list", {"texts": []}, 422),
    ("empty text", {"texts": ["  "]}, 422),
    ("text over the character cap", {"texts": ["one " * 300]}, 413),
    ("too many texts", {"texts": ["one"] * 65}, 413),
    ("beam_size below 1", {"texts": ["one"], "beam_size": 0}, 422),
    ("beam_size over the cap", {"texts": ["one"], "beam_size": 17}, 422),
    ("max_length below 1", {"texts": ["one"], "max_length": 0}, 422),
    ("max_length over the cap", {"texts": ["one"], "max_length": 100000}, 422),
    ("n_best over beam_size", {"texts": ["one"], "beam_size": 2, "n_best": 3}, 422),
    ("unknown length penalty", {"texts": ["one"], "length_penalty": "cubic"}, 422),
    ("unknown field", {"texts": ["one"], "temperature": 0.7}, 422),
    ("texts not a list", {"texts": "one"}, 422),
    ("invalid UTF-8", b'{"texts": ["\xff\xfe"]}', 400),
    ("invalid JSON", b'{"texts": [', 400),
    ("longer than any valid request (not parsed)", b"[" + b"1," * 500_000 + b"1]", 413),
]


def test_the_longest_valid_translate_body_is_within_the_bound_checked_before_parsing() -> None:
    """Every character a surrogate pair escaped as JSON writes it (12 bytes), pretty-printed: still
    read; a byte more than the bound is refused before any parse (an unparsable body shows it)."""
    from serving.errors import PayloadTooLarge
    from serving.protocol.translate import MAX_BODY_BYTES, parse_body

    texts = ["\U0001f600" * 1000] * 64
    body = json.dumps({"texts": texts, "beam_size": 16, "return_scores": True}, indent=4).encode()
    assert b"\\ud83d\\ude00" in body and len(body) <= MAX_BODY_BYTES
    assert parse_body(body).texts == texts
    with pytest.raises(PayloadTooLarge, match=f"at most {MAX_BODY_BYTES} bytes"):
        parse_body(b"{" * (MAX_BODY_BYTES + 1))


@pytest.mark.parametrize(("case", "body", "status"), BAD_INPUTS, ids=[c for c, _, _ in BAD_INPUTS])
def test_bad_translate_input_gets_a_clear_4xx_and_the_server_keeps_serving(
    gateway, case, body, status
) -> None:
    reply = _post(gateway, "transformer", body)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]
    ok = _post(gateway, "transformer", {"texts": ["one"], "max_length": 8})
    assert ok.status_code == 200


def test_unknown_models_and_non_translators_are_refused(gateway) -> None:
    assert _post(gateway, "nope", {"texts": ["one"]}).status_code == 404
    assert _post(gateway, "transformer_encoder", {"texts": ["one"]}).status_code == 400


@pytest.mark.parametrize("name", sorted(TRANSLATORS))
def test_an_encoder_fed_a_source_of_no_tokens_is_a_400_naming_the_empty_input(gateway, name) -> None:
    """Refused before it is queued: ONNX Runtime fails the Transformer's with a plain FAIL, and aborts
    the whole process on the GRU's (every request in the gateway lost with it)."""
    url = f"http://{gateway.url}/v2/models/{name}_encoder/infer"
    empty = {"inputs": [{"name": "src_ids", "datatype": "INT64", "shape": [1, 0], "data": []}]}
    reply = httpx.post(url, json=empty, timeout=60)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"] == (
        f"input 'src_ids': dimension 1 (src_len) is empty in shape [1, 0]: model '{name}_encoder' runs on at least one"
    )
    one = {"inputs": [{"name": "src_ids", "datatype": "INT64", "shape": [1, 2], "data": [5, 2]}]}
    assert httpx.post(url, json=one, timeout=60).status_code == 200


def test_a_decoders_empty_cache_before_its_first_step_is_the_one_empty_axis_allowed(exported) -> None:
    """export's parity checks ran the decoder at past_len 0 (its first step), never at src_len 0."""
    import onnxruntime as ort

    from serving.errors import BadRequest
    from serving.execution.repository import Repository
    from serving.execution.validation import input_rules, validate_inputs

    root, _ = exported
    entry = Repository(root / "model_repository").get("transformer_decoder")
    session = ort.InferenceSession(str(entry.model_file("")), providers=["CPUExecutionProvider"])
    rules = input_rules(entry, {i.name: list(i.shape) for i in session.get_inputs()})
    assert rules["self_k_0"].nonempty == rules["cache_mask"].nonempty == ()
    assert rules["cross_k_0"].nonempty == ((2, "src_len"),)
    assert rules["src_mask"].nonempty == ((1, "src_len"),)
    sizes = {"past_len": 2, "src_len": 3}
    feeds = {}
    for i in session.get_inputs():  # a client's shapes: the config's where it reshapes (a per-row [1])
        rule = rules[i.name]
        shape = (
            [1, *rule.shape[1:]]
            if rule.reshape is not None
            else [sizes.get(d, 1) if isinstance(d, str) else d for d in i.shape]
        )
        feeds[i.name] = np.zeros(shape, rule.dtype)
    validate_inputs(entry, feeds, rules)  # agreeing axes
    feeds["cache_mask"] = np.zeros((1, 5), np.bool_)  # the compiled operators would answer NaN rows
    with pytest.raises(
        BadRequest, match=r"inputs 'self_k_0' and 'cache_mask' disagree on the model's past_len axis: 2 and 5"
    ):
        validate_inputs(entry, feeds, rules)


def test_a_translators_statistics_count_its_texts_decoder_steps_and_each_requests_wait_to_join(
    gateway,
) -> None:
    """perf_analyzer without ``-x`` picks the version whose queue count grew: a translator's must."""
    url = f"http://{gateway.url}/v2/models/transformer/stats"
    (before,) = httpx.get(url).json()["model_stats"]
    assert _post(gateway, "transformer", {"texts": ["one", "two three"], "beam_size": 2}).status_code == 200
    (after,) = httpx.get(url).json()["model_stats"]
    assert after["inference_count"] == before["inference_count"] + 2  # texts, as Triton counts items
    assert after["execution_count"] > before["execution_count"]  # decoder steps
    stats = after["inference_stats"]
    assert stats["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    old = before["inference_stats"]
    for field in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert stats[field]["count"] == old[field]["count"] + 1, field  # the request, once
    assert stats["compute_infer"]["ns"] > old["compute_infer"]["ns"]  # joined to answered
    assert stats["queue"]["ns"] + stats["compute_infer"]["ns"] <= stats["success"]["ns"] + 1_000_000
    assert after["batch_stats"] == []  # no batcher: the decoder steps are shared


def test_scores_and_n_best_are_returned_only_when_asked(gateway) -> None:
    plain = _post(gateway, "transformer", {"texts": ["twelve"], "max_length": 10}).json()
    assert set(plain["translations"][0]["hypotheses"][0]) == {"text"}
    scored = _post(
        gateway,
        "transformer",
        {"texts": ["twelve"], "max_length": 10, "beam_size": 3, "n_best": 3, "return_scores": True},
    ).json()
    hyps = scored["translations"][0]["hypotheses"]
    assert len(hyps) == 3 and all({"text", "score", "normalized_score"} <= set(h) for h in hyps)
    assert [h["normalized_score"] for h in hyps] == sorted(
        (h["normalized_score"] for h in hyps), reverse=True
    )


def test_decoding_options_written_as_whole_floats_decode_as_their_integers(gateway) -> None:
    body = {"texts": ["twelve"], "max_length": 10, "beam_size": 3, "n_best": 2, "return_scores": True}
    as_int = _post(gateway, "transformer", body)
    as_float = _post(gateway, "transformer", {**body, "beam_size": 3.0, "n_best": 2.0, "max_length": 10.0})
    assert as_int.status_code == as_float.status_code == 200, (as_int.text, as_float.text)
    assert as_float.json() == as_int.json()
    refused = _post(gateway, "transformer", {**body, "beam_size": 2.5})
    assert refused.status_code == 422 and "beam_size" in refused.json()["error"]


def test_tritonclient_http_and_grpc_translate_through_the_gateway(gateway) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    texts = texts_of_mixed_lengths(3, seed=5)
    want = [
        h["hypotheses"][0]["text"]
        for h in _post(gateway, "transformer", {"texts": texts, "beam_size": 2, "max_length": 12}).json()[
            "translations"
        ]
    ]
    data = np.array([[t.encode()] for t in texts], dtype=np.object_)
    for module, url in ((httpclient, gateway.url), (grpcclient, gateway.grpc_url)):
        client = module.InferenceServerClient(url)
        tensor = module.InferInput("text", [3, 1], "BYTES")
        tensor.set_data_from_numpy(data)
        result = client.infer(
            "transformer",
            [tensor],
            outputs=[module.InferRequestedOutput("translation")],
            parameters={"beam_size": 2, "max_length": 12},
        )
        got = [v.decode() for v in result.as_numpy("translation").reshape(-1)]
        assert got == want, module.__name__
        client.close()


def test_tritons_generate_extension_translates_as_the_translate_route_does(gateway) -> None:
    """``{"text": ...}`` to ``/generate`` (and ``/generate_stream``, one Server-Sent Event): the
    translation and scores of the REST route, decoding options at the top or in ``parameters``."""
    texts = texts_of_mixed_lengths(3, seed=11)
    for name in sorted(TRANSLATORS):
        body = {"texts": texts, "beam_size": 3, "max_length": 12, "return_scores": True}
        want = [t["hypotheses"][0] for t in _post(gateway, name, body).json()["translations"]]
        for i, text in enumerate(texts):
            options = {"beam_size": 3, "max_length": 12}
            request = (
                {"text": text, "id": f"g{i}", "parameters": options} if i % 2 else {"text": text, **options}
            )
            reply = httpx.post(f"http://{gateway.url}/v2/models/{name}/generate", json=request, timeout=60)
            assert reply.status_code == 200, reply.text
            got = reply.json()
            assert got["model_name"] == name and got["model_version"] == "1"
            assert got.get("id") == (f"g{i}" if i % 2 else None)
            assert got["translation"] == want[i]["text"]
            assert got["score"] == pytest.approx(want[i]["normalized_score"], abs=1e-6)
        url = f"http://{gateway.url}/v2/models/{name}/versions/1/generate_stream"
        streamed = httpx.post(url, json={"text": texts[0], "beam_size": 3, "max_length": 12}, timeout=60)
        assert streamed.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert streamed.text.startswith("data: ") and streamed.text.endswith("\n\n")
        assert json.loads(streamed.text[len("data: ") :])["translation"] == want[0]["text"]
    refused = httpx.post(
        f"http://{gateway.url}/v2/models/transformer/generate", json={"text": "x", "beam_size": 99}
    )
    assert refused.status_code in (400, 422) and "beam_size" in refused.json()["error"]


def test_a_gateway_stepping_another_gateways_decoder_translates_as_that_gateway(gateway, exported) -> None:
    """``--backend triton --triton-translate scheduler`` pointed at a Kiln gateway: its beam search
    steps the other's ``<name>_decoder`` over KServe, sending the per-row scalars as that entry's
    metadata lists them (``[n, 1]``, the config's dims, reshaped for the model as Triton reshapes them;
    ONNX Runtime refused their rank before). The translations and scores are the other gateway's."""
    from fastapi.testclient import TestClient

    root, _ = exported
    texts = texts_of_mixed_lengths(4, seed=13)
    body = {"texts": texts, "beam_size": 3, "max_length": 12, "return_scores": True}
    settings = Settings(
        model_repository=root / "model_repository",
        backend="triton",
        triton_url=gateway.grpc_url,
        triton_translate="scheduler",
        grpc_port=0,
    )
    with TestClient(create_app(settings)) as front:
        for name in sorted(TRANSLATORS):
            got = front.post(f"/v1/models/{name}/translate", json=body)
            assert got.status_code == 200, got.text
            want = _post(gateway, name, body).json()["translations"]
            for mine, theirs in zip(got.json()["translations"], want, strict=True):
                assert [h["text"] for h in mine["hypotheses"]] == [h["text"] for h in theirs["hypotheses"]]
                assert mine["hypotheses"][0]["score"] == pytest.approx(
                    theirs["hypotheses"][0]["score"], abs=1e-4
                )


def test_kserve_metadata_and_config_list_the_outputs_an_infer_returns_over_http_and_grpc(gateway) -> None:
    """``translation``, the optional ``score`` and ``raw_score``, each [n, n_best], as infer answers them
    (and an unknown output's error names them all)."""
    import tritonclient.grpc as grpcclient

    url = f"http://{gateway.url}/v2/models/transformer"
    served = [
        ("translation", "BYTES", [-1, -1]),
        ("score", "FP32", [-1, -1]),
        ("raw_score", "FP32", [-1, -1]),
    ]
    meta = httpx.get(url, timeout=60).json()
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == served
    config = httpx.get(f"{url}/config", timeout=60).json()
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("translation", "TYPE_STRING", [-1]),
        ("score", "TYPE_FP32", [-1]),
        ("raw_score", "TYPE_FP32", [-1]),
    ]
    with grpcclient.InferenceServerClient(gateway.grpc_url) as client:
        outputs = client.get_model_metadata("transformer").outputs
        assert [(t.name, t.datatype, list(t.shape)) for t in outputs] == served
        assert [o.name for o in client.get_model_config("transformer").config.output] == [
            "translation",
            "score",
            "raw_score",
        ]
    body = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": ["twelve", "three"]}],
        "outputs": [{"name": "translation"}, {"name": "score"}, {"name": "raw_score"}],
        "parameters": {"beam_size": 3, "n_best": 3, "max_length": 12},
    }
    answered = {o["name"]: o for o in httpx.post(f"{url}/infer", json=body, timeout=60).json()["outputs"]}
    assert [(n, answered[n]["datatype"]) for n, _, _ in served] == [(n, d) for n, d, _ in served]
    assert answered["translation"]["shape"] == answered["score"]["shape"] == [2, 3]  # [n, n_best]
    assert answered["raw_score"]["shape"] == [2, 3]
    unnamed = {k: v for k, v in body.items() if k != "outputs"}  # KServe v2: every output, as Triton's
    every = [o["name"] for o in httpx.post(f"{url}/infer", json=unnamed, timeout=60).json()["outputs"]]
    assert every == ["translation", "score", "raw_score"]
    wrong = {**body, "outputs": [{"name": "scores"}]}
    refused = httpx.post(f"{url}/infer", json=wrong, timeout=60)
    assert refused.status_code == 400
    assert refused.json()["error"].endswith(
        "no output(s) ['scores']; outputs: ['translation', 'score', 'raw_score']"
    )


def test_kserve_translate_refuses_bad_parameters_with_400(gateway) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(gateway.url)
    tensor = httpclient.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"one"]], dtype=np.object_))
    for wrong in ("wide", 2.5, True):
        with pytest.raises(InferenceServerException, match="beam_size"):
            client.infer("transformer", [tensor], parameters={"beam_size": wrong})
    client.close()


def test_kserve_json_scores_of_hypotheses_the_search_did_not_find_are_null_not_infinity(gateway) -> None:
    body = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["twelve"]}],
        "outputs": [{"name": "translation"}, {"name": "score"}],
        "parameters": {"beam_size": 4, "n_best": 4, "max_length": 1},  # one step: fewer than 4 finish
    }
    reply = httpx.post(f"http://{gateway.url}/v2/models/transformer/infer", json=body, timeout=60)

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON (RFC 8259)")

    outputs = {o["name"]: o for o in json.loads(reply.content, parse_constant=refuse)["outputs"]}
    scores, found = outputs["score"]["data"], outputs["score"]["data"].index(None)
    assert outputs["score"]["shape"] == outputs["translation"]["shape"] == [1, 4]
    assert found >= 1 and all(isinstance(s, float) for s in scores[:found])  # what the search found,
    assert scores[found:] == [None] * (4 - found)  # then the padding


def test_a_client_that_hangs_up_mid_translation_stops_its_decode(gateway) -> None:
    metrics = gateway.app_state.metrics

    def sample(name: str) -> float:
        return metrics.sample(name, model="transformer") or 0.0

    body = {"texts": texts_of_mixed_lengths(64, seed=31), "beam_size": 16, "max_length": 60}
    first = sample("kiln_decoder_steps_total")
    assert _post(gateway, "transformer", body).status_code == 200
    whole = sample("kiln_decoder_steps_total") - first  # the steps the request takes when answered
    raw = json.dumps(body).encode()
    head = f"POST /v1/models/transformer/translate HTTP/1.1\r\nHost: x\r\nContent-Length: {len(raw)}\r\n\r\n"
    start = sample("kiln_decoder_steps_total")
    left = metrics.sample("kiln_request_failures_total", model="transformer", status="499") or 0.0
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(head.encode() + raw)  # the lean path: a Content-Length body
        assert eventually(lambda: sample("kiln_decoder_steps_total") > start)  # decoding, then gone
    assert eventually(lambda: sample("kiln_in_flight_requests") == 0)
    stopped = sample("kiln_decoder_steps_total") - start
    assert stopped < whole / 2, (stopped, whole)  # its rows left within a compiled call or so
    assert metrics.sample("kiln_request_failures_total", model="transformer", status="499") == left + 1
    assert _post(gateway, "transformer", {"texts": ["twelve"]}).status_code == 200  # serving on


def test_a_poisoned_request_among_16_concurrent_fails_alone_and_the_others_answer_as_without_it(
    gateway,
) -> None:
    texts = texts_of_mixed_lengths(16, seed=21)
    body = {"beam_size": 3, "max_length": MAX_LENGTH, "return_scores": True}
    alone = [_post(gateway, "transformer", {**body, "texts": [t]}).json() for t in texts]

    async def with_poison():
        async with httpx.AsyncClient(timeout=120) as client:
            url = f"http://{gateway.url}/v1/models/transformer/translate"
            posts = [client.post(url, json={**body, "texts": [t]}) for t in texts]
            posts.insert(5, client.post(url, json={**body, "texts": [texts[0]], "alpha": 1e308}))
            return await asyncio.gather(*posts)

    replies = asyncio.run(with_poison())
    poisoned = replies.pop(5)
    assert poisoned.status_code == 422 and "alpha" in poisoned.json()["error"]
    assert [r.status_code for r in replies] == [200] * 16
    for reply, solo in zip(replies, alone, strict=True):  # scores to float32 rounding (batch-dependent)
        (got,), (want,) = reply.json()["translations"][0]["hypotheses"], solo["translations"][0]["hypotheses"]
        assert got["text"] == want["text"]
        assert got["score"] == pytest.approx(want["score"], rel=1e-5)


def test_kserve_translate_refuses_other_shapes_and_classification_and_reports_its_version(gateway) -> None:
    url = f"http://{gateway.url}/v2/models/transformer/versions/1/infer"
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["twelve"]}]}
    asked = {**body, "outputs": [{"name": "translation", "parameters": {"classification": 2}}]}
    refused = httpx.post(url, json=asked, timeout=60)
    assert refused.status_code == 400 and "classification" in refused.json()["error"]
    answered = httpx.post(url, json=body, timeout=60)
    assert answered.status_code == 200 and answered.json()["model_version"] == "1"
    for shape in ([1, 2], [2], [1, 1, 2]):  # not its metadata's [-1, 1]
        data = ["twelve", "three"][: math.prod(shape)]
        wrong = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape, "data": data}]}
        refused = httpx.post(url, json=wrong, timeout=60)
        assert refused.status_code == 400 and "[-1, 1]" in refused.json()["error"], shape


def test_kserve_translate_refuses_an_overflowing_alpha_with_a_4xx(gateway) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(gateway.url)
    tensor = httpclient.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"one"]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="alpha") as raised:
        client.infer("transformer", [tensor], parameters={"alpha": 1e308})
    assert raised.value.status() in ("400", "422")
    client.close()


def test_each_decode_worker_translates_on_its_own_single_threaded_sessions(exported) -> None:
    import onnxruntime as ort

    from serving.decoding.scheduler_config import SchedulerConfig
    from serving.decoding.translator_pool import TranslatorPool
    from serving.execution.onnxruntime import OnnxRuntimeBackend
    from serving.execution.ort_options import OrtOptions
    from serving.execution.repository import Repository

    root, _ = exported
    texts = texts_of_mixed_lengths(8, seed=5)
    opened: list[tuple[str, str, int]] = []

    def session(path: str, sess_options, providers):
        opened.append((Path(path).parent.parent.name, Path(path).name, sess_options.intra_op_num_threads))
        return ort.InferenceSession(path, sess_options=sess_options, providers=providers)

    async def scenario() -> tuple[list, list[str]]:
        repository = Repository(root / "model_repository")
        backend = OnnxRuntimeBackend(repository, OrtOptions(intra_op_threads=2), session_factory=session)
        await backend.start()
        opened.clear()  # the batchers' sessions; what follows is opened for the decode workers
        pool = TranslatorPool(repository, scheduler_config=SchedulerConfig(workers=2))
        await pool.start(backend.runner)
        try:
            schedulers = pool.get("transformer").schedulers
            options = DecodingOptions(beam_size=4, max_length=MAX_LENGTH)
            answers = await asyncio.gather(*(pool.get("transformer").translate([t], options) for t in texts))
            return schedulers, [a[0][0].tokens for a in answers]
        finally:
            await pool.stop()
            await backend.stop()

    schedulers, answers = asyncio.run(scenario())
    assert len(schedulers) == 2
    assert schedulers[0].run_decoder is not schedulers[1].run_decoder
    assert schedulers[0].run_encoder is not schedulers[1].run_encoder
    # the encoder and the decoder step with fused attention (export wrote them; the operators compile here)
    from serving.decoding import native

    graph = native.FUSED_GRAPH if native.load() is not None else "model.onnx"
    per_translator = [("transformer_encoder", graph, 1), ("transformer_decoder", graph, 1)] * 2
    assert sorted(o for o in opened if o[0].startswith("transformer_")) == sorted(per_translator)
    assert answers == [tokens for tokens, _ in reference(root, "transformer", texts, beam=4)]


@contextlib.asynccontextmanager
async def backend_and_pool(
    root: Path, scheduler_config: Any, make_backend: Callable[[Any], Any] | None = None
) -> AsyncIterator[tuple[Any, Any]]:
    """The exported repository's ONNX Runtime backend (``make_backend(repository)``, else one with the
    default options) and a translator pool over its runners, both started; stopped on the way out."""
    from serving.decoding.translator_pool import TranslatorPool
    from serving.execution.onnxruntime import OnnxRuntimeBackend
    from serving.execution.ort_options import OrtOptions
    from serving.execution.repository import Repository

    repository = Repository(root / "model_repository")
    backend = make_backend(repository) if make_backend else OnnxRuntimeBackend(repository, OrtOptions())
    await backend.start()
    pool = TranslatorPool(repository, scheduler_config=scheduler_config)
    await pool.start(backend.runner)
    try:
        yield backend, pool
    finally:
        await pool.stop()
        await backend.stop()


def test_an_idle_decode_worker_hands_back_its_compiled_steps_buffers_and_translates_the_same_after(
    exported,
) -> None:
    """After ``release_idle_s`` with nothing to decode, a decode worker's compiled step holds no buffer
    (its caches grown by the requests before); translations after it equal the reference."""
    from serving.decoding import native
    from serving.decoding.scheduler_config import SchedulerConfig
    from tests.waiting import until

    root, _ = exported
    texts = texts_of_mixed_lengths(8, seed=8)
    options = DecodingOptions(beam_size=4, max_length=MAX_LENGTH)

    async def scenario() -> tuple[list, list, list[int], int]:
        async with backend_and_pool(root, SchedulerConfig(release_idle_s=0.05)) as (_, pool):
            translator = pool.get("transformer")
            (scheduler,) = translator.schedulers
            compiled = getattr(scheduler.run_decoder, "native", None)
            first = await asyncio.gather(*(translator.translate([t], options) for t in texts))
            held = sum(buffer.nbytes for buffer, _ in compiled._buffers.values()) if compiled else 0
            await until(lambda: scheduler.releases == 1)
            left = sum(buffer.nbytes for buffer, _ in compiled._buffers.values()) if compiled else 0
            again = await asyncio.gather(*(translator.translate([t], options) for t in texts))
            return (
                [a[0][0].tokens for a in first],
                [a[0][0].tokens for a in again],
                [held, left],
                compiled is not None,
            )

    first, again, (held, left), compiled = asyncio.run(scenario())
    assert compiled == (native.load() is not None)
    if compiled:
        assert held > 0 and left == 0, (held, left)
    want = [tokens for tokens, _ in reference(root, "transformer", texts, beam=4)]
    assert first == want and again == want


def test_the_decode_workers_sessions_map_one_copy_of_each_graphs_weights(exported) -> None:
    """Every decode worker's encoder, decoder and compiled-step sessions open the weight store's graphs
    (serving/execution/shared_weights.py): one optimized file each, its weights and their pre-packed
    copies mapped, not read into each session; the answers are the reference's."""
    from serving.decoding import native
    from serving.decoding.scheduler_config import SchedulerConfig
    from serving.execution.shared_weights import WEIGHTS
    from tests.test_shared_weights import mapped_files

    root, _ = exported
    texts = texts_of_mixed_lengths(8, seed=6)

    async def scenario() -> tuple[list, list, set[str], Path]:
        async with backend_and_pool(root, SchedulerConfig(workers=2)) as (backend, pool):
            options = DecodingOptions(beam_size=4, max_length=MAX_LENGTH)
            answers = await asyncio.gather(*(pool.get("transformer").translate([t], options) for t in texts))
            store = backend._opener.weights.root
            return (
                pool.get("transformer").schedulers,
                [a[0][0].tokens for a in answers],
                mapped_files(),
                store,
            )

    schedulers, answers, maps, store = asyncio.run(scenario())
    decoders = [s.run_decoder for s in schedulers]
    encoders = [s.run_encoder for s in schedulers]
    for run in (*decoders, *encoders):
        assert run.optimized and Path(run.model_file).is_relative_to(store), run.model_file
    assert len({d.model_file for d in decoders}) == 1 and len({e.model_file for e in encoders}) == 1
    assert decoders[0].model_file != encoders[0].model_file
    if native.load() is not None:  # the compiled steps open the store's graph too, as it is
        assert all(d.native is not None and d.native.path == str(d.model_file) for d in decoders)
    for run in (decoders[0], encoders[0]):
        assert str(Path(run.model_file).parent / WEIGHTS) in maps
    assert answers == [tokens for tokens, _ in reference(root, "transformer", texts, beam=4)]


def test_the_parts_kserve_sessions_open_the_decode_workers_graphs_and_answer_as_the_entrys_own_file(
    exported,
) -> None:
    """Wired by the app, a translator's encoder and decoder entries answer KServe calls on the graphs
    their decode workers step on: the weight store holds and maps no other file (before, the batch
    sessions opened ``model.onnx``, a second copy of every weight), and the answers are those of the
    entry's own ``model.onnx``."""
    import onnxruntime as ort

    from serving.decoding.scheduler_config import SchedulerConfig
    from serving.execution.base import InferRequest
    from serving.execution.shared_weights import WEIGHTS
    from serving.lifespan import make_backend
    from serving.metrics import GatewayMetrics
    from tests.test_shared_weights import mapped_files

    root, _ = exported
    repository_dir = root / "model_repository"
    rng = np.random.default_rng(3)
    source = np.array([[5, 9, 14, 7, 2]], dtype=np.int64)

    def session(part: str) -> ort.InferenceSession:
        return ort.InferenceSession(
            str(repository_dir / part / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
        )

    def plain(part: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        run = session(part)
        return dict(zip([o.name for o in run.get_outputs()], run.run(None, inputs), strict=True))

    encoded = plain("transformer_encoder", {"src_ids": source})
    cache_shape = {i.name: i.shape for i in session("transformer_decoder").get_inputs()}["self_k_0"]
    heads, head_dim = cache_shape[1], cache_shape[3]
    past = 3
    step = {
        "tokens": np.array([4], dtype=np.int64),
        "positions": np.array([past], dtype=np.int64),
        "cache_mask": np.ones((1, past), dtype=bool),
        "src_mask": encoded["src_mask"],
        "row_place": np.zeros(1, dtype=np.int64),
    }
    for name, value in encoded.items():
        if name.startswith("cross_"):
            step[name] = value
            layer = name.rpartition("_")[2]
            for kind in ("k", "v"):
                step[f"self_{kind}_{layer}"] = rng.standard_normal((1, heads, past, head_dim)).astype(
                    np.float32
                )
    # over KServe a row's token, position and place are [rows, 1] (the config reshapes them)
    request = {name: value.reshape(-1, 1) if value.ndim == 1 else value for name, value in step.items()}

    def wired(repository):  # as the app makes it
        return make_backend(Settings(model_repository=repository_dir), repository, GatewayMetrics())

    async def scenario() -> tuple[dict, dict, list, set[str], Path]:
        async with backend_and_pool(root, SchedulerConfig(), wired) as (backend, pool):
            got_encoder = await backend.infer(InferRequest("transformer_encoder", {"src_ids": source}))
            got_decoder = await backend.infer(InferRequest("transformer_decoder", request))
            runs = [
                run
                for name in sorted(pool.names())
                for s in pool.get(name).schedulers
                for run in (s.run_encoder, s.run_decoder)
            ]
            store = backend._opener.weights.root
            return got_encoder.outputs, got_decoder.outputs, runs, mapped_files(), store

    got_encoder, got_decoder, runs, maps, store = asyncio.run(scenario())
    stepped = {Path(run.model_file).parent / WEIGHTS for run in runs}
    assert all(run.optimized for run in runs)
    mapped = {Path(path) for path in maps if path.endswith(f"/{WEIGHTS}") and path.startswith(str(store))}
    assert mapped == stepped, "the KServe sessions map the decode workers' weights and nothing else"
    for got, want in ((got_encoder, encoded), (got_decoder, plain("transformer_decoder", step))):
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_a_step_graph_that_does_not_open_leaves_the_entrys_own_file_serving(
    exported, tmp_path, caplog
) -> None:
    """A fused step graph that cannot open (here: not a graph at all) costs a warning, not the translator:
    one, however many sessions open it (the entry's batch session and every decode worker's opened the
    same file, and each warned: three lines a process with two decode workers)."""
    from serving.execution.base import GraphChoice
    from serving.execution.onnxruntime import OnnxRuntimeBackend
    from serving.execution.ort_options import OrtOptions
    from serving.execution.repository import Repository

    root, _ = exported
    broken = tmp_path / "model.fused.onnx"
    broken.write_bytes(b"not an onnx graph")
    graph = GraphChoice(lambda _: broken, lambda _path, options: options)

    async def scenario():
        backend = OnnxRuntimeBackend(Repository(root / "model_repository"), OrtOptions())
        await backend.start()
        try:
            return [backend.runner("transformer_decoder", graph=graph) for _ in range(2)]  # two workers
        finally:
            await backend.stop()

    with caplog.at_level("WARNING"):
        runs = asyncio.run(scenario())
    # the weight store's optimized graph of the entry's own model.onnx, not the fused one
    assert all(run.optimized and Path(run.model_file).name == "model.onnx" for run in runs)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= 30 and "did not open" in r.getMessage()]
    assert len(warned) == 1 and "transformer_decoder: model.fused.onnx did not open" in warned[0], warned
    # one warning for the file ONNX Runtime cannot read, not also one about sharing its weights
    assert f"{broken}: its sessions load their own copies" not in caplog.text


def test_small_requests_are_tokenized_on_the_event_loop_and_large_ones_in_the_codec_thread(exported) -> None:
    import threading

    from serving.decoding.translator import INLINE_CHARS

    root, _ = exported
    texts = texts_of_mixed_lengths(64, seed=11)
    size = next(n for n in range(1, len(texts) + 1) if sum(map(len, texts[:n])) > INLINE_CHARS)
    on_loop: list[tuple[str, bool]] = []  # (codec call, ran on the event loop's thread)

    async def scenario() -> tuple[list[list[int]], list[list[int]]]:
        translator = _translator(root / "model_repository", "transformer")
        for part in ("encode", "decode"):
            work = getattr(translator.codec, part)

            def recorded(items, batched=True, work=work, part=part):
                on_loop.append((part, threading.current_thread() is threading.main_thread()))
                return work(items, batched)

            setattr(translator.codec, part, recorded)
        await translator.start()
        try:
            options = DecodingOptions(beam_size=2, max_length=MAX_LENGTH)
            solo = [(await translator.translate([t], options))[0][0].tokens for t in texts[:2]]
            together = await translator.translate(texts[:size], options)
            return solo, [hyps[0].tokens for hyps in together]
        finally:
            await translator.stop()

    solo, together = asyncio.run(scenario())
    assert on_loop[:5] == [("encode", True), ("decode", True)] * 2 + [("encode", False)]
    assert together[:2] == solo


def test_the_codec_gives_the_same_ids_and_texts_text_by_text_and_batched(exported) -> None:
    root, _ = exported
    codec = _translator(root / "model_repository", "transformer").codec
    texts = texts_of_mixed_lengths(16, seed=3)
    ids = codec.encode(texts, batched=True)
    assert codec.encode(texts, batched=False) == ids
    hypotheses = [[1, *row, 2, 0, 0] for row in ids]  # BOS, ids, EOS, padding
    assert codec.decode(hypotheses, batched=False) == codec.decode(hypotheses, batched=True)
    assert codec.decode([], batched=False) == codec.decode([], batched=True) == []


@pytest.mark.parametrize("scores", [False, True])
def test_the_translate_response_written_directly_is_what_its_documented_model_would_send(scores) -> None:
    from serving.decoding.translator import Translation
    from serving.protocol.translate import TranslateResponse, response_json

    results = [
        [Translation("vingt et un", [5, 6, 2], -1.25, -0.4166), Translation("vingt", [5, 2], -3.5, -1.75)],
        [Translation('é ü — 漢字 "q" \\', [7, 2], float("-inf"), float("nan"))],
    ]
    written = json.loads(response_json("transformer", results, scores).body)
    hypotheses = [
        [
            {"text": h.text, **({"score": h.score, "normalized_score": h.normalized_score} if scores else {})}
            for h in hyps
        ]
        for hyps in results
    ]
    documented = TranslateResponse.model_validate(
        {"model": "transformer", "translations": [{"hypotheses": hyps} for hyps in hypotheses]}
    )
    assert written == json.loads(documented.model_dump_json(exclude_none=True))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names in /proc are Linux's")
def test_the_decode_threads_carry_their_names_to_the_os(gateway) -> None:
    """``top -H``, ``ps -L`` and bench.frontend_cost tell the decode threads from the event loop."""
    import threading

    assert (
        _post(gateway, "transformer", {"texts": ["un"], "beam_size": 2}).status_code == 200
    )  # its thread ran
    decode = [t for t in threading.enumerate() if t.name.startswith("kiln-decode-transformer")]
    assert decode
    for thread in decode:
        os_name = Path(f"/proc/self/task/{thread.native_id}/comm").read_text().strip()
        assert os_name.startswith("kdec")  # kdec<n>.<worker>-transformer, cut to 15 bytes
        assert "transformer".startswith(os_name.partition("-")[2])


def test_the_echo_submit_answers_each_text_with_its_source_after_checking_the_options(
    exported, gateway, monkeypatch
) -> None:
    """bench.frontend_cost's gateway without a decode side: the route, tokenizer and answer as served,
    the options refused as the real scheduler refuses them."""
    from bench.frontend_cost import echo_submit
    from serving.decoding.scheduler import DecodingScheduler

    root, _ = exported
    translator = _translator(root / "model_repository", "transformer")
    texts = texts_of_mixed_lengths(3, seed=11)
    echoed = [
        translator.codec.decode([ids + [translator.spec.eos_id]])[0] for ids in translator.source_ids(texts)
    ]
    monkeypatch.setattr(DecodingScheduler, "submit", echo_submit())
    got = [_post(gateway, "transformer", {"texts": [t], "beam_size": 3, "n_best": 2}) for t in texts]
    assert [[h["text"] for h in r.json()["translations"][0]["hypotheses"]] for r in got] == [
        [e, e] for e in echoed
    ]
    refused = _post(gateway, "transformer", {"texts": ["un"], "beam_size": 3, "max_length": 100})
    assert refused.status_code == 422 and "max_length" in refused.text  # the model's 64 positions


def test_the_front_end_cost_runs_read_each_threads_cpu_from_a_gateway_process(exported, tmp_path) -> None:
    """bench.frontend_cost: the real gateway spends decode-thread CPU, the echoing ones none; every run
    counts its requests and the event loop's CPU (speed itself is never asserted)."""
    from bench.frontend_cost import MODES, compare, thread_cpu

    root, _ = exported
    texts = texts_of_mixed_lengths(6, seed=12)
    costs = compare(root / "model_repository", "transformer", texts, concurrency=2, rounds=2, out=tmp_path)
    assert [c.mode for c in costs] == list(MODES)
    real, paced, instant = costs
    assert all(c.requests == 12 and c.per_s > 0 and c.loop_ms > 0 and c.client_ms >= 0 for c in costs)
    assert (
        real.decode_ms > 0
        and paced.decode_ms < real.decode_ms / 10
        and instant.decode_ms < real.decode_ms / 10
    )
    assert set(thread_cpu(os.getpid())) == {"loop", "decode", "other"}


@st.composite
def translate_requests(draw):
    """A KServe gRPC translate request with its model, texts (valid, empty, not UTF-8, too many),
    shape and decoding parameters (every parameter kind, in and out of bounds) generated."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(
        model_name=draw(st.sampled_from([*sorted(TRANSLATORS), "transformer_decoder", "nope"]))
    )
    texts = draw(
        st.lists(
            st.one_of(
                st.sampled_from([b"twelve", b"one hundred and three", b"", b" ", b"\xff\xfe", "é".encode()]),
                st.text(max_size=12).map(lambda t: t.encode("utf-8", "surrogatepass")),
            ),
            max_size=4,
        )
    )
    name = draw(st.sampled_from(["text", "text", "text", "images"]))
    tensor = request.inputs.add(name=name, datatype=draw(st.sampled_from(["BYTES", "BYTES", "UINT8"])))
    tensor.shape.extend(
        draw(st.sampled_from([[len(texts), 1], [len(texts)], [1, len(texts)], [len(texts) + 1, 1]]))
    )
    tensor.contents.bytes_contents.extend(texts)
    for key in draw(
        st.lists(
            st.sampled_from(["beam_size", "n_best", "max_length", "alpha", "length_penalty", "timeout"]),
            max_size=3,
            unique=True,
        )
    ):
        kind, value = draw(
            st.sampled_from(
                [
                    ("int64_param", st.integers(-2, 300)),
                    ("double_param", st.one_of(st.sampled_from([2.0, 2.5, 1e300]), st.floats())),
                    ("string_param", st.sampled_from(["3", "wide", "gnmt", "none", "-1", ""])),
                    ("bool_param", st.booleans()),
                ]
            )
        )
        setattr(request.parameters[key], kind, draw(value))
    return request


def test_generated_grpc_translate_requests_are_answered_or_refused_as_client_errors(gateway) -> None:
    """Hypothesis (derandomized): KServe gRPC translate requests with generated texts, shapes and
    decoding parameters are answered with one row of translations a text, or refused with a client's
    code and a message (a too-short timeout may expire: DEADLINE_EXCEEDED); never UNKNOWN or INTERNAL,
    and the gateway still translates afterwards."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    allowed = {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
    seen: dict[str, int] = {}
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        @wire_fuzz_settings(150)
        @given(translate_requests())
        def answered_or_refused(request):
            response = infer_or_refusal(stub, request, allowed, seen, timeout=120)
            if response is not None:
                rows = response.outputs[0].shape[0]
                assert rows == len(request.inputs[0].contents.bytes_contents) > 0, (response, request)

        answered_or_refused()
        assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=60).ready
    print(f"generated gRPC translate requests by outcome: {seen}")
    assert seen.get("OK", 0) > 0 and seen.get("INVALID_ARGUMENT", 0) > 0, seen
    assert _post(gateway, "transformer", {"texts": ["twelve"], "max_length": 10}).status_code == 200
