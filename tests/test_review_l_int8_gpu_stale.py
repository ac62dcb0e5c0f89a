"""A classifier's int8 entry exported for the GPU before its config lost TensorRT's INT8 accelerator
(``--tensorrt off``, or no TensorRT where the export ran) was found up to date by the next export of
the same checkpoint: its config kept the accelerator whose TensorRT EP read the uint8 activations as
int8, and Triton served it so. Such an entry is stale; the fp32 one beside it stays current."""

from __future__ import annotations

import json

from export import repository
from export.pipeline import export_checkpoint
from export.triton_config import parse_pbtxt
from tests.classifier_exports import tiny_images, write_checkpoint

INT8_ACCELERATOR = """optimization {
  execution_accelerators {
    gpu_execution_accelerator {
      name: "tensorrt"
      parameters { key: "precision_mode" value: "INT8" }
      parameters { key: "max_workspace_size_bytes" value: "1073741824" }
    }
  }
}
"""


def _accelerators(entry) -> list:
    config = parse_pbtxt((entry / "config.pbtxt").read_text())
    return list(config.optimization.execution_accelerators.gpu_execution_accelerator)


def _as_written_before(entry) -> None:
    """The entry as the export wrote it with the INT8 accelerator: that config, and its settings."""
    config = (entry / "config.pbtxt").read_text()
    (entry / "config.pbtxt").write_text(config + INT8_ACCELERATOR)
    assert _accelerators(entry)[0].parameters["precision_mode"] == "INT8"
    meta = json.loads((entry / "kiln.json").read_text())
    meta["export"].pop("tensorrt_accelerator", None)
    meta["artifacts"] = repository.hash_artifacts(entry)
    (entry / "kiln.json").write_text(json.dumps(meta))


def test_a_gpu_int8_entry_written_with_the_int8_accelerator_is_rewritten_without_it(tmp_path):
    ckpt = write_checkpoint(tmp_path / "ckpts", "lenet")
    repo = tmp_path / "repo"
    options = {"tensorrt": "off", "device": "gpu", "precisions": ("fp32", "int8")}
    first = export_checkpoint(ckpt, repo, validation=tiny_images(), **options)
    assert {r.entry: r.status for r in first} == {
        "lenet": "written",
        "lenet_int8": "written",
        "lenet_trt": "skipped",
    }
    assert _accelerators(repo / "lenet_int8") == []
    _as_written_before(repo / "lenet_int8")
    again = {r.entry: r.status for r in export_checkpoint(ckpt, repo, validation=tiny_images(), **options)}
    assert again["lenet_int8"] == "written" and again["lenet"] == "up to date"
    assert _accelerators(repo / "lenet_int8") == []
