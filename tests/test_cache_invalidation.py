"""Kiln's caches answer for what their files are now: the weight store's optimized graphs
(serving/execution/shared_weights.py), the compiled kernels' builds (serving/decoding/native.py) and
export's up-to-date check of a translator's python entry (export/translator_entries.py)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from serving.decoding import native
from serving.execution.shared_weights import WeightStore

PROVIDERS = ["CPUExecutionProvider"]


def _matmul_model(path: Path, scale: float) -> None:
    """A graph ``y = x @ w`` written as an export writes an entry (a new file renamed into place): every
    scale gives a file of the same size."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.full((16, 16), scale, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    staged = path.with_name(f".{path.name}.new")
    onnx.save(model, staged)
    os.replace(staged, path)


def _answer(graph: Path) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=PROVIDERS)
    return float(session.run(None, {"x": np.ones((1, 16), np.float32)})[0][0, 0])


def test_a_re_exported_model_of_the_same_size_and_mtime_is_not_served_the_old_weights(tmp_path):
    """Retrained, the same architecture writes a file of the same size; copied with ``cp -p``, from a
    tarball or by a build that pins mtimes, it keeps the old one's mtime too. A store on a directory
    that outlives a gateway (``KILN_WEIGHTS_DIR``) handed the old weights' graph for it."""
    model, root = tmp_path / "model.onnx", tmp_path / "weights"
    root.mkdir()
    _matmul_model(model, 1.0)
    old = model.stat()
    first = WeightStore(root).graph_for(model, PROVIDERS)
    assert first is not None and _answer(first) == 16.0

    _matmul_model(model, 2.0)
    os.utime(model, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert (model.stat().st_size, model.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    again = WeightStore(root).graph_for(model, PROVIDERS)  # the next gateway, on the same directory
    assert again is not None and again != first
    assert _answer(again) == _answer(model) == 32.0


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache of compiled kernels, and a compiler command that need not exist (builds are faked)."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KILN_NATIVE", raising=False)
    monkeypatch.setattr(native, "_loaded_path", [])  # what _load() notes, this process's own kept
    return tmp_path / "cache"


def test_a_cached_build_that_does_not_load_is_built_again(cache, monkeypatch):
    """A build truncated by a crash before it reached the disk stayed in the cache: every process after
    warned "file too short" and ran the numpy step, until someone removed the file by hand."""
    cc = "/usr/bin/cc-kiln-test"
    path = native.library_path(cc)
    cache.mkdir()
    path.write_bytes(b"")  # what a crash leaves of a file renamed into place before its data was written
    builds = []

    def build(command: str, target: Path) -> Path:
        builds.append(command)
        target.write_bytes(b"a library")
        return target

    def open_(where: Path) -> str:
        if where.read_bytes() != b"a library":
            raise OSError(f"{where}: file too short")
        return "opened"

    monkeypatch.setattr(native, "compiler", lambda: cc)
    monkeypatch.setattr(native, "build", build)
    monkeypatch.setattr(native, "_open", open_)
    assert native._load() == "opened"
    assert builds == [cc]
    assert native._load() == "opened" and builds == [cc], "the good build is reused"


def test_without_a_compiler_a_cached_build_that_does_not_load_leaves_the_numpy_step(cache, monkeypatch):
    cache.mkdir()
    (cache / f"beam_step-{native._source_digest()}-00000000.so").write_bytes(b"")
    monkeypatch.setattr(native, "compiler", lambda: None)
    monkeypatch.setattr(native, "build", lambda *_: pytest.fail("no compiler: nothing to build with"))
    assert native._load() is None


def test_a_whole_build_that_does_not_load_is_not_built_again_at_every_start(cache, monkeypatch):
    """A cache on a noexec mount: every build is whole and none loads; building again at every start
    cost each process a compile (seconds) and ended on the numpy step all the same."""
    whole = Path(os.path.realpath(sys.executable))  # a whole 64-bit ELF file, as a build is
    cc = "/usr/bin/cc-kiln-test"
    path = native.library_path(cc)
    cache.mkdir()
    path.write_bytes(whole.read_bytes())
    assert not native._incomplete(path)
    path.write_bytes(whole.read_bytes()[:-64])  # cut short: its section headers are past its end
    assert native._incomplete(path)
    path.write_bytes(whole.read_bytes())

    def refused(where: Path) -> None:
        raise OSError(f"{where}: failed to map segment from shared object")

    monkeypatch.setattr(native, "compiler", lambda: cc)
    monkeypatch.setattr(native, "build", lambda *_: pytest.fail("a whole build is not built again"))
    monkeypatch.setattr(native, "_open", refused)
    assert native._load() is None  # the numpy step, with its warning


def _touching_compiler(tmp_path: Path) -> str:
    """A stand-in C compiler that writes an empty ``-o`` file."""
    program = tmp_path / "touch-cc"
    program.write_text('#!/bin/sh\nwhile [ "$1" != "-o" ]; do shift; done\n: > "$2"\n')
    program.chmod(0o755)
    return str(program)


def test_a_build_keeps_the_builds_others_use_and_sweeps_those_long_unused(cache, tmp_path):
    """Every build removed every other: another Kiln version, a Triton python entry's copy of the sources
    or another machine on the same home then rebuilt at each start, and could lose its build between
    making and loading it."""
    cache.mkdir()
    in_use = cache / "beam_step-0123456789abcdef-00000000.so"
    unused = cache / "beam_step-fedcba9876543210-00000000.so"
    in_use.write_bytes(b"")
    unused.write_bytes(b"")
    long_ago = time.time() - native.SWEEP_AFTER_S - 3600
    os.utime(unused, (long_ago, long_ago))
    cc = _touching_compiler(tmp_path)
    built = native.build(cc, native.library_path(cc))
    assert sorted(p.name for p in cache.iterdir()) == sorted([built.name, in_use.name])


def test_loading_a_build_marks_it_used(cache, monkeypatch):
    cc = "/usr/bin/cc-kiln-test"
    path = native.library_path(cc)
    cache.mkdir()
    path.write_bytes(b"a library")
    long_ago = time.time() - native.SWEEP_AFTER_S - 3600
    os.utime(path, (long_ago, long_ago))
    monkeypatch.setattr(native, "compiler", lambda: cc)
    monkeypatch.setattr(native, "_open", lambda where: "opened")
    assert native._load() == "opened"
    assert not native._unused_for(path, native.SWEEP_AFTER_S)


class Rebuilding(Exception):
    """Raised where the translator export starts its rebuild."""


@pytest.fixture
def translator_copy(exported_translator_models, tmp_path_factory) -> Path:
    from tests.test_translate_serving import exported_translators

    return exported_translators(
        exported_translator_models, tmp_path_factory, "stale_runtime", ("gru_attention",)
    )


def _as_an_older_kiln_wrote_it(entry: Path, module: str) -> None:
    """Change the entry's copy of ``module`` and record it in kiln.json, as an export by an older Kiln
    (whose copy was another) left the entry: whole, and from this checkpoint and these settings."""
    from training.checkpoint import file_sha256

    copy = entry / "1" / "serving" / "decoding" / module
    copy.write_text(copy.read_text() + "\n# as an older Kiln wrote it\n")
    meta = json.loads((entry / "kiln.json").read_text())
    meta["artifacts"][f"1/serving/decoding/{module}"] = file_sha256(copy)
    (entry / "kiln.json").write_text(json.dumps(meta, indent=2))


def test_a_translator_whose_beam_search_copies_predate_servings_is_rebuilt(translator_copy, monkeypatch):
    """Triton runs the python entry's copies of model.py and the beam search modules; a fix to them
    (Triton read special-token text otherwise than the gateway) left every translator exported before
    it "up to date" on a re-export of the same checkpoint."""
    from export import translator
    from export.pipeline import export_checkpoint
    from export.translator_entries import stale_runtime

    repo = translator_copy
    ckpt = repo.parent / "checkpoints" / "gru_attention.pt"
    names = ("gru_attention_encoder", "gru_attention_decoder", "gru_attention")
    assert stale_runtime(repo, names) == []
    again = export_checkpoint(ckpt, repo, max_batch_size=16, beam_sentences=8)
    assert [r.status for r in again] == ["up to date"] * 3

    _as_an_older_kiln_wrote_it(repo / "gru_attention", "options.py")
    assert stale_runtime(repo, names) == ["gru_attention"]

    def rebuilding(*_args: object) -> None:
        raise Rebuilding

    monkeypatch.setattr(translator, "_export_graphs", rebuilding)
    with pytest.raises(Rebuilding):
        export_checkpoint(ckpt, repo, max_batch_size=16, beam_sentences=8)
