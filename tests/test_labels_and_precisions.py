"""Labels files read as Triton reads them, and precisions a translator export does not build reported:
a hand-written labels.txt with a blank line, a carriage return or U+2028 names each class as Triton
names it (every protocol of the gateway agrees with Triton), a labels path outside the model directory
fails the load as in Triton; an ``fp16`` asked of a translator export is a row of the summary."""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.execution.repository import Repository, load_entry
from tests.repo_fixtures import CHANNELS, SIZE, build_classifier_repository

CONFIG = """name: "hand"
platform: "onnxruntime_onnx"
max_batch_size: 4
input { name: "x" data_type: TYPE_FP32 dims: 3 }
output { name: "p" data_type: TYPE_FP32 dims: 3 label_filename: "%s" }
"""


def _hand_entry(root: Path, labels: bytes, filename: str = "labels.txt") -> Path:
    """A model directory with a three-class output whose labels file holds ``labels``."""
    directory = root / "hand"
    directory.mkdir(parents=True)
    (directory / "config.pbtxt").write_text(CONFIG % filename)
    (directory / "labels.txt").write_bytes(labels)
    return directory


@pytest.mark.parametrize(
    ("written", "read"),
    [
        (b"a\n\nc\n", ["a", "", "c"]),  # a blank line is a class without a name: c keeps index 2
        (b"a\r\nb\r\nc\r\n", ["a\r", "b\r", "c\r"]),  # Windows line ends: Triton keeps the \r
        ("a\u2028x\nb\x85y\nc\n".encode(), ["a\u2028x", "b\x85y", "c"]),  # not line ends to Triton
        (b"   \nb\nc", ["   ", "b", "c"]),  # a last line without its \n is a label still
        (b"a\nb\nc\n\n", ["a", "b", "c", ""]),  # one trailing blank line is one more (empty) label
        (b"", []),
        (b"caf\xe9\nb\nc\n", ["caf\ufffd", "b", "c"]),  # Latin-1: Triton loads it, so does the gateway
    ],
)
def test_labels_txt_is_read_a_line_a_label_as_triton_reads_it(tmp_path, written, read):
    """Triton's LabelProvider splits labels.txt at each \\n alone (std::getline) and keeps every line;
    the gateway split at every str.splitlines break and dropped blank lines, so it named classes
    other than Triton did, each class after a blank line or a U+2028 under another class's name."""
    assert load_entry(_hand_entry(tmp_path, written)).labels == {"p": read}


def test_a_labels_file_read_otherwise_than_it_looks_is_named_in_one_warning(tmp_path, caplog):
    """A blank line, a Windows line end, stray bytes: each is served as Triton serves it and logged,
    with the count warning where the lines do not number the classes."""
    directory = _hand_entry(tmp_path, b"a\r\n\n\xff\nd\n")
    with caplog.at_level(logging.WARNING, logger="serving.execution"):
        assert load_entry(directory).labels == {"p": ["a\r", "", "\ufffd", "d"]}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    oddities, count = lines
    assert str(directory / "labels.txt") in oddities
    for said in ("classes 1 are blank", "classes 0 end in a carriage return", "classes 2 are not UTF-8"):
        assert said in oddities, oddities
    assert "4 labels" in count and "3 classes" in count and "answered by index" in count


def test_an_exported_labels_file_is_read_without_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="serving.execution"):
        assert load_entry(_hand_entry(tmp_path, b"zero\none\ntwo\n")).labels == {"p": ["zero", "one", "two"]}
    assert caplog.records == []


@pytest.mark.parametrize("filename", ["../outside.txt", "link.txt"])
def test_a_labels_path_through_dot_dot_or_a_link_is_read_as_triton_reads_it(tmp_path, filename):
    """Triton 2.51 loads a model whose label_filename is ``../other/labels.txt`` or a link out of the
    entry (checked against the real server: READY), so the gateway reads them too, for the
    label_filename and for kiln.json's ``labels`` alike, rather than refusing the model."""
    (tmp_path / "outside.txt").write_text("x\ny\nz\n")
    directory = _hand_entry(tmp_path, b"a\nb\nc\n", filename)
    (directory / "link.txt").symlink_to(tmp_path / "outside.txt")
    assert load_entry(directory).labels == {"p": ["x", "y", "z"]}
    (directory / "config.pbtxt").write_text((CONFIG % "").replace(' label_filename: ""', ""))
    (directory / "kiln.json").write_text(json.dumps({"labels": filename}))
    assert load_entry(directory).labels == {"p": ["x", "y", "z"]}


def test_an_absolute_labels_path_is_joined_under_the_model_directory_as_triton_joins_it(tmp_path):
    directory = _hand_entry(tmp_path, b"a\nb\nc\n", str(tmp_path / "hand" / "labels.txt"))
    assert Repository(tmp_path).errors == {
        "hand": f"label file {str(directory / str(tmp_path).lstrip('/') / 'hand' / 'labels.txt')!r} "
        "for output 'p' cannot be read: No such file or directory"
    }
    (directory / "config.pbtxt").write_text(CONFIG % "/labels.txt")
    assert Repository(tmp_path).entries["hand"].labels == {"p": ["a", "b", "c"]}


