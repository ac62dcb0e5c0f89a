"""Export of every registered classifier: freeze, ONNX without BN/Dropout, parity, precisions, repository."""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from export import quantize
from export.classifier import ImageData
from export.freeze import ChannelAffine, freeze, training_only_modules
from export.onnx_export import forbidden_nodes
from export.parity import ParityError
from export.pipeline import ExportOptions, export_checkpoint
from export.quantize import AgreementGate, GateResult
from export.repository import RepositoryError
from export.triton_config import parse_pbtxt
from kiln.versions import EXPORT_VERSION, current_version
from tests.classifier_exports import (
    SIZE,
    SMALL,
    randomize_batchnorm,
    small_model,
    tiny_images,
    write_checkpoint,
)
from training.models import list_models


def test_every_registered_classifier_has_small_export_settings():
    missing = sorted(set(list_models("classify")) - set(SMALL))
    assert not missing, f"add export test settings for {missing}"


@pytest.fixture(scope="module")
def exported(exported_classifiers) -> dict[str, tuple[Path, list]]:
    """Every registered classifier exported once (fp32) into one repository: name -> (repository, results)."""
    repo, results = exported_classifiers
    return {name: (repo, result) for name, result in results.items()}


@pytest.mark.parametrize("name", list_models("classify"))
def test_freezing_keeps_outputs_and_leaves_no_batchnorm_or_dropout(name):
    model, _ = small_model(name)
    x = torch.randn(3, 1, SIZE, SIZE)
    frozen, report = freeze(model, (x,))
    assert training_only_modules(frozen) == []
    with torch.no_grad():
        reference = model.eval()(x)
        reference = reference if isinstance(reference, torch.Tensor) else reference[0]
        bound = 1e-4 * max(1.0, reference.abs().max().item())  # float32 rounding of large logits
        assert (frozen(x) - reference).abs().max() <= bound
    assert report.max_abs_diff <= bound
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        assert report.folded or report.affine


@pytest.mark.parametrize("name", list_models("classify"))
def test_exported_graph_has_no_batchnorm_or_dropout_node_and_matches_pytorch(exported, name):
    repo, results = exported[name]
    fp32 = next(r for r in results if r.entry == name)
    assert fp32.status == "written"
    graph = onnx.load(str(repo / name / "1" / "model.onnx"))
    assert forbidden_nodes(graph) == []
    meta = json.loads((repo / name / "kiln.json").read_text())
    sizes = [c["sizes"]["batch"] for c in meta["parity"]["checks"]]
    assert sizes == [1, 7, 64]
    assert meta["parity"]["passed"] and meta["parity"]["outputs"]["probabilities"]["max_abs_diff"] <= 1e-4
    assert meta["parity"]["top1_agreement"] == 1.0
    parse_pbtxt((repo / name / "config.pbtxt").read_text())


def test_a_batchnorm_without_a_foldable_predecessor_becomes_a_channel_affine():
    model = randomize_batchnorm(
        nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3), nn.Dropout(0.3))
    )
    x = torch.randn(2, 3, 8, 8)
    frozen, report = freeze(model, (x,))
    assert isinstance(frozen[0], ChannelAffine) and report.affine == ["0"]
    assert isinstance(frozen[3], nn.Identity) and report.dropouts == ["3"]
    assert report.max_abs_diff <= 1e-5


def test_conv_followed_by_batchnorm_is_folded_into_the_conv():
    model = randomize_batchnorm(
        nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 6), nn.BatchNorm1d(6)
        )
    )
    frozen, report = freeze(model, (torch.randn(2, 3, 8, 8),))
    assert report.folded == [("0", "1"), ("3", "4")]
    assert isinstance(frozen[1], nn.Identity) and isinstance(frozen[4], nn.Identity)


def test_kiln_json_describes_the_entry(exported):
    repo, _ = exported["lenet"]
    meta = json.loads((repo / "lenet" / "kiln.json").read_text())
    assert meta["task"] == "classify" and meta["name"] == "lenet" and meta["precision"] == "fp32"
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "dims": [-1, SIZE, SIZE, 1]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities"]
    assert meta["preprocessing"]["layout"] == "NHWC" and meta["preprocessing"]["mean"] == [0.4]
    assert (repo / "lenet" / "labels.txt").read_text().splitlines() == [f"class_{i}" for i in range(5)]
    assert set(meta["artifacts"]) == {"1/model.onnx", "config.pbtxt", "labels.txt"}
    assert meta["source_checkpoint"]["sha256"]


