"""An entry has one config.pbtxt for all its versions, written by the last export: a version written
before the last one is up to date for its own checkpoint (its ``versions`` record) only while the
entry's config-level settings (device, cuDNN search, CUDA graphs, TensorRT accelerator, version
policy) are still those asked for. Exporting the CPU checkpoint of version 1 again with ``--device cpu``
after a ``--device gpu`` export of version 2 was "up to date", leaving the KIND_GPU config in place."""

from __future__ import annotations

from pathlib import Path

from export.repository import is_up_to_date, version_dir, write_entry, writing_version
from kiln.versions import EXPORT_VERSION


def _fill(text: str, sha: str, **export):
    def fill(directory: Path) -> dict:
        (version_dir(directory) / "model.onnx").write_text(text, encoding="utf-8")
        (directory / "config.pbtxt").write_text('name: "m"\n', encoding="utf-8")
        recorded = {"export_version": EXPORT_VERSION, "max_batch_size": 8, **export}
        return {"task": "classify", "source_checkpoint": {"path": "m.pt", "sha256": sha}, "export": recorded}

    return fill


def _settings(**extra) -> dict:
    return {"export_version": EXPORT_VERSION, "max_batch_size": 8, **extra}


def test_an_older_version_is_not_up_to_date_for_a_device_the_entry_config_is_not_for(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    write_entry(repository, "m", _fill("v1", "one"))  # --device cpu
    gpu = {"device": "gpu", "cudnn_conv_algo_search": "EXHAUSTIVE", "cuda_graphs": False}
    with writing_version("2"):
        entry = write_entry(repository, "m", _fill("v2", "two", **gpu))  # --device gpu: a KIND_GPU config
    with writing_version("1"):
        assert not is_up_to_date(entry, "one", _settings(), "lenet")  # was True: the GPU config stayed
        assert is_up_to_date(entry, "one", _settings(**gpu), "lenet")  # the graph is the same on either
        assert not is_up_to_date(entry, "one", _settings(**{**gpu, "cuda_graphs": True}), "lenet")
    with writing_version("2"):
        assert is_up_to_date(entry, "two", _settings(**gpu), "lenet")
        assert not is_up_to_date(entry, "two", _settings(), "lenet")
