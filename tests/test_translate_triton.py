"""The real Triton server (nvidia-pytriton) translates through the exported ``<name>`` python model
exactly like the gateway does: with the encoder's and decoder's graphs in its own sessions (``steps``
``in_process``, what a CPU export writes) and through BLS calls to ``<name>_encoder`` /
``<name>_decoder`` (``bls``, what a GPU export writes)."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from serving.triton import TritonServer, find_triton
from serving.triton.install import triton_python_env
from tests.repo_fixtures import LiveServer, held_grpc_port
from tests.test_translate_serving import _solo_tokens, _target_tokenizer, exported_translators

pytestmark = pytest.mark.triton
NAME = "transformer"
MAX_LENGTH = 16


@pytest.fixture(scope="module")
def exported(exported_translator_models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_translators(
        exported_translator_models, tmp_path_factory, "triton-translators", (NAME,)
    ).parent


@pytest.fixture(scope="module")
def triton(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    yield from triton_serving(exported / "model_repository", tmp_path_factory)


def triton_serving(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """The real Triton serving ``repository`` while the caller's fixture lasts, or the test skipped
    saying what is missing (its binary, or the numpy-1 environment its python models run in)."""
    if find_triton() is None:
        pytest.skip("the tritonserver binary from nvidia-pytriton is not installed")
    if triton_python_env() / "bin" / "python" == Path(sys.prefix) / "bin" / "python":
        pytest.skip(
            "no separate Triton python environment with numpy<2 (make setup creates .venv/triton-env)"
        )
    with TritonServer(repository, tmp_path_factory.mktemp("triton")) as server:
        yield server


def _infer(module, url: str, texts: list[str], **parameters) -> list[str]:
    client = module.InferenceServerClient(url)
    try:
        tensor = module.InferInput("text", [len(texts), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
        result = client.infer(
            NAME, [tensor], outputs=[module.InferRequestedOutput("translation")], parameters=parameters
        )
        return [v.decode() for v in result.as_numpy("translation").reshape(-1)]
    finally:
        client.close()


def _scored(url: str, texts: list[str], **parameters) -> list[tuple[list[str], list[float], list[float]]]:
    """Triton's ``<name>`` answer for each text: n_best (texts, normalized scores, raw scores)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        tensor = httpclient.InferInput("text", [len(texts), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
        result = client.infer(NAME, [tensor], parameters=parameters)  # none named: every output
        out = [result.as_numpy(k).tolist() for k in ("translation", "score", "raw_score")]
        return [([t.decode() for t in row], norms, raws) for row, norms, raws in zip(*out, strict=True)]
    finally:
        client.close()


# the last: a special token's text typed in a sentence, read as text by the gateway and Triton alike
TEXTS = [
    "three hundred and twelve",
    "forty-two",
    "the 3rd house",
    "seven thousand two hundred cars",
    "nine",
    "one </s> two",
]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_translates_like_the_gateway(triton: TritonServer, exported: Path, protocol: str) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    module, url = (httpclient, triton.http_url) if protocol == "http" else (grpcclient, triton.grpc_url)
    got = _infer(module, url, TEXTS, beam_size=4, max_length=MAX_LENGTH)
    tokens = asyncio.run(_solo_tokens(exported / "model_repository", NAME, TEXTS, max_length=MAX_LENGTH))
    target = _target_tokenizer(exported, NAME)
    assert got == [target.decode([t for t in ids if t > 3]) for ids in tokens]


def _decoder_runs(url: str) -> int:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(f"{NAME}_decoder")["model_stats"]
    finally:
        client.close()
    return sum(int(s.get("inference_count", 0)) for s in stats)


def test_the_exported_model_decodes_in_its_own_process_without_bls_calls(triton: TritonServer) -> None:
    import tritonclient.http as httpclient

    before = _decoder_runs(triton.http_url)
    assert _infer(httpclient, triton.http_url, TEXTS[:2], beam_size=4, max_length=MAX_LENGTH)
    assert _decoder_runs(triton.http_url) == before  # no step went through <name>_decoder


def test_bls_steps_translate_the_same_through_the_decoder_entry(
    triton: TritonServer, exported: Path, tmp_path: Path
) -> None:
    """``steps: bls`` (a GPU export's): every step a BLS call to ``<name>_decoder``, the same answers."""
    import tritonclient.http as httpclient

    repository = tmp_path / "model_repository"
    shutil.copytree(exported / "model_repository", repository)
    config = repository / NAME / "config.pbtxt"
    text = config.read_text()
    assert 'string_value: "in_process"' in text
    config.write_text(text.replace('string_value: "in_process"', 'string_value: "bls"'))
    expected = _infer(httpclient, triton.http_url, TEXTS, beam_size=4, max_length=MAX_LENGTH)
    with TritonServer(repository, tmp_path / "triton") as bls:
        assert _infer(httpclient, bls.http_url, TEXTS, beam_size=4, max_length=MAX_LENGTH) == expected
        assert _decoder_runs(bls.http_url) > 0


