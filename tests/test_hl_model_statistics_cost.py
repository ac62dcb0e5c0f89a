"""One model's statistics read that model's series alone: they read every model's, so with 200 models
``GET /v2/models/<name>/stats`` (what perf_analyzer asks around each measurement, and a dashboard
polling each model in turn) held the event loop 10 ms a call, 16 ms with two workers (1.3 ms with 10
models), and a poll of every model grew with the square of the models. Answers unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from serving.metrics import GatewayMetrics
from tests.repo_fixtures import repository_client, write_identity_entries

NAMES = tuple(f"m{i:02d}" for i in range(12))
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}
STATISTICS = (  # the families a statistics call reads (GatewayMetrics.statistics_samples)
    "requests",
    "request_seconds",
    "executed_requests",
    "request_stage_seconds",
    "batch_runs",
    "batch_seconds",
    "last_inference",
    "translated_texts",
    "decoder_steps",
)


def _repository(root: Path) -> Path:
    return write_identity_entries(root, NAMES)


def test_one_models_statistics_read_none_of_the_other_models_series(tmp_path) -> None:
    with repository_client(_repository(tmp_path)) as client:
        for name in NAMES:
            for _ in range(2):
                assert client.post(f"/v2/models/{name}/infer", json=BODY).status_code == 200
        every = {stat["name"]: stat for stat in client.get("/v2/models/stats").json()["model_stats"]}
        metrics: GatewayMetrics = client.app.state.metrics
        read: list[str] = []
        for family in STATISTICS:
            metric = getattr(metrics, family)
            at = metric._labelnames.index("model")
            for values, child in list(metric._metrics.items()):
                if values[at] != "m05":  # counted whenever prometheus_client makes its samples
                    child._samples = lambda own=child._samples, model=values[at]: read.append(model) or own()
        answer = client.get("/v2/models/m05/stats")
        assert answer.status_code == 200, answer.text
        assert read == [], sorted(set(read))  # was every other model's series, at every call
        assert answer.json()["model_stats"] == [every["m05"]]
        assert (
            every["m05"]["inference_count"] == 2 and every["m05"]["inference_stats"]["success"]["count"] == 2
        )
        for name in NAMES:  # each the figures the every-model list gives it (the spies still count)
            assert client.get(f"/v2/models/{name}/stats").json()["model_stats"] == [every[name]]


SHARED = textwrap.dedent(
    """
    import os, shutil, sys, time
    from pathlib import Path
    from serving.metrics import GatewayMetrics
    from serving.protocol.statistics import _Samples, _model_stat

    metrics = GatewayMetrics(worker=1)
    names = [f"m{i:02d}" for i in range(12)]
    for i, name in enumerate(names):
        metrics.requests.labels(name, "1", "success").inc(i + 1)
        metrics.request_seconds.labels(name, "1", "success").inc(0.5 * (i + 1))
        metrics.executed_requests.labels(name, "1").inc(i + 1)
        metrics.request_stage_seconds.labels(name, "1", "queue").inc(0.25)
        metrics.batch_runs.labels(name, "1", str(i % 4 + 1)).inc(2)
        metrics.batch_seconds.labels(name, "1", str(i % 4 + 1), "infer").inc(0.125)
        metrics.last_inference.labels(name, "1").set(1000.0 + i)
    shared = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    for kind in ("counter", "gauge_max"):  # a second worker that counted the same
        shutil.copy(shared / f"{kind}_{os.getpid()}.db", shared / f"{kind}_{os.getpid() + 1}.db")
    metrics.last_inference.labels("m03", "1").set(5000.0)  # this worker's later: the larger is kept
    every = _Samples(metrics.statistics_samples())
    for name in names:
        alone = _model_stat(_Samples(metrics.statistics_samples({name})), name, "1")
        assert alone == _model_stat(every, name, "1"), (name, alone)
        i = names.index(name)
        assert alone["inference_stats"]["success"]["count"] == 2 * (i + 1), alone
        assert alone["last_inference"] == (5000000 if name == "m03" else int((1000.0 + i) * 1000)), alone
    print("ok")
    """
)


def test_one_models_statistics_from_the_workers_files_equal_the_every_model_figures(tmp_path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", SHARED], env=env, cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
