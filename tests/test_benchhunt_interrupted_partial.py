"""A bench stopped (Ctrl-C, SIGTERM) after some of its parts finished keeps them: results.json and the
report hold those parts and say the run was interrupted and which parts it did not measure, where
every finished part was thrown away ("interrupted: no results written")."""

from __future__ import annotations

import json

from tests.test_tooling_audit import cheap_machine, fake_repository, run_bench  # noqa: F401 - fixture

ROW = {
    "engine": "onnxruntime",
    "precision": "fp32",
    "batch": 1,
    "n": 10,
    "p50_ms": 1.0,
    "p90_ms": 1.5,
    "p99_ms": 2.0,
    "max_ms": 2.0,
    "mean_ms": 1.1,
    "throughput_ips": 900.0,
    "peak_rss_mib": 100.0,
}


def test_an_interrupted_bench_keeps_the_parts_that_finished(tmp_path, monkeypatch, cheap_machine):  # noqa: F811
    from bench import cpu_parts, inputs

    repository = fake_repository(tmp_path / "repo", {"resnet18": "classify"})
    monkeypatch.setattr(inputs, "cpu_problem", lambda args, wanted: None)
    monkeypatch.setattr(cpu_parts, "_classify_engines", lambda args, profile: [dict(ROW)])

    def interrupted(args, profile, out):
        raise KeyboardInterrupt

    monkeypatch.setattr(cpu_parts, "_classify_servers", interrupted)
    out = tmp_path / "out"
    argv = ["--repository", str(repository), "--only", "engines", "servers", "--output", str(out)]
    raised = run_bench(cheap_machine, argv)

    assert isinstance(raised, SystemExit) and raised.code == 130, raised
    results = json.loads((out / "results.json").read_text())
    assert results["interrupted"] == {"finished": ["engines"], "not_measured": ["servers"]}
    assert results["engines"][0]["throughput_ips"] == 900.0 and "servers" not in results
    report = (out / "report.md").read_text()
    assert "**Interrupted**" in report and "not measured: servers" in report
    assert "| onnxruntime | fp32 | 1 |" in report
    notes = [t.get("note", "") for t in results["targets"]]
    assert "not measured: the run was interrupted before servers finished" in notes
    assert not any("(--only)" in note for note in notes)