@pytest.fixture(scope="module")
def classifier_repository(tmp_path_factory) -> Path:
    return build_classifier_repository(tmp_path_factory.mktemp("labels") / "repo")


def _png() -> str:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _classified(classifier_repository: Path, tmp_path: Path, labels: bytes) -> tuple[dict, Any, Any]:
    """A copy of the repository whose lenet has ``labels`` as its labels.txt, asked over REST (top 3)
    and KServe's classification extension (3): the model list by name, and the two answers."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings

    repository = Path(shutil.copytree(classifier_repository, tmp_path / "repo"))
    (repository / "lenet" / "labels.txt").write_bytes(labels)
    images = np.zeros((1, SIZE, SIZE, CHANNELS), dtype=np.uint8)
    infer = {
        "inputs": [
            {"name": "images", "shape": list(images.shape), "datatype": "UINT8", "data": [0] * images.size}
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
    }
    with TestClient(create_app(Settings(model_repository=repository, grpc_port=0))) as client:
        listed = {m["name"]: m for m in client.get("/v1/models").json()}
        rest = client.post("/v1/models/lenet/classify", json={"images": [_png()], "top_k": 3})
        kserve = client.post("/v2/models/lenet/infer", json=infer)
    return listed, rest, kserve


def test_rest_and_kserve_classification_name_each_class_as_triton_does(classifier_repository, tmp_path):
    """A hand-written labels.txt with a blank line and Windows line ends: the REST route and the
    classification extension answer each class under Triton's name for it (they answered class 1 as
    "two" and class 2 by its index), and ``GET /v1/models`` counts Triton's labels."""

    from serving.execution.datatypes import parse_classification

    named = {0: "zero\r", 1: "\r", 2: "two\r"}
    listed, rest, kserve = _classified(classifier_repository, tmp_path, b"zero\r\n\r\ntwo\r\n")
    assert listed["lenet"]["labels"] == 3
    assert rest.status_code == 200, rest.text
    assert {p["index"]: p["label"] for p in rest.json()["predictions"][0]} == named
    assert kserve.status_code == 200, kserve.text
    answered = [parse_classification(s) for s in kserve.json()["outputs"][0]["data"]]
    assert {index: label for _, index, label in answered} == named


def test_a_class_without_a_name_is_answered_by_its_index_and_without_a_label_as_triton_answers_it(
    classifier_repository, tmp_path
):
    """A blank line of labels.txt: Triton's classification extension answers ``"score:1"``, no label
    (the gateway wrote ``"score:1:"``, read back as the label ""), and REST names the class by its
    index as it names a class past the file (it answered ``"label": ""``)."""

    from serving.execution.datatypes import parse_classification

    _, rest, kserve = _classified(classifier_repository, tmp_path, b"zero\n\ntwo\n")
    assert rest.status_code == 200 and kserve.status_code == 200, (rest.text, kserve.text)
    assert {p["index"]: p["label"] for p in rest.json()["predictions"][0]} == {0: "zero", 1: "1", 2: "two"}
    strings = dict((parse_classification(s)[1], s) for s in kserve.json()["outputs"][0]["data"])
    assert {i: parse_classification(text)[2] for i, text in strings.items()} == {0: "zero", 1: None, 2: "two"}
    assert strings[1].count(":") == 1


def test_an_fp16_asked_of_a_translator_export_is_a_skipped_row_saying_why(
    exported_translator_models, tmp_path
):
    """``--precisions fp32,fp16,int8`` wrote a translator's fp32 and int8 entries and no fp16 one
    without a word in the summary; now one skipped fp16 row per translator says why."""
    from export.__main__ import summary_table
    from export.pipeline import export_checkpoint
    from export.translator import FP16_SKIPPED

    root, errors = exported_translator_models
    if "gru_attention" in errors:
        pytest.fail(f"the fixture could not export gru_attention: {errors['gru_attention']}")
    repository = Path(shutil.copytree(root / "model_repository", tmp_path / "repo"))
    checkpoint = root / "checkpoints" / "gru_attention.pt"
    results = export_checkpoint(checkpoint, repository, precisions=("fp32", "fp16"), max_batch_size=16)
    by_precision = {(r.entry, r.precision): r for r in results if r.entry.startswith("gru_attention")}
    assert {e for e, p in by_precision if p == "fp32"} == {
        "gru_attention",
        "gru_attention_encoder",
        "gru_attention_decoder",
    }
    skipped = by_precision[
        ("gru_attention_fp16", "fp16")
    ]  # its own name: a row keyed by entry keeps the fp32 one
    assert (skipped.status, skipped.message) == ("skipped", FP16_SKIPPED)
    assert not any(p.name.endswith("fp16") for p in repository.iterdir())
    assert f"gru_attention_fp16: {FP16_SKIPPED}" in summary_table(results).caption
    assert {r.entry: r.status for r in results}["gru_attention"] != "skipped"

    fp32_only = export_checkpoint(checkpoint, repository, max_batch_size=16)
    assert not [r for r in fp32_only if r.precision == "fp16"]
