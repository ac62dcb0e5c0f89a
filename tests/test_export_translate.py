"""Export of every registered translator: encoder/decoder ONNX parity and beam search over ONNX."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.pipeline import export_checkpoint
from export.quantize import TranslationGate, gemms_as_matmuls, weight_matmuls
from export.translator_parity import long_decoder_cases, long_encoder_cases
from export.triton_config import parse_pbtxt
from serving.decoding.native import FUSED_GRAPH
from training.checkpoint import make_checkpoint, save_checkpoint
from training.models import build_model, list_models

TRANSLATORS = list_models("translate")
SMALL: dict[str, dict] = {
    "transformer": {"d_model": 16, "heads": 2, "ffn_dim": 32, "encoder_layers": 1, "decoder_layers": 2},
    "gru_attention": {
        "embed_dim": 8,
        "hidden_size": 16,
        "attention_dim": 16,
        "encoder_layers": 1,
        "decoder_layers": 1,
    },
    "lstm_attention": {
        "embed_dim": 8,
        "hidden_size": 16,
        "attention_dim": 16,
        "encoder_layers": 1,
        "decoder_layers": 1,
    },
}
VOCAB = 40
SENTENCES = [[5, 9, 12], [7, 8, 20, 31, 4, 6], [10], [33, 21, 17, 8]]


def test_every_registered_translator_has_small_export_settings():
    missing = sorted(set(TRANSLATORS) - set(SMALL))
    assert not missing, f"add export test settings for {missing}"


def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, models

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, VOCAB)}}
    return Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).to_str()


def _translator_checkpoint(name: str, root: Path, max_positions: int = 32) -> Path:
    args = {
        "src_vocab_size": VOCAB,
        "tgt_vocab_size": VOCAB,
        "max_positions": max_positions,
        "dropout": 0.1,
        **SMALL[name],
    }
    torch.manual_seed(0)
    model = build_model(name, **args)
    tok = _tokenizer_json()
    tokenizers = {"source": tok, "target": tok, "shared": True}
    ckpt = make_checkpoint(
        task="translate",
        model_name=name,
        model_args=args,
        model=model,
        train_config={},
        metrics={},
        tokenizers=tokenizers,
    )
    return save_checkpoint(ckpt, root / f"{name}.pt")


@pytest.fixture(
    scope="module",
    params=TRANSLATORS or [pytest.param(None, marks=pytest.mark.skip(reason="no translator registered yet"))],
)
def exported(request, tmp_path_factory) -> tuple[str, Path, list]:
    name = request.param
    root = tmp_path_factory.mktemp(name)
    path = _translator_checkpoint(name, root)
    return name, root / "repo", export_checkpoint(path, root / "repo", validation=SENTENCES, tensorrt="off")


def test_encoder_and_decoder_graphs_match_pytorch_at_several_batch_sizes_and_lengths(exported):
    name, repo, results = exported
    assert [r.status for r in results] == ["written"] * 3
    for entry in (f"{name}_encoder", f"{name}_decoder"):
        meta = json.loads((repo / entry / "kiln.json").read_text())
        assert meta["parity"]["passed"]
        checks = meta["parity"]["checks"]
        roles = {i["role"] for i in meta["step_spec"]["decoder"]["inputs"]}
        indexed = entry.endswith("_decoder") and "row_place" in roles
        assert indexed == (entry == "transformer_decoder")  # recurrent decoders: one row per sentence
        cases = long_decoder_cases if entry.endswith("_decoder") else long_encoder_cases
        long = cases(meta["step_spec"])  # up to the model's max_positions, on 2 rows
        assert len({tuple(sorted(c["sizes"].items())) for c in checks}) == (6 if indexed else 3) + len(long)
        assert max(d["max_abs_diff"] for d in meta["parity"]["outputs"].values()) <= 1e-4
        assert {c["sizes"]["batch"] for c in checks if "sentences" not in c["sizes"]} == {1, 2, 7, 64}
        # indexed rows: 8 rows over a store of 3 sentences, 12 over 5, 64 over 64, and an axis of the
        # store's own in the graph
        assert [
            (c["sizes"]["batch"], c["sizes"]["sentences"]) for c in checks if "sentences" in c["sizes"]
        ] == ([(8, 3), (12, 5), (64, 64)] if indexed else [])
        if indexed:
            graph = onnx.load(str(repo / entry / "1" / "model.onnx"), load_external_data=False).graph
            first = {i.name: i.type.tensor_type.shape.dim[0].dim_param for i in graph.input}
            assert first["cross_k_0"] == first["src_mask"] == "sentences"
            assert first["tokens"] == first["row_place"] == "batch"
        parse_pbtxt((repo / entry / "config.pbtxt").read_text())


def test_beam_search_over_onnx_equals_the_pytorch_reference(exported):
    name, repo, results = exported
    meta = json.loads((repo / name / "kiln.json").read_text())
    assert meta["parity"]["beam_agreement"] == 1.0
    assert meta["parity"]["beam_sentences"] == len(SENTENCES)


def _fused_graph_ops(exported, part: str) -> list[tuple[str, str]] | None:
    """The ops of ``<name>_<part>``'s fused-attention graph, after checking what its kiln.json records
    (written, parity against PyTorch at the entry's tolerance, beam search equal to model.onnx's) and
    that it has model.onnx's inputs and outputs; None (and checked absent) for the recurrent models."""
    name, repo, _ = exported
    meta = json.loads((repo / f"{name}_{part}" / "kiln.json").read_text())
    fused = repo / f"{name}_{part}" / "1" / FUSED_GRAPH
    if name != "transformer":
        assert "fused_step" not in meta and not fused.exists()
        return None
    step = meta["fused_step"]
    assert step["file"] == FUSED_GRAPH and step["refused"] is None and fused.is_file()
    assert step["parity"]["passed"] and step["parity"]["tolerance"] == meta["parity"]["tolerance"]
    assert max(d["max_abs_diff"] for d in step["parity"]["outputs"].values()) <= 1e-4
    assert step["beams"]["beam_agreement"] == 1.0 and step["beams"]["beam_sentences"] == len(SENTENCES)
    plain = onnx.load(str(fused.with_name("model.onnx")), load_external_data=False).graph
    graph = onnx.load(str(fused), load_external_data=False).graph
    assert [(i.name, i.type) for i in graph.input] == [(i.name, i.type) for i in plain.input]
    assert [o.name for o in graph.output] == [o.name for o in plain.output]
    return [(n.domain, n.op_type) for n in graph.node]


