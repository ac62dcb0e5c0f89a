"""A repository whose graph is a symbolic link (a Hugging Face cache's ``snapshots/<rev>/model.onnx ->
../../blobs/<sha>``, a Kubernetes volume): the flavour links the file it names, as the copy read it.

``os.link`` follows no symbolic link on Linux: the flavour hard-linked the link itself, and a relative
one dangled from the flavour's directory (derive failed, "cannot write ... No such file or directory")."""

from __future__ import annotations

import os
from pathlib import Path

from serving.triton import derive_python_flavour
from serving.triton.flavour import LINK_MIN_BYTES

CONFIG = """name: "tiny"
platform: "onnxruntime_onnx"
max_batch_size: 4
input { name: "x" data_type: TYPE_FP32 dims: 3 }
output { name: "y" data_type: TYPE_FP32 dims: 3 }
"""
BIG = b"\x07" * LINK_MIN_BYTES


def test_a_relative_symlinked_graph_is_linked_to_the_file_it_names(tmp_path: Path) -> None:
    blob = tmp_path / "blobs" / "sha"
    blob.parent.mkdir()
    blob.write_bytes(BIG)
    entry = tmp_path / "repo" / "tiny"
    (entry / "1").mkdir(parents=True)
    (entry / "config.pbtxt").write_text(CONFIG)
    os.symlink("../../../blobs/sha", entry / "1" / "model.onnx")
    out = tmp_path / "work" / "model_repository"  # not at the repository's depth
    derive_python_flavour(tmp_path / "repo", out)
    graph = out / "tiny" / "1" / "model.onnx"
    assert not graph.is_symlink()
    assert graph.samefile(blob)
