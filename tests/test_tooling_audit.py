"""The tooling around the core as a user meets it: `python -m bench`'s checks and failures, the demo's
gateway and messages, a stopped command's servers, and `make clean`'s guards."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent

MACHINE = {
    "cpu": "test CPU",
    "cpu_flags": [],
    "caches": {},
    "usable_cores": 2,
    "memory_gib": 8.0,
    "gpu": None,
    "libraries": {"numpy": "2"},
}


def fake_repository(root: Path, entries: dict[str, str]) -> Path:
    """``root`` with one ``kiln.json`` per entry name, of the given task (no model files)."""
    for name, task in entries.items():
        (root / name).mkdir(parents=True)
        meta = {"task": task, "inputs": [{"dims": [-1, 8, 8, 1]}]}
        (root / name / "kiln.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def cheap_machine(monkeypatch):
    """The bench's machine description and speed probe without probing (no timing in tests)."""
    import bench.__main__ as bench_main

    monkeypatch.setattr(bench_main, "machine_info", lambda: json.loads(json.dumps(MACHINE)))
    monkeypatch.setattr(bench_main, "speed_probe", lambda: {"product_gflops": 1.0, "copy_gbps": 1.0})
    monkeypatch.delenv("KILN_PERF_ANALYZER", raising=False)
    return bench_main


def run_bench(bench_main, argv: list[str]) -> BaseException | None:
    """``python -m bench argv`` in-process; what it raised (an escaping KeyboardInterrupt included,
    caught here so it cannot end the test session)."""
    try:
        bench_main.main(argv)
    except BaseException as exc:  # noqa: BLE001 - the test reads what came out
        return exc
    return None


@pytest.mark.parametrize(
    ("only", "entries", "checkpoints", "says"),
    [
        ("servers", {"resnet18": "classify"}, [], "resnet18.pt is missing"),
        ("translation", {"resnet18": "classify"}, ["resnet18"], "transformer is not an exported entry"),
        (
            "translation",
            {"resnet18": "classify", "transformer": "translate"},
            [],
            "transformer.pt is missing",
        ),
        ("engines", {"resnet18": "translate"}, [], "is a translate entry, not a classify one"),
    ],
)
def test_bench_names_a_missing_input_before_it_measures_or_writes_anything(
    tmp_path, monkeypatch, cheap_machine, only, entries, checkpoints, says
):
    from bench import engines, servers, translation

    started: list[str] = []
    for module, name in ((servers, "run_servers"), (translation, "run"), (engines, "run_jobs")):
        monkeypatch.setattr(module, name, lambda *a, name=name, **k: started.append(name) or {})
    repository = fake_repository(tmp_path / "repo", entries)
    (tmp_path / "ckpt").mkdir()
    for name in checkpoints:
        (tmp_path / "ckpt" / f"{name}.pt").write_bytes(b"")
    out = tmp_path / "out"
    argv = ["--repository", str(repository), "--checkpoints", str(tmp_path / "ckpt"), "--only", only]
    raised = run_bench(cheap_machine, [*argv, "--output", str(out)])
    assert isinstance(raised, SystemExit) and says in str(raised.code), raised
    assert started == [] and not out.exists()


def test_bench_refuses_an_output_that_is_a_file_or_holds_an_earlier_result(tmp_path, cheap_machine):
    repository = fake_repository(tmp_path / "repo", {"resnet18": "classify"})
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "results.json").write_text("{}")
    for out, says in ((a_file, "is a file"), (earlier, "already holds a bench result")):
        argv = ["--repository", str(repository), "--only", "engines", "--output", str(out)]
        raised = run_bench(cheap_machine, argv)
        assert isinstance(raised, SystemExit) and says in str(raised.code), raised
    assert a_file.read_text() == "mine" and (earlier / "results.json").read_text() == "{}"