def test_triton_honours_decoding_parameters_and_n_best(triton: TritonServer) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(triton.http_url)
    tensor = httpclient.InferInput("text", [2, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"twelve"], [b"one hundred"]], dtype=np.object_))
    result = client.infer(NAME, [tensor], parameters={"beam_size": 3, "n_best": 3, "max_length": 4})
    out, score = result.as_numpy("translation"), result.as_numpy("score")  # none named: both (KServe v2)
    client.close()
    assert out.shape == (2, 3) and score.shape == (2, 3) and score.dtype == np.float32
    assert all(list(row) == sorted(row, reverse=True) and row[0] < 0 for row in score)  # best first
    assert all(len(v.decode().split()) <= 3 for v in out.reshape(-1))  # max_length 4 = at most 3 words + EOS


@pytest.fixture(scope="module")
def gateway(exported: Path) -> Iterator[LiveServer]:
    """The gateway (embedded ONNX Runtime) over the repository Triton serves, over HTTP and gRPC."""
    from serving.app import create_app
    from serving.settings import Settings

    with held_grpc_port() as grpc_port:
        settings = Settings(
            model_repository=exported / "model_repository", grpc_port=grpc_port, reuse_port=True
        )
        with LiveServer(create_app(settings)) as server:
            server.grpc_url = f"127.0.0.1:{grpc_port}"
            yield server


def _answer(module, url: str, options: dict) -> tuple[list, list[str], dict[str, np.ndarray]]:
    """(``<name>``'s metadata outputs, the outputs an infer naming none answers, their arrays)."""
    with module.InferenceServerClient(url) as client:
        meta = client.get_model_metadata(NAME)
        tensor = module.InferInput("text", [3, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[t.encode()] for t in TEXTS[:3]], dtype=np.object_))
        result = client.infer(NAME, [tensor], parameters=options)
    if isinstance(meta, dict):  # HTTP: JSON
        declared = [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]]
        names = [o["name"] for o in result.get_response()["outputs"]]
    else:
        declared = [(t.name, t.datatype, list(t.shape)) for t in meta.outputs]
        names = [o.name for o in result.get_response().outputs]
    return declared, names, {name: result.as_numpy(name) for name in names}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("max_length", [1, MAX_LENGTH])  # 1: one hypothesis found, two padded
def test_triton_and_the_gateway_declare_and_answer_the_same_translation_and_score(
    triton: TritonServer, gateway: LiveServer, protocol: str, max_length: int
) -> None:
    """Triton's ``<name>`` declared and answered ``translation`` alone, one hypothesis a text: a
    tritonclient user now gets the gateway's outputs, shapes, n-best hypotheses and scores from either."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    options = {"beam_size": 3, "n_best": 3, "max_length": max_length}
    if protocol == "http":
        servers = [(httpclient, triton.http_url), (httpclient, gateway.url)]
    else:
        servers = [(grpcclient, triton.grpc_url), (grpcclient, gateway.grpc_url)]
    (t_declared, t_names, t_out), (g_declared, g_names, g_out) = (_answer(m, u, options) for m, u in servers)
    scores = [("score", "FP32", [-1, -1]), ("raw_score", "FP32", [-1, -1])]
    assert t_declared == g_declared == [("translation", "BYTES", [-1, -1]), *scores]
    assert t_names == g_names == ["translation", "score", "raw_score"]  # none named: all, from either
    assert t_out["translation"].shape == t_out["score"].shape == t_out["raw_score"].shape == (3, 3)
    assert t_out["translation"].tolist() == g_out["translation"].tolist()  # [texts, n_best]
    for score in ("score", "raw_score"):
        assert t_out[score].dtype == g_out[score].dtype == np.float32
        np.testing.assert_allclose(t_out[score], g_out[score], rtol=1e-4)  # -inf where padded, in both
        assert np.isneginf(t_out[score][:, 1:]).all() == (max_length == 1)
    real = np.isfinite(t_out["raw_score"])
    assert (t_out["raw_score"][real] < 0).all() and real[:, 0].all()  # sums of log-probs, the best real


def test_triton_refuses_a_bad_beam_size_with_a_message(triton: TritonServer) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(triton.http_url)
    tensor = httpclient.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"twelve"]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="beam_size") as refused:
        client.infer(NAME, [tensor], parameters={"beam_size": 99})
    assert refused.value.status() == "400"  # the client's mistake (INVALID_ARG), as the gateway answers it
    with pytest.raises(InferenceServerException, match="beam_size"):  # read as the gateway reads it
        client.infer(NAME, [tensor], parameters={"beam_size": 2.5})
    client.close()


def test_triton_refuses_a_token_id_outside_the_vocabulary_with_a_400_and_serves_the_next(
    triton: TritonServer,
) -> None:
    """The python flavour's ONNX model answers ONNX Runtime's INVALID_ARGUMENT as INVALID_ARG (400),
    as Triton's onnxruntime backend and the gateway do, and the entry keeps serving."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(triton.http_url)

    def encode(ids: list[int]):
        tensor = httpclient.InferInput("src_ids", [1, len(ids)], "INT64")
        tensor.set_data_from_numpy(np.array([ids], dtype=np.int64))
        return client.infer(f"{NAME}_encoder", [tensor])

    try:
        with pytest.raises(InferenceServerException, match="onnxruntime") as refused:
            encode([1, 10**9, 2])
        assert refused.value.status() == "400", refused.value
        assert encode([1, 5, 2]).as_numpy("src_mask").shape == (1, 3)
    finally:
        client.close()


