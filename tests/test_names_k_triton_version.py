"""Triton's python translator model decodes with the encoder / decoder version the gateway serves: the
newest its config's ``version_policy`` selects. It opened the highest version directory whatever the
policy said, so under ``specific`` (or beside an empty newer directory) it translated with another
model than the gateway, and than Triton's own ``<name>_encoder`` entry, answered with."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from export.translator_entries import _copy_runtime, runtime_sources
from serving.execution.repository import load_entry
from serving.execution.version_policy import read_version_policy, served_version
from tests.test_triton_translator_model import stand_in_pb_utils

POLICIES = {
    "none": "",
    "latest 2": "version_policy { latest { num_versions: 2 } }",
    "latest 0": "version_policy: { latest: { num_versions: 0 } }",
    "all": "version_policy: { all: {} }",
    "specific 1": "version_policy { specific { versions: 1 } }",
    "specific [2, 1]": "version_policy: {\n  specific: { versions: [2, 1] }  # not 3\n}",
    "specific repeated": "version_policy < specific < versions: 1 versions: 2 > >",
    "specific 9": "version_policy { specific { versions: [9] } }",  # no such directory: none served
}


def _entry(root: Path, name: str, policy: str) -> Path:
    """An encoder entry with versions 1-3 (3 the newest holding files), an empty 4 and a ``05``."""
    entry = root / name
    for version in ("1", "2", "3", "05"):
        (entry / version).mkdir(parents=True)
        (entry / version / "model.onnx").write_bytes(b"graph")
    (entry / "4").mkdir()  # no files: no version, for Triton and the gateway alike
    parameters = 'parameters { key: "note" value: { string_value: "version_policy { all {} } # }" } }'
    (entry / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\n{parameters}\n{policy}\nmax_batch_size: 8\n',
        encoding="utf-8",
    )
    return entry


@pytest.mark.parametrize("policy", POLICIES)
def test_the_python_model_serves_the_version_the_gateway_serves(tmp_path: Path, policy: str) -> None:
    entry = _entry(tmp_path, "t_encoder", POLICIES[policy])
    gateway = load_entry(entry).versions  # read through tritonclient's protobuf classes
    if not gateway:
        with pytest.raises(ValueError, match="no version its version_policy serves"):
            served_version(str(entry))
        return
    assert served_version(str(entry)) == str(entry / gateway[-1]), policy


def test_a_policy_is_read_as_protobuf_reads_it() -> None:
    assert read_version_policy("") == (None, 0, [])
    assert read_version_policy(POLICIES["specific [2, 1]"]) == ("specific", 0, [2, 1])
    assert read_version_policy(POLICIES["specific repeated"]) == ("specific", 0, [1, 2])
    assert read_version_policy(POLICIES["latest 2"]) == ("latest", 2, [])
    nested = 'input { name: "version_policy" }\ninput [{ dims: [1] }]\n' + POLICIES["all"]
    assert read_version_policy(nested) == ("all", 0, [])


def test_the_triton_model_opens_the_served_versions_graphs(tmp_path: Path, monkeypatch) -> None:
    stand_in_pb_utils(monkeypatch, lambda request, name: None)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the model puts its own directory first
    monkeypatch.delitem(sys.modules, "serving.triton.translator_model", raising=False)
    module = importlib.import_module("serving.triton.translator_model")
    try:
        for part in ("encoder", "decoder"):
            _entry(tmp_path, f"t_{part}", POLICIES["specific [2, 1]"])
            (tmp_path / f"t_{part}" / "kiln.json").write_text(json.dumps({"inputs": []}), encoding="utf-8")
        here = tmp_path / "t"
        here.mkdir()
        block = {"step_spec": {}, "source_tokenizer": "s", "target_tokenizer": "t"}
        block |= {"encoder": "t_encoder", "decoder": "t_decoder"}
        (here / "kiln.json").write_text(json.dumps({"translator": block}), encoding="utf-8")
        opened: list[str] = []
        monkeypatch.setattr(module.step_spec, "parse_step_spec", lambda raw: None)
        monkeypatch.setattr(module, "Tokenizer", SimpleNamespace(from_file=lambda path: SimpleNamespace()))
        monkeypatch.setattr(
            module.native_decoder, "open_runner", lambda graph, **kw: opened.append(graph) or (lambda f: f)
        )
        module.TritonPythonModel().initialize({"model_repository": str(here), "model_config": "{}"})
    finally:
        sys.modules.pop("serving.triton.translator_model", None)
    assert opened == [str(tmp_path / f"t_{part}" / "2" / "model.onnx") for part in ("encoder", "decoder")]


def test_the_rule_travels_with_the_python_model_and_needs_only_the_standard_library(tmp_path: Path) -> None:
    assert "serving/execution/version_policy.py" in runtime_sources()
    version = tmp_path / "t" / "1"
    version.mkdir(parents=True)
    _copy_runtime(version)
    entry = _entry(tmp_path, "t_encoder", POLICIES["specific 1"])
    probe = (
        f"import sys; sys.path.insert(0, {str(version)!r}); "
        "from serving.execution.version_policy import served_version; "
        f"print(served_version({str(entry)!r}))"
    )
    # -S: no site-packages (no tritonclient, no numpy), as little as Triton's python environment has
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(entry / "1")