def test_incremental_export_changes_nothing_and_force_rebuilds(tmp_path):
    ckpt = write_checkpoint(tmp_path, "lenet")
    repo = tmp_path / "repo"
    export_checkpoint(ckpt, repo, validation=tiny_images(), tensorrt="off")
    files = sorted(p for p in (repo / "lenet").rglob("*") if p.is_file())
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    again = export_checkpoint(ckpt, repo, validation=tiny_images(), tensorrt="off")
    assert [r.status for r in again if r.entry == "lenet"] == ["up to date"]
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before
    forced = export_checkpoint(ckpt, repo, validation=tiny_images(), tensorrt="off", force=True)
    assert [r.status for r in forced if r.entry == "lenet"] == ["written"]
    assert any(p.stat().st_mtime_ns != before[p][0] for p in files)


def test_an_entry_is_stale_only_after_an_export_version_that_changed_its_model(tmp_path):
    """A classifier written before the last version that changed classifiers (CHANGED) is rebuilt, one
    written by it is current, one without a version is not; the recurrent translators' entries written by
    version 10 stay current under the classifiers' bump (and the Transformer's, 12)."""
    ckpt = write_checkpoint(tmp_path, "lenet")
    repo = tmp_path / "repo"
    export_checkpoint(ckpt, repo, validation=tiny_images(), tensorrt="off")
    meta_path = repo / "lenet" / "kiln.json"
    meta = json.loads(meta_path.read_text())
    assert meta["export"]["export_version"] == EXPORT_VERSION
    changed = current_version("lenet")
    assert changed == 11 and [current_version(m) for m in ("transformer", "gru_attention")] == [12, 10]
    for written_by, status in ((changed, "up to date"), (changed - 1, "written"), (None, "written")):
        meta["export"]["export_version"] = written_by
        if written_by is None:  # not written by a Kiln that versions its export
            del meta["export"]["export_version"]
        meta_path.write_text(json.dumps(meta))
        again = export_checkpoint(ckpt, repo, validation=tiny_images(), tensorrt="off")
        assert [r.status for r in again if r.entry == "lenet"] == [status], written_by
        kept = written_by if status == "up to date" else EXPORT_VERSION  # a current entry is not rewritten
        assert json.loads(meta_path.read_text())["export"]["export_version"] == kept
        meta = json.loads(meta_path.read_text())


def test_a_tampered_artifact_makes_the_entry_stale(tmp_path):
    ckpt = write_checkpoint(tmp_path, "lenet")
    export_checkpoint(ckpt, tmp_path / "repo", validation=tiny_images(), tensorrt="off")
    (tmp_path / "repo" / "lenet" / "labels.txt").write_text("tampered\n")
    again = export_checkpoint(ckpt, tmp_path / "repo", validation=tiny_images(), tensorrt="off")
    assert [r.status for r in again if r.entry == "lenet"] == ["written"]


def test_export_refuses_to_overwrite_a_foreign_directory(tmp_path):
    ckpt = write_checkpoint(tmp_path, "lenet")
    (tmp_path / "repo" / "lenet").mkdir(parents=True)
    (tmp_path / "repo" / "lenet" / "precious.txt").write_text("mine")
    with pytest.raises(RepositoryError, match="not a Kiln export"):
        export_checkpoint(ckpt, tmp_path / "repo", validation=tiny_images(), tensorrt="off")
    assert (tmp_path / "repo" / "lenet" / "precious.txt").read_text() == "mine"