def test_the_transformer_decoder_gets_a_fused_attention_step_graph_proved_like_the_plain_one(exported):
    """Beside model.onnx, the Transformer's decoder entry holds the same step with each attention one
    kiln.ai node (what the gateway's decode workers run), checked against PyTorch at the decoder's
    tolerance and by beam search against model.onnx; the recurrent decoders have no such graph."""
    ops = _fused_graph_ops(exported, "decoder")
    if ops is None:
        return
    layers = SMALL["transformer"]["decoder_layers"]
    assert (
        ops.count(("kiln.ai", "StepAttentionQKV"))
        == ops.count(("kiln.ai", "IndexedCrossAttentionMasked"))
        == layers
    )
    assert ("", "Softmax") not in ops  # no attention left in plain ops
    # the operators read the boolean masks and give the cache entries: no mask arithmetic or reshape
    # left, and six products a layer (q|k|v as one, the self-attention's output, the cross-attention's
    # query and output, the two FFN products; the output projection is a MatMul)
    assert not {op for _, op in ops} & {"Where", "Unsqueeze", "Reshape", "Cast"}
    assert ops.count(("", "Gemm")) == 6 * layers
    # each sublayer's residual add and the norm after it: three a layer, the last into the final norm
    assert ops.count(("kiln.ai", "AddLayerNorm")) == 3 * layers
    assert ops.count(("", "LayerNormalization")) == 1  # the first layer's first, on the embeddings


