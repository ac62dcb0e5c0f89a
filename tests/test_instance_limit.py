"""An ``instance_group`` count beyond what any layout needs (a typo: 1000 for 10) fails that model's
load with a message naming it, instead of opening sessions until the memory runs out; the models
beside it serve."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serving.execution import placement
from serving.execution.base import InferRequest
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.repository import Repository
from tests.repo_fixtures import SIZE, build_classifier_repository


def config(groups: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(f'name: "m" max_batch_size: 8 {groups}', model_config_pb2.ModelConfig())


@pytest.mark.parametrize(
    ("groups", "count"),
    [
        ("", 1),
        ("instance_group { kind: KIND_CPU }", 1),
        ("instance_group { count: 2 kind: KIND_CPU }", 2),
        ("instance_group { count: 3 } instance_group { }", 4),
        (f"instance_group {{ count: {placement.MAX_INSTANCES} }}", placement.MAX_INSTANCES),
    ],
)
def test_the_instance_count_is_the_groups_sum_with_triton_defaults(groups, count):
    assert placement.instance_count(config(groups)) == count


def test_more_instances_than_the_limit_is_an_error_naming_the_model_and_the_counts():
    too_many = config("instance_group { count: 60 } instance_group { count: 1000 }")
    with pytest.raises(
        placement.PlacementError, match=r"model 'm': instance_group asks for 1060 instances \(60 \+ 1000\)"
    ):
        placement.instance_count(too_many)


def test_a_model_asking_for_a_thousand_instances_fails_alone(tmp_path):
    root = build_classifier_repository(tmp_path / "repo", ("lenet",))
    shutil.copytree(root / "lenet", root / "typo")
    path = root / "typo" / "config.pbtxt"
    cfg = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    cfg.name = "typo"
    del cfg.instance_group[:]
    cfg.instance_group.add(count=1000, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
    path.write_text(text_format.MessageToString(cfg))
    images = {"images": np.zeros((1, SIZE, SIZE, 1), np.uint8)}

    async def check():
        backend = OnnxRuntimeBackend(Repository(root))
        await backend.start()
        try:
            assert not await backend.model_ready("typo")
            with pytest.raises(Exception, match="asks for 1000 instances"):
                await backend.infer(InferRequest("typo", images))
            assert await backend.model_ready("lenet")
            answer = await backend.infer(InferRequest("lenet", images))
            assert answer.outputs["logits"].shape[0] == 1
        finally:
            await backend.stop()

    asyncio.run(check())
