"""One model's statistics (``GatewayMetrics.statistics_samples({model})``, which reads that model's
series alone) equal what the every-model path gives that model, sample for sample and in the
statistics' figures: over several versions, translators' series (texts, decoder steps), names that
are each other's prefix or suffix (``m``, ``m_int8``), names JSON escapes (quotes, backslashes,
non-ASCII, a name holding another's ``"model": "m"``), and, with the workers' metrics shared, a second
worker's files and a gone worker's, counters summed and the last-inference max gauge at its largest."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    r"""
    import os, shutil, subprocess, sys
    from pathlib import Path
    from serving.metrics import GatewayMetrics
    from serving.protocol.statistics import _Samples, _model_stat

    NAMES = ["m", "m_int8", "int8_m", "mm", 'q"uote', "back\\slash", "caf\u00e9", "\u6a21\u578b",
             "e\U0001f600", 'x", "model": "m', "tab\tnl\n", "\udcff"]
    metrics = GatewayMetrics(worker=1)

    def record(scale):
        for i, name in enumerate(NAMES):
            for version in ("1", "2", ""):
                k = scale * (i + 1) + (2 if version == "2" else 0)
                metrics.requests.labels(name, version, "success").inc(k)
                metrics.requests.labels(name, version, "failure").inc(1)
                metrics.request_seconds.labels(name, version, "success").inc(0.5 * k)
                metrics.executed_requests.labels(name, version).inc(k)
                for stage in ("queue", "input", "infer", "output"):
                    metrics.request_stage_seconds.labels(name, version, stage).inc(0.25 * k)
                for size in ("1", "4", str(i % 3 + 2)):
                    metrics.batch_runs.labels(name, version, size).inc(scale)
                    metrics.batch_seconds.labels(name, version, size, "infer").inc(0.125 * scale)
                metrics.last_inference.labels(name, version).set(1000.0 * scale + i)
                if i % 2:  # a translator's series
                    metrics.translated_texts.labels(name, version).inc(3 * k)
                    metrics.decoder_steps.labels(name, version).inc(7 * k)
            metrics.tokens_generated.labels(name).inc(5)

    def rows(samples):
        return sorted((s.name, sorted(s.labels.items()), s.value) for s in samples)

    record(1)
    shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if shared:
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        for kind in ("counter", "gauge_max"):  # a second worker, and one gone: their files stay
            for pid in (os.getpid() + 100000, gone.pid):
                shutil.copy(Path(shared) / f"{kind}_{os.getpid()}.db", Path(shared) / f"{kind}_{pid}.db")
        record(2)  # this worker's later figures: counters add up, its last inference is the largest
        metrics.last_inference.labels("m", "1").set(1.0)  # a smaller one: another file's is kept
    every = metrics.statistics_samples()
    assert {s.labels["model"] for s in every} >= set(NAMES)
    for name in NAMES:
        alone = metrics.statistics_samples({name})
        assert rows(alone) == rows(s for s in every if s.labels.get("model") == name), repr(name)
        for version in ("1", "2", ""):
            want = _model_stat(_Samples(every), name, version)
            assert _model_stat(_Samples(alone), name, version) == want, (repr(name), version)
            assert want["inference_stats"]["success"]["count"] > 0 and want["last_inference"] > 0
    pair = metrics.statistics_samples({"m", "m_int8"})
    assert rows(pair) == rows(s for s in every if s.labels.get("model") in ("m", "m_int8"))
    assert metrics.statistics_samples({"nothing"}) == []
    print("ok")
    """
)


@pytest.mark.parametrize("shared", [False, True], ids=["one-process", "workers-files"])
def test_one_models_statistics_equal_the_every_model_path_for_it(tmp_path: Path, shared: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if shared:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