def test_fp16_and_int8_entries_pass_and_the_int8_gate_rejects_a_large_drop_and_remembers_it(
    tmp_path, monkeypatch
):
    ckpt = write_checkpoint(tmp_path, "lenet")
    results = export_checkpoint(
        ckpt,
        tmp_path / "repo",
        precisions=("fp32", "fp16", "int8"),
        int8_max_drop=100.0,
        validation=tiny_images(),
        tensorrt="off",
    )
    status = {r.entry: r.status for r in results}
    assert status["lenet_fp16"] == "written" and status["lenet_int8"] == "written"
    int8 = onnx.load(str(tmp_path / "repo" / "lenet_int8" / "1" / "model.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in int8.graph.node}
    fp16 = onnx.load(str(tmp_path / "repo" / "lenet_fp16" / "1" / "model.onnx"))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)
    gate = json.loads((tmp_path / "repo" / "lenet_int8" / "kiln.json").read_text())["parity"]["int8_gate"]
    assert set(gate) == {"accuracy_fp32", "accuracy_int8", "top1_drop_points", "max_drop_points", "passed"}
    assert gate["top1_drop_points"] == pytest.approx(100 * (gate["accuracy_fp32"] - gate["accuracy_int8"]))

    def doctored(gate: GateResult) -> GateResult:  # pretend int8 lost 10 points of accuracy
        return GateResult(gate.accuracy_fp32, gate.accuracy_fp32 - 0.10, gate.max_drop)

    results = export_checkpoint(
        ckpt,
        tmp_path / "repo",
        precisions=("fp32", "int8"),
        int8_max_drop=0.5,
        validation=tiny_images(),
        tensorrt="off",
        accuracy_hook=doctored,
    )
    int8 = next(r for r in results if r.entry == "lenet_int8")
    assert int8.status == "rejected" and "10.00 > 0.5" in int8.message
    assert not (tmp_path / "repo" / "lenet_int8").exists()
    # the unchanged checkpoint with the same gate settings is not re-gated (--force or a change re-gates)
    monkeypatch.setattr(quantize, "to_int8", lambda *a: pytest.fail("an unchanged refusal was re-gated"))
    options = {"precisions": ("fp32", "int8"), "int8_max_drop": 0.5, "tensorrt": "off"}
    again = {
        r.entry: r for r in export_checkpoint(ckpt, tmp_path / "repo", validation=tiny_images(), **options)
    }
    assert again["lenet_int8"].status == "up to date" and again["lenet"].status == "up to date"
    assert "refused by its gate earlier (int8 top-1 drop 10.00 > 0.5" in again["lenet_int8"].message
    assert not (tmp_path / "repo" / "lenet_int8").exists()


def test_without_labels_the_int8_gate_measures_top1_agreement_with_fp32_not_zero_accuracies(tmp_path):
    ckpt, repo = write_checkpoint(tmp_path, "lenet"), tmp_path / "repo"
    images = tiny_images()
    unlabelled = ImageData(images.train, images.val, None, "random")
    options = {"precisions": ("fp32", "int8"), "validation": unlabelled, "tensorrt": "off"}
    export_checkpoint(ckpt, repo, int8_max_drop=100.0, **options)
    gate = json.loads((repo / "lenet_int8" / "kiln.json").read_text())["parity"]["int8_gate"]
    assert gate["gate"] == "top-1 agreement with fp32 (no labels)" and "accuracy_fp32" not in gate
    assert gate["images"] == len(images.val) and gate["data"] == "random" and gate["min_agreement"] == 0.0
    assert 0.0 < gate["top1_agreement"] <= 1.0 and gate["passed"]

    def drifted(gate: AgreementGate) -> AgreementGate:  # pretend int8 changed the class of 1 image in 10
        return AgreementGate(0.9, gate.images, gate.max_drop, gate.data)

    results = export_checkpoint(ckpt, repo, int8_max_drop=5.0, accuracy_hook=drifted, **options)
    int8 = next(r for r in results if r.entry == "lenet_int8")
    assert int8.status == "rejected" and not (repo / "lenet_int8").exists()
    assert int8.message == "int8 top-1 agreement with fp32 90.00% < 95.00% on 24 unlabelled (random) images"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--beam-sentences", "0", "beam sentences must be >= 1, got 0"),
        ("--beam-sentences", "-3", "beam sentences must be >= 1, got -3"),
        ("--int8-min-agreement", "1.5", "int8 min agreement must be in [0, 1], got 1.5"),
        ("--int8-min-agreement", "-0.1", "int8 min agreement must be in [0, 1], got -0.1"),
        ("--int8-max-drop", "-1", "int8 max drop must be >= 0 points, got -1.0"),
        ("--int8-max-drop", "nan", "int8 max drop must be >= 0 points, got nan"),
        ("--int8-max-bleu-drop", "-0.5", "int8 max BLEU drop must be >= 0, got -0.5"),
    ],
)
def test_the_cli_refuses_gate_settings_that_measure_nothing_before_any_work(
    tmp_path, capsys, flag, value, message
):
    from export.__main__ import main

    assert main([str(tmp_path / "no-such-checkpoints"), flag, value]) == 1
    err = capsys.readouterr().err
    assert f"export failed: {message}" in err and "Traceback" not in err
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        ExportOptions(**{flag[2:].replace("-", "_"): float(value)})