def test_the_transformer_encoder_gets_a_fused_attention_graph_proved_like_the_plain_one(exported):
    """Beside model.onnx, the Transformer's encoder entry holds the same encoder with each layer's
    self-attention one kiln.ai node and each residual add with the norm after it another, checked
    against PyTorch at the encoder's tolerance and by beam search (with the plain decoder) against
    model.onnx; the recurrent encoders have no such graph."""
    ops = _fused_graph_ops(exported, "encoder")
    if ops is None:
        return
    layers = SMALL["transformer"]["encoder_layers"]
    assert ops.count(("kiln.ai", "EncoderSelfAttention")) == layers and ("", "Softmax") not in ops
    assert ops.count(("kiln.ai", "AddLayerNorm")) == 2 * layers  # the last into the encoder's norm
    assert ops.count(("", "LayerNormalization")) == 1  # the first layer's first, on the embeddings
    assert ops.count(("", "NonZero")) == 1  # its products run on the real positions only


def test_the_fused_encoder_graph_gives_the_plain_graphs_outputs_for_sources_of_mixed_lengths(exported):
    """The fused encoder computes only the real positions of a padded batch: its outputs are the plain
    graph's, and both are zero at padded positions."""
    import onnxruntime as ort

    from serving.decoding import native

    if _fused_graph_ops(exported, "encoder") is None:  # a recurrent encoder: none (checked there)
        return
    name, repo, _ = exported
    fused = repo / f"{name}_encoder" / "1" / FUSED_GRAPH
    options = ort.SessionOptions()
    assert native.register_kernels(options)
    src = np.zeros((3, 9), dtype=np.int64)
    for i, length in enumerate((9, 3, 6)):
        src[i, :length] = np.arange(5, 5 + length)
        src[i, length - 1] = 2
    plain = ort.InferenceSession(str(fused.with_name("model.onnx")), providers=["CPUExecutionProvider"])
    names = [o.name for o in plain.get_outputs()]
    want = dict(zip(names, plain.run(None, {"src_ids": src}), strict=True))
    got = dict(
        zip(names, ort.InferenceSession(str(fused), options).run(names, {"src_ids": src}), strict=True)
    )
    padded = src == 0
    for output in [n for n in names if n.startswith("cross_")]:
        np.testing.assert_allclose(got[output], want[output], atol=1e-5, rtol=0)
        for values in (got[output], want[output]):  # (B, h, S, hd)
            assert not values.transpose(0, 2, 1, 3)[padded].any()
    assert np.array_equal(got["src_mask"], ~padded)


def test_translator_entry_carries_tokenizers_step_spec_and_python_config(exported):
    name, repo, _ = exported
    meta = json.loads((repo / name / "kiln.json").read_text())
    assert meta["task"] == "translate"
    assert (
        meta["translator"]["encoder"] == f"{name}_encoder"
        and meta["translator"]["decoder"] == f"{name}_decoder"
    )
    assert meta["translator"]["step_spec"]["eos_id"] == 2
    assert (repo / name / meta["translator"]["source_tokenizer"]).is_file()
    config = parse_pbtxt((repo / name / "config.pbtxt").read_text())
    assert config.backend == "python" and config.max_batch_size > 0
    assert [i.name for i in config.input] == ["text"] and [o.name for o in config.output] == [
        "translation",
        "score",
        "raw_score",
    ]
    assert [(o["name"], o["datatype"], o["dims"]) for o in meta["outputs"]] == [  # as its config says
        ("translation", "BYTES", [-1, -1]),
        ("score", "FP32", [-1, -1]),
        ("raw_score", "FP32", [-1, -1]),
    ]
    assert [(i["name"], i["datatype"], i["dims"]) for i in meta["inputs"]] == [("text", "BYTES", [-1, 1])]
    dec = json.loads((repo / f"{name}_decoder" / "kiln.json").read_text())
    assert dec["task"] == "translate_decoder" and dec["step_spec"] == meta["translator"]["step_spec"]


def test_translator_re_export_is_skipped_when_nothing_changed(exported):
    name, repo, _ = exported
    ckpt = repo.parent / f"{name}.pt"
    again = export_checkpoint(ckpt, repo, validation=SENTENCES, tensorrt="off")
    assert [r.status for r in again] == ["up to date"] * 3


@pytest.fixture(scope="module")
def int8_exported(tmp_path_factory) -> tuple[Path, list]:
    """The tiny transformer with an int8 decoder; a random model's int8 beams differ from fp32 on some of
    the 4 sentences, so the gate's thresholds are opened here (the gate's own test uses the real ones)."""
    root = tmp_path_factory.mktemp("int8")
    path = _translator_checkpoint("transformer", root)
    opened = {"int8_min_agreement": 0.0, "int8_max_bleu_drop": 100.0}
    results = export_checkpoint(
        path, root / "repo", validation=SENTENCES, tensorrt="off", precisions=("fp32", "int8"), **opened
    )
    return root / "repo", results


