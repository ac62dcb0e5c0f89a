"""Export writes a new version beside the served one (a rollout): ``--version N`` / ``next`` writes
``<entry>/<N>/`` and keeps every other version directory as it is, ``--version-policy`` decides which
the config serves, and a version exported from another checkpoint is not written over without
``--replace-version``. Export always wrote version 1, replacing the entry whole."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from export.__main__ import export_options, parse_args, summary_table
from export.pipeline import export_checkpoint, version_to_write
from export.repository import RepositoryError, write_entry, writing_version
from export.results import EntryResult, ExportOptions
from tests.repo_fixtures import (
    MAX_BATCH,
    SIZE,
    LiveServer,
    _tiny_checkpoint,
    build_classifier_repository,
)


def _fill(text: str, labels: str = "a\nb\n", sha: str = "one"):
    def fill(directory: Path) -> dict:
        from export.repository import version_dir

        (version_dir(directory) / "model.onnx").write_text(text, encoding="utf-8")
        (directory / "labels.txt").write_text(labels, encoding="utf-8")
        (directory / "config.pbtxt").write_text(
            'name: "m"\nversion_policy { latest { num_versions: 1 } }\n', encoding="utf-8"
        )
        return {
            "task": "classify",
            "source_checkpoint": {"path": "m.pt", "sha256": sha},
            "labels": "labels.txt",
        }

    return fill


def test_a_new_version_is_written_beside_the_others_which_stay_as_they_are(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    entry = write_entry(repository, "m", _fill("old"))
    before = (entry / "1" / "model.onnx").stat()
    with writing_version("2", "all"):
        write_entry(repository, "m", _fill("new", sha="two"))
    assert (entry / "1" / "model.onnx").read_text(encoding="utf-8") == "old"
    assert (entry / "1" / "model.onnx").stat().st_ino == before.st_ino  # the very file, not a copy
    assert (entry / "2" / "model.onnx").read_text(encoding="utf-8") == "new"
    meta = json.loads((entry / "kiln.json").read_text(encoding="utf-8"))
    assert meta["version"] == "2" and {"1/model.onnx", "2/model.onnx"} <= set(meta["artifacts"])
    assert {v: r["source_checkpoint"]["sha256"] for v, r in meta["versions"].items()} == {
        "1": "one",
        "2": "two",
    }
    assert "all {" in (entry / "config.pbtxt").read_text(encoding="utf-8")
    with writing_version("3"):  # no policy asked: the entry keeps its own
        write_entry(repository, "m", _fill("newer", sha="three"))
    assert "all {" in (entry / "config.pbtxt").read_text(encoding="utf-8")
    assert sorted(p.name for p in entry.iterdir() if p.is_dir()) == ["1", "2", "3"]
    write_entry(repository, "m", _fill("again", sha="four"))  # version 1 by default: 2 and 3 kept
    assert (entry / "3" / "model.onnx").read_text(encoding="utf-8") == "newer"


def test_a_version_whose_labels_differ_from_the_served_ones_is_refused(tmp_path: Path) -> None:
    """The entry's one labels.txt and config serve every version: v1 would answer with v2's labels."""
    repository = tmp_path / "repo"
    write_entry(repository, "m", _fill("old"))
    with (
        writing_version("2"),
        pytest.raises(RepositoryError, match=r"version 2 .* labels\.txt .*entry of its own"),
    ):
        write_entry(repository, "m", _fill("new", labels="a\nb\nc\n"))
    assert not (repository / "m" / "2").exists()


def test_a_policy_serving_none_of_the_versions_is_refused(tmp_path: Path) -> None:
    with (
        writing_version("2", "specific:5"),
        pytest.raises(RepositoryError, match="serves none of its versions"),
    ):
        write_entry(tmp_path / "repo", "m", _fill("x"))


def _versioned(repository: Path, entries: tuple[str, ...], shas: dict[str, str]) -> None:
    for entry in entries:
        for version, sha in shas.items():
            with writing_version(version):
                write_entry(repository, entry, _fill(f"{entry} {version}", sha=sha))


def test_the_version_to_write(tmp_path: Path) -> None:
    """A translator's three entries (and an int8 twin) get one version; next reuses this checkpoint's."""
    repository, path = tmp_path / "repo", Path("m.pt")
    entries = ("t", "t_encoder", "t_decoder")
    _versioned(repository, entries[:2], {"1": "one"})
    _versioned(repository, entries[2:], {"1": "one", "2": "two"})
    options = ExportOptions
    assert version_to_write(repository, entries, options(version="next"), path, "new") == "3"
    assert version_to_write(repository, entries, options(version="next"), path, "two") == "2"
    assert version_to_write(repository, ("fresh",), options(version="next"), path, "new") == "1"
    assert version_to_write(repository, entries[:2], options(), path, "new") == "1"  # as ever: replaced
    with pytest.raises(RepositoryError, match=r"version 1 of entry 't'.*--version next.*--replace-version"):
        version_to_write(repository, entries, options(version="1"), path, "new")
    with pytest.raises(RepositoryError, match="version 2 of entry 't_decoder'"):
        version_to_write(repository, entries, options(), path, "new")  # the version written last
    assert (
        version_to_write(repository, entries, options(version="2", replace_version=True), path, "new") == "2"
    )


def test_the_flags() -> None:
    args = parse_args(["--version", "3", "--version-policy", "latest:2", "--replace-version"])
    assert (args.version, args.version_policy, args.replace_version) == ("3", "latest:2", True)
    options = export_options(args)
    assert (options.version, options.version_policy, options.replace_version) == ("3", "latest:2", True)
    assert parse_args(["--version", "next"]).version == "next"
    assert parse_args([]).version is None and parse_args([]).version_policy is None
    for bad in (["--version", "0"], ["--version", "v2"], ["--version-policy", "newest"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    shown = summary_table([EntryResult("m", "fp32", "written", version="2")])
    assert [c.header for c in shown.columns][:2] == ["entry", "version"]


def _infer(live: LiveServer, path: str, image: np.ndarray) -> np.ndarray:
    body = {
        "inputs": [
            {
                "name": "images",
                "shape": list(image.shape),
                "datatype": "UINT8",
                "data": image.ravel().tolist(),
            }
        ]
    }
    request = urllib.request.Request(
        f"http://{live.url}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    (logits,) = [o for o in answer["outputs"] if o["name"] == "logits"]
    return np.asarray(logits["data"], dtype=np.float32)


def _run(model: Path, image: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["logits"], {"images": image})[0], dtype=np.float32).ravel()


def test_a_retrained_model_exported_as_version_2_is_served_beside_version_1(tmp_path: Path) -> None:
    from serving.app import create_app
    from serving.settings import Settings

    repository = build_classifier_repository(tmp_path / "repo")  # lenet, version 1
    retrained = _tiny_checkpoint(tmp_path / "retrained" / "lenet.pt", "lenet", seed=7)
    results = export_checkpoint(
        retrained, repository, max_batch_size=MAX_BATCH, tensorrt="off", name="lenet", version="next",
        version_policy="all",
    )  # fmt: skip
    assert [(r.entry, r.status, r.version) for r in results if r.status == "written"] == [
        ("lenet", "written", "2")
    ]
    entry = repository / "lenet"
    image = np.random.default_rng(0).integers(0, 256, (1, SIZE, SIZE, 1), dtype=np.uint8)
    wanted = {v: _run(entry / v / "model.onnx", image) for v in ("1", "2")}
    assert not np.allclose(wanted["1"], wanted["2"])
    with LiveServer(create_app(Settings(model_repository=repository, grpc_port=0))) as live:
        for version, logits in wanted.items():
            served = _infer(live, f"/v2/models/lenet/versions/{version}/infer", image)
            np.testing.assert_allclose(served, logits, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(
            _infer(live, "/v2/models/lenet/infer", image), wanted["2"], rtol=1e-4, atol=1e-4
        )
        request = urllib.request.Request(f"http://{live.url}/v2/repository/index", b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            index = json.loads(response.read())
    assert sorted(m["version"] for m in index if m["name"] == "lenet") == ["1", "2"]
    again = export_checkpoint(
        retrained, repository, max_batch_size=MAX_BATCH, tensorrt="off", name="lenet", version="next"
    )
    assert [(r.status, r.version) for r in again if r.entry == "lenet"] == [("up to date", "2")]


def test_an_int8_twin_refused_as_the_new_version_keeps_its_served_versions(tmp_path: Path) -> None:
    """A refusal removed the whole int8 entry: version 1, which passed its gate, went with it."""
    from export.parity import ParityReport
    from export.results import Entry, ExportContext

    repository = tmp_path / "repo"
    write_entry(repository, "m_int8", _fill("int8 v1"))
    options = ExportOptions(precisions=("fp32", "int8"), version="2")
    ctx = ExportContext(Path("m.pt"), {"task": "classify"}, None, "two", repository, options, "m")
    with writing_version("2"):
        result = ctx.refuse(Entry("m_int8", "int8"), ParityReport(tolerance=1e-4), "top-1 dropped 3 points")
    assert (repository / "m_int8" / "1" / "model.onnx").read_text(encoding="utf-8") == "int8 v1"
    assert result.status == "rejected" and "version 2 not written; version(s) 1 kept" in result.message
    ctx.refuse(Entry("m_int8", "int8"), ParityReport(tolerance=1e-4), "top-1 dropped 3 points")  # version 1's
    assert not (repository / "m_int8").exists()  # its only version refused: removed, as ever
