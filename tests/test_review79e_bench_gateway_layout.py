"""The bench's gateway rows say how many gateway workers each ran: the ``gateway`` rows run
``--gateway-workers`` processes (2 on 2 cores) while the ``gateway->triton`` ones run one, and neither the
classifier's servers table nor the translation table said so, so a reader compared them as alike. Made-up
results only: no server starts."""

from __future__ import annotations

import contextlib
from pathlib import Path

from bench import report, servers
from bench import translation_gateway as tg
from bench.translation_rows import Workload


def _closed(target: str) -> dict:
    return {
        "target": target,
        "protocol": "http",
        "concurrency": 64,
        "throughput_rps": 100.0,
        "p50_ms": 1.0,
        "p90_ms": 2.0,
        "p99_ms": 3.0,
        "max_ms": 4.0,
        "errors": 0,
    }


def test_the_servers_table_says_each_gateway_rows_worker_count(monkeypatch, tmp_path):
    def gateway_targets(run, workers, dims):
        run.results["closed"].append(_closed("gateway"))

    monkeypatch.setattr(servers, "_input_dims", lambda repository, model: (1, 2, 2))
    monkeypatch.setattr(servers, "_gateway_targets", gateway_targets)
    monkeypatch.setattr(
        servers, "_triton_targets", lambda run: run.results["closed"].append(_closed("gateway->triton"))
    )
    monkeypatch.setattr(servers, "_naive_target", lambda run, checkpoint: None)
    results = servers.run_servers(
        tmp_path,
        tmp_path / "c.pt",
        "m",
        tmp_path / "w",
        concurrencies=(64,),
        duration_s=0.1,
        threads=2,
        workers=2,
    )
    text = report.server_section(results, best_direct_ips=1000.0)
    assert (
        "`gateway`: 2 gateway workers (`--workers`, the bench's `--gateway-workers`); "
        "`gateway->triton`: 1 gateway worker forwarding to Triton." in text
    )
    assert "gateway workers" not in report.server_section(
        {"closed": [_closed("gateway")]}, 1000.0
    )  # older results


def test_the_translation_rows_through_triton_name_their_one_gateway_worker(monkeypatch, tmp_path):
    import serving.triton as triton_module

    class Triton:
        grpc_url = "127.0.0.1:1"

        def __init__(self, *args, **kwargs) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

    commands = []
    monkeypatch.setattr(triton_module, "find_triton", lambda: "tritonserver")
    monkeypatch.setattr(triton_module, "TritonServer", Triton)
    monkeypatch.setattr(tg, "running", lambda cmd, *a, **k: commands.append(cmd) or contextlib.nullcontext())
    monkeypatch.setattr(tg, "_gateway_run", lambda url, model, texts, *a, **k: texts)
    monkeypatch.setattr(tg, "run_client", lambda texts: (list(texts), 1.0, [1.0] * len(texts)))
    w = Workload(
        "fr", Path("fr.pt"), {"model": {"args": {}}}, ["un", "deux"], ["un", "deux"], lambda hyps: len(hyps)
    )
    rows = tg.triton_rows(tmp_path, [w], beams=(4,), concurrency=2, threads=2, out=tmp_path)["fr"]
    assert [r["engine"] for r in rows] == [
        "gateway->triton (scheduler, 1 worker)",
        "gateway->triton (triton, 1 worker)",
    ]
    assert all("--workers" not in cmd for cmd in commands)  # what the label says: the gateway ran one worker
