"""The bench tools that open an entry's model file open the version the entry serves (the newest its
config.pbtxt ``version_policy`` selects, as the gateway picks it), not ``<entry>/1/``: since
``python -m export --version``, an entry may hold only version 2, or a version 3 staged beside the
served one (``--version-policy specific:2``), and the tools measured a missing or an unserved graph."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

STAGED = "version_policy { specific { versions: 2 } }\n"


def _serve_2_stage_3(entry: Path) -> None:
    """``entry``'s version 1 moved to 2 (served), a version 3 beside it that its policy does not serve."""
    (entry / "1").rename(entry / "2")
    (entry / "3").mkdir()
    (entry / "3" / "model.onnx").write_bytes(b"staged, not served")
    config = (entry / "config.pbtxt").read_text(encoding="utf-8")
    start = config.index("version_policy")
    end = config.index("\n}\n", start) + 3
    (entry / "config.pbtxt").write_text(config[:start] + STAGED + config[end:], encoding="utf-8")


class Opened(Exception):
    """Raised by the stand-in runners: the path a tool opened."""


def _record(path, *args, **kwargs):
    raise Opened(str(path))


@pytest.fixture
def versioned_translator(transformer_repository: Path, tmp_path: Path) -> Path:
    """The session's exported ``transformer`` entries (conftest), copied, its encoder and decoder
    serving version 2."""
    source = transformer_repository
    repository = tmp_path / "repo"
    for name in ("transformer", "transformer_encoder", "transformer_decoder"):
        shutil.copytree(source / name, repository / name)
    for name in ("transformer_encoder", "transformer_decoder"):
        _serve_2_stage_3(repository / name)
    return repository


def test_the_translation_tools_open_the_version_the_encoder_serves(versioned_translator, monkeypatch) -> None:
    from bench import gpu_decode_probe, translation_engines, translation_work
    from serving.decoding import native_decoder

    wanted = str(versioned_translator / "transformer_encoder" / "2" / "model.onnx")
    monkeypatch.setattr(native_decoder, "open_runner", _record)
    with pytest.raises(Opened) as opened:
        translation_engines.kiln_translator(versioned_translator, "transformer")
    assert str(opened.value) == wanted
    with pytest.raises(Opened) as opened:
        translation_work.measure(versioned_translator, "transformer", ["a"], len)
    assert str(opened.value) == wanted
    block = json.loads((versioned_translator / "transformer" / "kiln.json").read_text())["translator"]

    class Ort:
        InferenceSession = staticmethod(_record)

    with pytest.raises(Opened) as opened:
        gpu_decode_probe._runner(Ort, versioned_translator, block, "cpu", "decoder")
    assert str(opened.value) == str(versioned_translator / "transformer_decoder" / "2" / "model.onnx")


def _fill(text: str, policy: str = ""):
    def fill(directory: Path) -> dict:
        from export.repository import version_dir

        (version_dir(directory) / "model.onnx").write_text(text, encoding="utf-8")
        (directory / "config.pbtxt").write_text(f'name: "m"\n{policy}', encoding="utf-8")
        return {
            "task": "classify",
            "source_checkpoint": {"path": "m.pt", "sha256": text},
            "inputs": [{"name": "images", "datatype": "UINT8", "dims": [-1, 8, 8, 1]}],
        }

    return fill


def test_the_classifier_tools_open_the_served_version_not_the_one_written_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 2 staged beside version 1 (``--version 2 --version-policy specific:1``): kiln.json's
    ``version`` is 2, the gateway serves 1, and the engines' rows and the identity check's direct
    answers must be version 1's."""
    from bench import classify_identity, engines, gpu_serving
    from export.repository import write_entry, writing_version

    repository = tmp_path / "repo"
    write_entry(repository, "m", _fill("one"))
    with writing_version("2", "specific:1"):
        write_entry(repository, "m", _fill("two"))
    assert json.loads((repository / "m" / "kiln.json").read_text())["version"] == "2"
    served = repository / "m" / "1" / "model.onnx"
    jobs = engines.classifier_jobs(repository, tmp_path, "m", (1,), threads=1, budget_s=0.1)
    assert [j.artifact for j in jobs if j.engine == "onnxruntime"] == [str(served)]
    assert gpu_serving._newest_model(repository, "m") == served
    monkeypatch.setattr(classify_identity, "direct_answers", _record)
    with pytest.raises(Opened) as opened:  # the identity check's direct answers, beside the gateway's
        classify_identity.check("127.0.0.1:1", repository, "m", (8, 8, 1), n=8)
    assert str(opened.value) == str(served)