@pytest.mark.parametrize("mode", ["scheduler", "triton"])
def test_the_gateway_with_the_triton_backend_translates_like_triton_in_both_modes(
    triton: TritonServer, exported: Path, mode: str
) -> None:
    """scheduler: the gateway's beam search over Triton's encoder/decoder; triton: Triton's <name> model."""
    import tritonclient.http as httpclient
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings

    direct = _infer(httpclient, triton.http_url, TEXTS, beam_size=4, max_length=MAX_LENGTH)
    settings = Settings(
        model_repository=exported / "model_repository",
        backend="triton",
        triton_url=triton.grpc_url,
        grpc_port=0,
        triton_translate=mode,
    )
    n_best = _infer(httpclient, triton.http_url, TEXTS, beam_size=4, n_best=3, max_length=MAX_LENGTH)
    with TestClient(create_app(settings)) as client:
        resp = client.post(
            f"/v1/models/{NAME}/translate", json={"texts": TEXTS, "beam_size": 4, "max_length": MAX_LENGTH}
        )
        several = client.post(
            f"/v1/models/{NAME}/translate",
            json={"texts": TEXTS, "beam_size": 4, "n_best": 3, "max_length": MAX_LENGTH},
        )
        scored = client.post(
            f"/v1/models/{NAME}/translate",
            json={
                "texts": TEXTS,
                "beam_size": 4,
                "n_best": 3,
                "max_length": MAX_LENGTH,
                "return_scores": True,
            },
        )
        metrics = client.get("/metrics").text
        stats = {s["name"]: s for s in client.get("/v2/models/stats").json()["model_stats"]}
    assert resp.status_code == 200, resp.text
    assert [t["hypotheses"][0]["text"] for t in resp.json()["translations"]] == direct
    assert several.status_code == 200, several.text  # n_best through Triton's <name> too (was a 422)
    got = [[h["text"] for h in t["hypotheses"]] for t in several.json()["translations"]]
    assert got == [n_best[3 * i : 3 * i + len(hyps)] for i, hyps in enumerate(got)]
    assert all(1 <= len(hyps) <= 3 for hyps in got)
    assert scored.status_code == 200, scored.text  # return_scores through Triton's <name> too (was a 422)
    want = _scored(triton.http_url, TEXTS, beam_size=4, n_best=3, max_length=MAX_LENGTH)
    for hyps, (texts, norms, raws) in zip(scored.json()["translations"], want, strict=True):
        assert [h["text"] for h in hyps["hypotheses"]] == texts[: len(hyps["hypotheses"])]
        for h, norm, raw in zip(hyps["hypotheses"], norms, raws, strict=False):
            assert h["normalized_score"] == pytest.approx(norm, rel=1e-4)
            assert h["score"] == pytest.approx(raw, rel=1e-4) and h["score"] < 0
    steps = [ln for ln in metrics.splitlines() if ln.startswith("kiln_decoder_steps_total")]
    assert bool(steps and float(steps[0].split()[-1]) > 0) == (mode == "scheduler")
    # statistics: the batching figures of whoever ran it; the gateway's decoder steps in scheduler mode,
    # Triton's of the entries that ran them (its <name> model, else the decoder the gateway stepped)
    if mode == "scheduler":
        assert stats[NAME]["execution_count"] == float(steps[0].split()[-1])
        assert stats[NAME]["inference_stats"]["queue"]["count"] == 3  # each request's wait to join
        assert stats[f"{NAME}_decoder"]["execution_count"] > 0
    else:
        assert stats[NAME]["execution_count"] > 0 and stats[NAME]["inference_stats"]["queue"]["count"] >= 3
    assert stats[NAME]["inference_stats"]["fail"]["count"] == 0