def test_parity_failure_fails_loudly_and_writes_nothing(tmp_path, monkeypatch):
    ckpt = write_checkpoint(tmp_path, "lenet")
    import export.classifier as classifier

    real = classifier.classifier_graph

    def broken(model, prep):  # the exported graph gets a different normalisation than the reference
        return (
            real(model, {**prep, "mean": [0.9]})
            if model.training is False and _is_frozen(model)
            else real(model, prep)
        )

    monkeypatch.setattr(classifier, "classifier_graph", broken)
    with pytest.raises(ParityError, match=r"lenet.*logits: max abs diff"):
        export_checkpoint(ckpt, tmp_path / "repo", validation=tiny_images(), tensorrt="off")
    assert not (tmp_path / "repo" / "lenet").exists()
    assert not [p for p in (tmp_path / "repo").iterdir() if p.name.startswith(".")]


def _is_frozen(model: nn.Module) -> bool:
    return not training_only_modules(model)


def test_validation_split_from_the_checkpoint_is_used_for_top1_agreement(tmp_path):
    data = {
        "dataset": "digits",
        "image_size": SIZE,
        "channels": 1,
        "seed": 0,
        "val_fraction": 0.2,
        "limit_train": 32,
        "limit_val": 40,
    }
    ckpt = write_checkpoint(tmp_path, "lenet", data=data)
    results = export_checkpoint(ckpt, tmp_path / "repo", tensorrt="off")
    parity = results[0].parity
    assert parity["data"] == "validation split" and parity["validation_images"] == 40
    assert parity["top1_agreement"] == 1.0


def test_the_cli_builds_its_export_options_once_from_every_flag_with_the_options_defaults():
    from export.__main__ import export_options, parse_args

    assert export_options(parse_args([])) == ExportOptions()
    flags = "--force --precisions int8 --device gpu --cudnn-conv-algo-search HEURISTIC --cuda-graphs"
    flags += " --int8-max-drop 1.5 --int8-min-agreement 0.9 --int8-max-bleu-drop 1 --tensorrt off"
    flags += " --max-batch-size 8 --beam-sentences 20"
    expected = ExportOptions(
        precisions=("fp32", "int8"),
        int8_max_drop=1.5,
        int8_min_agreement=0.9,
        int8_max_bleu_drop=1.0,
        tensorrt="off",
        max_batch_size=8,
        force=True,
        beam_sentences=20,
        device="gpu",
        cudnn_conv_algo_search="HEURISTIC",
        cuda_graphs=True,
    )
    assert export_options(parse_args(flags.split())) == expected
    # CUDA graphs are the GPU default (measured on an H200); --no-cuda-graphs writes plain buckets
    assert export_options(parse_args(["--device", "gpu"])).cuda_graphs is True
    assert export_options(parse_args(["--device", "gpu", "--no-cuda-graphs"])).cuda_graphs is False


def test_the_cli_reports_bad_options_as_a_failed_export(tmp_path, capsys):
    from export.__main__ import main

    assert main([str(tmp_path), "--max-batch-size", "0"]) == 1
    assert "max batch size must be >= 1" in capsys.readouterr().err


def test_the_cli_exports_a_directory_and_prints_a_summary(tmp_path, capsys):
    from export.__main__ import main

    write_checkpoint(tmp_path / "ckpts", "lenet")
    assert main([str(tmp_path / "ckpts"), "--repository", str(tmp_path / "repo"), "--tensorrt", "off"]) == 0
    assert "lenet" in capsys.readouterr().out
    assert (tmp_path / "repo" / "lenet" / "1" / "model.onnx").is_file()
    assert main([str(tmp_path / "missing"), "--repository", str(tmp_path / "repo")]) == 1
    assert os.path.isdir(tmp_path / "repo")


def test_the_gpu_export_writes_fp32_and_fp16_gpu_entries_and_a_cpu_export_rewrites_them(tmp_path, capsys):
    from export.__main__ import main

    write_checkpoint(tmp_path / "ckpts", "lenet")
    repo = tmp_path / "repo"
    assert (
        main([str(tmp_path / "ckpts"), "--repository", str(repo), "--tensorrt", "off", "--device", "gpu"])
        == 0
    )
    for entry, mode in (("lenet", "FP32"), ("lenet_fp16", "FP16")):
        config = parse_pbtxt((repo / entry / "config.pbtxt").read_text())
        assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == mode
        assert json.loads((repo / entry / "kiln.json").read_text())["export"]["device"] == "gpu"
    results = export_checkpoint(
        tmp_path / "ckpts" / "lenet.pt", repo, validation=tiny_images(), tensorrt="off"
    )
    assert {r.entry: r.status for r in results}["lenet"] == "written"  # the device changed: stale
    config = parse_pbtxt((repo / "lenet" / "config.pbtxt").read_text())
    assert config.instance_group[0].kind == config.instance_group[0].KIND_CPU
    assert not config.HasField("optimization") and "kiln_bucketing" not in config.parameters
