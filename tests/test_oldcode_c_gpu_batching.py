"""A GPU export's batching report (kiln.json ``parity.batching`` and the export summary) states the
batching settings its config.pbtxt carries: it said "no preferred sizes, no queue delay" (and "a queue
delay would only add latency") while the GPU config it wrote had seven preferred sizes and 500 us."""

from __future__ import annotations

import json

from export import batching
from export.specs import classifier_spec
from export.triton_config import parse_pbtxt
from tests.classifier_exports import write_checkpoint

PREP = {"input_size": [32, 32], "channels": 1, "mean": [0.5], "std": [0.25]}


def test_a_gpu_exports_batching_report_states_the_preferred_sizes_and_delay_its_config_carries(
    tmp_path, capsys
):
    from export.__main__ import main

    write_checkpoint(tmp_path / "ckpts", "lenet")
    repo = tmp_path / "repo"
    argv = [str(tmp_path / "ckpts"), "--repository", str(repo), "--tensorrt", "off", "--device", "gpu"]
    assert main([*argv, "--precisions", "fp32"]) == 0
    summary = " ".join(capsys.readouterr().out.split())
    config = parse_pbtxt((repo / "lenet" / "config.pbtxt").read_text())
    reported = json.loads((repo / "lenet" / "kiln.json").read_text())["parity"]["batching"]
    assert reported["preferred_batch_size"] == list(config.dynamic_batching.preferred_batch_size)
    assert reported["max_queue_delay_microseconds"] == config.dynamic_batching.max_queue_delay_microseconds
    assert reported["preferred_batch_size"] and reported["max_queue_delay_microseconds"] > 0
    assert "no queue delay" not in summary and "would only add latency" not in summary
    assert "500 us queue delay" in summary


def test_a_cpu_configs_batching_report_keeps_tritons_defaults():
    spec = classifier_spec("lenet", PREP, 10)
    result = batching.measure(lambda feeds: None, spec, budget_s=0.0)
    assert result["preferred_batch_size"] == [] and result["max_queue_delay_microseconds"] == 0
    assert "no queue delay" in result["recommendation"] or "queue delay would" in result["recommendation"]