def test_a_part_that_fails_is_named_in_the_written_results_and_the_exit_status(
    tmp_path, monkeypatch, cheap_machine
):
    """Minutes of engine rows are not lost to a server that would not start: they are written, the
    failure named beside them, and the exit status says the run was not whole."""
    from bench import cpu_parts, servers

    repository = fake_repository(tmp_path / "repo", {"resnet18": "classify"})
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "resnet18.pt").write_bytes(b"")
    engine_row = {
        "engine": "onnxruntime",
        "precision": "fp32",
        "batch": 1,
        "p50_ms": 1.0,
        "throughput_ips": 9.0,
    }
    monkeypatch.setattr(cpu_parts, "_classify_engines", lambda args, profile: [dict(engine_row)])

    def gateway_fails(*args, **kwargs):
        raise RuntimeError("python -m serving --model-repository exited with 1 before it was ready")

    monkeypatch.setattr(servers, "run_servers", gateway_fails)
    out = tmp_path / "out"
    argv = ["--repository", str(repository), "--checkpoints", str(tmp_path / "ckpt")]
    raised = run_bench(cheap_machine, [*argv, "--only", "engines", "servers", "--output", str(out)])
    assert isinstance(raised, SystemExit) and raised.code not in (0, None), raised
    assert "servers" in str(raised.code)
    results = json.loads((out / "results.json").read_text())
    assert [{k: row[k] for k in engine_row} for row in results["engines"]] == [engine_row]
    assert "exited with 1 before it was ready" in results["failed"]["servers"]
    assert "Parts that failed" in (out / "report.md").read_text()


def test_an_interrupted_bench_writes_no_result_and_exits_130(tmp_path, monkeypatch, cheap_machine):
    from bench import cpu_parts

    repository = fake_repository(tmp_path / "repo", {"resnet18": "classify"})

    def interrupted(args, profile):
        raise KeyboardInterrupt

    monkeypatch.setattr(cpu_parts, "_classify_engines", interrupted)
    out = tmp_path / "out"
    raised = run_bench(
        cheap_machine, ["--repository", str(repository), "--only", "engines", "--output", str(out)]
    )
    assert isinstance(raised, SystemExit) and raised.code == 130, raised
    assert not (out / "results.json").exists() and not (out / "report.md").exists()


def test_perf_analyzer_failing_keeps_the_rows_of_kilns_own_clients(tmp_path, monkeypatch):
    from bench import cpu_parts, perf_analyzer, servers
    from bench.options import PROFILES

    monkeypatch.setattr(servers, "run_servers", lambda *a, **k: {"closed": ["row"], "errors": {}})

    def refused(*args, **kwargs):
        raise RuntimeError("python -m serving was not ready after 120 s")

    monkeypatch.setattr(perf_analyzer, "side_by_side", refused)
    args = SimpleNamespace(
        checkpoints=tmp_path, classifier="resnet18", repository=tmp_path, threads=1, gateway_workers=1
    )
    profile = {**PROFILES["quick"]}
    result = cpu_parts._classify_servers(args, profile, tmp_path)
    assert result["closed"] == ["row"]
    assert "not ready after 120 s" in result["perf_analyzer"]["skipped"]


def test_a_naive_baseline_that_does_not_start_is_reported_beside_the_servers_rows(tmp_path, monkeypatch):
    from bench import servers

    repository = fake_repository(tmp_path / "repo", {"resnet18": "classify"})
    monkeypatch.setattr(
        servers, "_gateway_targets", lambda run, workers, dims: run.results["closed"].append("gw")
    )
    monkeypatch.setattr(servers, "_triton_targets", lambda run: None)

    def no_checkpoint(run, checkpoint):
        raise RuntimeError(f"python -m bench.naive {checkpoint} exited with 1 before it was ready")

    monkeypatch.setattr(servers, "_naive_target", no_checkpoint)
    results = servers.run_servers(
        repository,
        tmp_path / "missing.pt",
        "resnet18",
        tmp_path / "logs",
        concurrencies=(1,),
        duration_s=0.1,
        threads=1,
    )
    assert results["closed"] == ["gw"]
    assert "missing.pt exited with 1" in results["errors"]["naive"]


@pytest.mark.parametrize("flag", ["--threads", "--gateway-workers", "--serving-workers"])
def test_thread_and_process_counts_below_one_are_refused_by_the_parser(flag, capsys):
    from bench.__main__ import parse_args

    with pytest.raises(SystemExit) as stopped:
        parse_args([flag, "0"])
    assert stopped.value.code == 2
    assert "is not at least 1" in capsys.readouterr().err


