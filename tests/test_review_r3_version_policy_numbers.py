"""The stdlib version_policy reader (Triton's python translator model) reads a policy's numbers as
protobuf's text format does, which is how Triton and the gateway read the same config.pbtxt: a leading
zero is octal (``versions: 010`` is version 8) and ``0x`` hex. It read ``010`` as 10, opening another
version than the gateway served, and a hex number failed the model's load with a ValueError."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serving.execution.version_policy import read_version_policy, served_version

POLICIES = [
    "version_policy { specific { versions: 010 } }",
    "version_policy { specific { versions: [07, 0x9, 10] } }",
    "version_policy: { latest: { num_versions: 0x2 } }",
    "version_policy { latest { num_versions: 02 } }",
    "version_policy { specific { versions: +3 versions: 0 } }",
]


@pytest.mark.parametrize("policy", POLICIES)
def test_numbers_read_as_protobuf_reads_them(policy: str) -> None:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(policy, config)
    read = config.version_policy
    kind = read.WhichOneof("policy_choice")
    assert read_version_policy(policy) == (kind, read.latest.num_versions, list(read.specific.versions))


def test_an_octal_version_opens_the_version_the_gateway_serves(tmp_path: Path) -> None:
    for version in ("8", "10"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "model.onnx").write_bytes(b"graph")
    (tmp_path / "config.pbtxt").write_text(
        "version_policy { specific { versions: 010 } }\n", encoding="utf-8"
    )
    assert served_version(str(tmp_path)) == str(tmp_path / "8")