def test_exporting_fp32_alone_over_todays_int8_entries_reports_none_of_them_stale(int8_exported, tmp_path):
    """Entries of the same checkpoint this run does not produce are reported stale only when an older
    Kiln wrote them (pipeline.outdated_by): today's int8 entries, and their python entry's copies of
    the beam search modules, are current."""
    repo, _ = int8_exported
    shutil.copytree(repo, tmp_path / "repo")
    results = export_checkpoint(
        repo.parent / "transformer.pt", tmp_path / "repo", validation=SENTENCES, tensorrt="off"
    )
    assert [r.status for r in results] == ["up to date"] * 3, [
        (r.entry, r.status, r.message) for r in results
    ]


def test_int8_translator_entry_pairs_a_quantized_encoder_with_a_quantized_decoder(int8_exported):
    repo, results = int8_exported
    status = {r.entry: r.status for r in results}
    assert status["transformer_encoder_int8"] == status["transformer_decoder_int8"] == "written"
    assert status["transformer_int8"] == "written"
    meta = json.loads((repo / "transformer_int8" / "kiln.json").read_text())
    assert meta["task"] == "translate" and meta["precision"] == "int8"
    assert meta["translator"]["encoder"] == "transformer_encoder_int8"
    assert meta["translator"]["decoder"] == "transformer_decoder_int8"
    gate = meta["parity"]["int8_gate"]
    assert (
        gate["passed"]
        and gate["sentences"] == len(SENTENCES)
        and gate["bleu_reference"] == "fp32 translations"
    )
    dec = json.loads((repo / "transformer_decoder_int8" / "kiln.json").read_text())
    fp32 = json.loads((repo / "transformer_decoder" / "kiln.json").read_text())
    assert dec["task"] == "translate_decoder" and dec["precision"] == "int8"
    assert (dec["inputs"], dec["outputs"], dec["step_spec"]) == (
        fp32["inputs"],
        fp32["outputs"],
        fp32["step_spec"],
    )
    graph = onnx.load(str(repo / "transformer_decoder_int8" / "1" / "model.onnx"))
    assert "MatMulInteger" in {n.op_type for n in graph.graph.node}
    fused = onnx.load(str(repo / "transformer_decoder_int8" / "1" / FUSED_GRAPH))
    ops = [n.op_type for n in fused.graph.node]
    assert {"MatMulInteger", "StepAttentionQKV", "IndexedCrossAttentionMasked", "AddLayerNorm"} <= set(ops)
    # quantized from the twin whose q, k and v are three products: each scaled as the plain graph's
    assert ops.count("Concat") == SMALL["transformer"]["decoder_layers"]
    assert dec["fused_step"]["refused"] is None and dec["fused_step"]["beams"]["beam_agreement"] == 1.0
    enc = json.loads((repo / "transformer_encoder_int8" / "kiln.json").read_text())
    fp32 = json.loads((repo / "transformer_encoder" / "kiln.json").read_text())
    assert enc["task"] == "translate_encoder" and enc["precision"] == "int8"
    assert (enc["inputs"], enc["outputs"]) == (fp32["inputs"], fp32["outputs"])
    graph = onnx.load(str(repo / "transformer_encoder_int8" / "1" / "model.onnx"))
    assert "MatMulInteger" in {n.op_type for n in graph.graph.node}
    fused = onnx.load(str(repo / "transformer_encoder_int8" / "1" / FUSED_GRAPH))
    assert {"MatMulInteger", "EncoderSelfAttention", "AddLayerNorm"} <= {n.op_type for n in fused.graph.node}
    # quantized from the padded fused encoder: its dynamic scales span the rows the plain graph's do
    assert "NonZero" not in {n.op_type for n in fused.graph.node}
    assert enc["fused_step"]["refused"] is None and enc["fused_step"]["beams"]["beam_agreement"] == 1.0
    config = parse_pbtxt((repo / "transformer_int8" / "config.pbtxt").read_text())
    assert config.parameters["encoder"].string_value == "transformer_encoder_int8"
    assert config.parameters["decoder"].string_value == "transformer_decoder_int8"


