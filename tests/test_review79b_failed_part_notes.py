"""A classification target a part that failed left unmeasured says that part failed: its note said the
run was interrupted before it (a bench stopped later, in another part) or that ``--only`` left it out,
and an interrupted report named it among the parts the stop did not measure."""

from __future__ import annotations

import json

from bench.targets import targets
from tests.test_benchhunt_interrupted_partial import ROW
from tests.test_tooling_audit import cheap_machine, fake_repository, run_bench  # noqa: F401 - fixture


def _notes(results: dict) -> set[str]:
    return {row["note"] for row in targets(results, "resnet18") if row.get("note")}


def test_a_target_a_failed_part_left_out_says_it_failed() -> None:
    failed = {"engines": [dict(ROW)], "failed": {"servers": "RuntimeError: no start"}}
    assert _notes(failed) == {"not measured: servers failed (see Parts that failed)"}
    stopped = {**failed, "interrupted": {"finished": ["engines"], "not_measured": ["servers"]}}
    assert _notes(stopped) == {"not measured: servers failed (see Parts that failed)"}


def test_an_interrupted_bench_does_not_name_a_failed_part_as_not_measured_by_the_stop(
    tmp_path,
    monkeypatch,
    cheap_machine,  # noqa: F811
) -> None:
    from bench import cpu_parts, inputs

    repository = fake_repository(tmp_path / "repo", {"resnet18": "classify"})
    monkeypatch.setattr(inputs, "cpu_problem", lambda args, wanted: None)
    monkeypatch.setattr(cpu_parts, "_classify_engines", lambda args, profile: [dict(ROW)])

    def fails(args, profile, out):
        raise RuntimeError("the gateway would not start")

    def interrupted(args, profile, out):
        raise KeyboardInterrupt

    monkeypatch.setattr(cpu_parts, "_classify_servers", fails)
    monkeypatch.setattr(cpu_parts, "_translation", interrupted)
    out = tmp_path / "out"
    argv = [
        "--repository",
        str(repository),
        "--only",
        "engines",
        "servers",
        "translation",
        "--output",
        str(out),
    ]
    raised = run_bench(cheap_machine, argv)

    assert isinstance(raised, SystemExit) and raised.code == 130, raised
    results = json.loads((out / "results.json").read_text())
    assert results["interrupted"] == {"finished": ["engines"], "not_measured": ["translation"]}
    assert "servers" in results["failed"]
    notes = {t.get("note", "") for t in results["targets"]}
    assert "not measured: servers failed (see Parts that failed)" in notes, notes
    assert not any("interrupted before servers" in note for note in notes), notes