SERVER = """
import socket, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Ok(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass

class Beside(HTTPServer):  # binds beside the port its parent holds (SO_REUSEPORT)
    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

Beside(("127.0.0.1", int(sys.argv[1])), Ok).serve_forever()
"""

COMMAND = """
import sys, threading
from kiln.processes import running, stop_on_sigterm
from serving.triton.ports import held_port

stop_on_sigterm()
with held_port(reuse_port=True) as held:
    port = held.getsockname()[1]
    with running([sys.executable, "-c", {server!r}, str(port)], f"http://127.0.0.1:{{port}}/") as server:
        print(server.pid, flush=True)
        threading.Event().wait()
"""


def test_a_command_stopped_with_sigterm_stops_the_server_it_started(tmp_path):
    """`kill <pid>` of the demo or the bench must not leave their servers running with the ports."""
    script = tmp_path / "command.py"
    script.write_text(COMMAND.format(server=textwrap.dedent(SERVER)))
    command = subprocess.Popen(
        [sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    server_pid = None
    try:
        line = command.stdout.readline()  # once the server answers ready
        assert line.strip().isdigit(), command.stderr.read()
        server_pid = int(line)
        command.send_signal(signal.SIGTERM)
        command.wait(timeout=60)
        with pytest.raises(ProcessLookupError):
            os.kill(server_pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(server_pid, signal.SIGKILL)  # an orphan left by a failing run
        if command.poll() is None:
            command.kill()
        command.wait()


def test_the_demo_and_the_bench_turn_sigterm_into_an_interrupt_before_they_start_anything(
    tmp_path, monkeypatch
):
    import torch

    import bench.__main__ as bench_main
    from kiln import demo

    for command, argv in ((bench_main.main, ["--repository", str(tmp_path)]), (demo.main, ["--gpu"])):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        with pytest.raises(SystemExit):
            command(argv)
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler), command
        with pytest.raises(KeyboardInterrupt):
            handler(signal.SIGTERM, None)


def test_a_gateway_that_does_not_start_stops_the_demo_with_one_line(tmp_path, monkeypatch, capsys):
    from kiln import demo

    @contextlib.contextmanager
    def exits_early(cmd, ready_url, **kwargs):
        raise RuntimeError("python -m serving --model-repository exited with 1 before it was ready")
        yield

    monkeypatch.setattr(demo, "running", exits_early)
    with pytest.raises(SystemExit) as stopped, demo.gateway(tmp_path):
        pass
    assert stopped.value.code == 1
    out = capsys.readouterr().out
    assert "The gateway did not start" in out and "exited with 1 before it was ready" in out


def test_the_demo_names_the_checkpoints_it_reuses_where_they_are(tmp_path, monkeypatch, capsys):
    from kiln import demo

    checkpoints = tmp_path / "my-checkpoints"
    checkpoints.mkdir()
    for name in ("resnet18.pt", "transformer.pt"):
        (checkpoints / name).write_bytes(b"")
    monkeypatch.setattr("training.checkpoint.load_checkpoint", lambda path: {})  # stand-ins, read as sound
    stages: list[str] = []
    monkeypatch.setattr(demo, "run_stage", lambda title, cmd: stages.append(title))

    def stop_here(repository, **served):
        raise SystemExit(0)

    monkeypatch.setattr(demo, "gateway", stop_here)
    args = SimpleNamespace(checkpoints=checkpoints, repository=tmp_path / "repo", fresh=False)
    with pytest.raises(SystemExit):
        demo.run_demo(args, demo.CPU)
    out = capsys.readouterr().out.replace("\n", "")
    assert (
        f"reusing {checkpoints / 'resnet18.pt'}" in out and f"reusing {checkpoints / 'transformer.pt'}" in out
    )
    assert [s.split()[0] for s in stages] == ["Export"]


def make_clean(workdir: Path, *variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(workdir), "clean", *variables],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_clean_refuses_a_repository_that_would_empty_the_checkout_and_skips_a_missing_one(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", checkout / "Makefile")
    (checkout / "pyproject.toml").write_text("")
    (checkout / "model_repository" / "resnet18").mkdir(parents=True)
    (checkout / "model_repository" / "resnet18" / "kiln.json").write_text("{}")  # an entry export wrote
    (checkout / "model_repository" / "README.md").write_text("kept")
    for variables in (["REPOSITORY="], ["REPOSITORY=."], [f"REPOSITORY={tmp_path}"], ["CHECKPOINTS="]):
        done = make_clean(checkout, *variables)
        assert done.returncode != 0, variables
        assert (checkout / "Makefile").exists() and (checkout / ".git").is_dir(), variables
        assert (checkout / "model_repository" / "resnet18").is_dir(), variables
    assert make_clean(checkout, "REPOSITORY=never-exported").returncode == 0
    assert make_clean(checkout).returncode == 0
    assert sorted(p.name for p in (checkout / "model_repository").iterdir()) == ["README.md"]
    assert (checkout / "Makefile").exists() and (checkout / ".git").is_dir()


def test_a_perf_analyzer_named_by_the_environment_and_missing_is_not_replaced_by_another(
    tmp_path, monkeypatch, cheap_machine
):
    """A misspelt KILN_PERF_ANALYZER must not measure with the default build while the user believes
    it measured theirs: the bench says so before it starts."""
    from bench import perf_analyzer_tool

    installed = tmp_path / "venv" / "perf-analyzer" / "bin" / "perf_analyzer"
    installed.parent.mkdir(parents=True)
    installed.write_text("#!/bin/sh\n")
    installed.chmod(0o755)
    monkeypatch.setenv(perf_analyzer_tool.ENV_BINARY, str(tmp_path / "my-build" / "perf_analyzer"))
    assert perf_analyzer_tool.find_perf_analyzer(tmp_path / "venv") is None
    repository = fake_repository(tmp_path / "repo", {"resnet18": "classify"})
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "resnet18.pt").write_bytes(b"")
    argv = ["--repository", str(repository), "--checkpoints", str(tmp_path / "ckpt"), "--only", "servers"]
    raised = run_bench(cheap_machine, [*argv, "--output", str(tmp_path / "out")])
    assert isinstance(raised, SystemExit) and "KILN_PERF_ANALYZER=" in str(raised.code), raised
    assert not (tmp_path / "out").exists()


def test_the_translation_part_alone_needs_no_exported_classifier(tmp_path, monkeypatch, cheap_machine):
    """`python -m bench --only translation` on a repository holding only the translator runs."""
    from bench import translation

    monkeypatch.setattr(translation, "run", lambda *a, **k: {"targets": [], "markdown": "## Translation\n"})
    repository = fake_repository(tmp_path / "repo", {"transformer": "translate"})
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "transformer.pt").write_bytes(b"")
    out = tmp_path / "out"
    argv = ["--repository", str(repository), "--checkpoints", str(tmp_path / "ckpt"), "--only", "translation"]
    assert run_bench(cheap_machine, [*argv, "--output", str(out)]) is None
    assert "## Translation" in (out / "report.md").read_text()


def test_a_triton_port_the_caller_chose_that_is_taken_is_named_before_triton_starts(tmp_path) -> None:
    """Triton exited on it after loading every model, the start was retried three times on the same
    busy port ('retrying on new ones'), and ~90 lines of its log stood for 'port in use'."""
    import socket

    from serving.triton.server import TritonError, TritonServer

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = TritonServer(tmp_path, tmp_path / "work", http_port=port)
        with pytest.raises(TritonError, match=rf"^--http-port {port} is already in use: a server listens"):
            server._check_chosen_ports()
    server._check_chosen_ports()  # free again: nothing to say


def test_serving_triton_names_a_repository_that_is_a_file(tmp_path, capsys) -> None:
    from serving.triton.__main__ import main

    file = tmp_path / "repo"
    file.write_text("")
    assert main(["--model-repository", str(file)]) == 2
    assert "is not a directory" in " ".join(capsys.readouterr().err.split())  # rich wraps the line