def test_the_gateway_serves_the_int8_translator_entry(int8_exported):
    import httpx

    from serving.app import create_app
    from serving.settings import Settings
    from tests.repo_fixtures import LiveServer, held_grpc_port

    repo, _ = int8_exported
    with held_grpc_port() as grpc_port:
        app = create_app(Settings(model_repository=repo, grpc_port=grpc_port, reuse_port=True))
        with LiveServer(app) as server:
            body = {"texts": ["w5 w9 w12", "w10"], "beam_size": 2, "max_length": 8}
            url = f"http://{server.url}/v1/models/transformer_int8/translate"
            response = httpx.post(url, json=body, timeout=60.0)
    assert response.status_code == 200, response.text
    assert len(response.json()["translations"]) == 2


def test_int8_gate_refuses_drifted_entries_removes_them_and_is_remembered_until_its_settings_change(
    int8_exported, tmp_path
):
    repo, _ = int8_exported
    shutil.copytree(repo, tmp_path / "repo")  # starts with int8 entries written by an earlier export
    gated = []

    def drifted(gate: TranslationGate) -> TranslationGate:  # pretend 1% of sentences changed
        gated.append(gate)
        return dataclasses.replace(gate, agreement=0.99)

    def export(**kw) -> list:
        options = {"precisions": ("fp32", "int8"), "tensorrt": "off", "accuracy_hook": drifted, **kw}
        return export_checkpoint(
            repo.parent / "transformer.pt", tmp_path / "repo", validation=SENTENCES, **options
        )

    first = export()  # the real thresholds differ from the fixture's: int8 entries stale, then refused
    assert {r.entry: r.status for r in first if r.precision == "int8"} == {
        "transformer_encoder_int8": "rejected",
        "transformer_decoder_int8": "rejected",
        "transformer_int8": "rejected",
    }
    assert "agreement 99.00% (need >= 99.50%)" in next(r for r in first if r.precision == "int8").message
    for entry in ("transformer_int8", "transformer_decoder_int8", "transformer_encoder_int8"):
        assert not (tmp_path / "repo" / entry).exists()  # the stale int8 entries are removed
    assert (tmp_path / "repo" / "transformer").is_dir()
    again = export()
    assert [r.status for r in again] == ["up to date"] * 6 and len(gated) == 1
    refused = [r for r in again if r.precision == "int8"]
    assert len(refused) == 3 and all("refused by its gate" in r.message and r.path is None for r in refused)
    assert not (tmp_path / "repo" / "transformer_int8").exists()
    # --force rebuilds whatever a refusal says (results.needs_rebuild; test_export_classify's force test)
    opened = export(int8_min_agreement=0.0, int8_max_bleu_drop=100.0, accuracy_hook=None)
    assert [r.status for r in opened] == ["written"] * 6  # other gate settings: re-gated, passes this time
    assert not (tmp_path / "repo" / ".kiln_refused.json").exists()


@pytest.mark.parametrize(
    ("agreement", "bleu_int8", "passed"),
    [(1.0, 30.0, True), (0.995, 29.8, True), (0.994, 30.0, False), (1.0, 29.79, False)],
)
def test_translation_gate_needs_995_permille_identical_and_at_most_02_bleu_drop(agreement, bleu_int8, passed):
    gate = TranslationGate(agreement, 600, bleu_fp32=30.0, bleu_int8=bleu_int8, bleu_reference="references")
    assert gate.passed is passed
    assert (gate.reason() == "") is passed
    assert gate.as_dict()["passed"] is passed


@pytest.mark.parametrize("trans_b, bias", [(1, True), (0, True), (1, False)])
def test_gemms_with_constant_weights_become_matmuls_that_compute_the_same(trans_b, bias, tmp_path):
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((5, 3) if trans_b else (3, 5)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b"))
        inputs.append("b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", inputs, ["y"], name="proj", transB=trans_b)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 5])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((4, 3)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert gemms_as_matmuls(model) == 1
    assert [n.op_type for n in model.graph.node] == (["MatMul", "Add"] if bias else ["MatMul"])
    assert weight_matmuls(model) == ["proj"]
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
