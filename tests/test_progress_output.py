"""Output on long work as a user reads it: a bar (or spinner) on a terminal with log records printed
above it, never on its line; plain lines in a log or a pipe (no carriage returns, no ANSI, nothing
wrapped at 80 columns); ``--no-progress`` to turn the bars off."""

from __future__ import annotations

import io
import logging
import re
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from rich.console import Console

from tests.repo_fixtures import _tiny_checkpoint
from tests.test_triton_audit import _StandInServer

ESCAPE = re.compile(r"\x1b\[([\d;]*)([A-Za-z])|\x1b\[\?25[lh]")
LONG = "/tmp/" + "a-directory-with-a-long-name/" * 3  # past a log's 80 columns


def screen(text: str) -> list[str]:
    """The lines a terminal shows once ``text`` is drawn: carriage returns, line clears (``ESC[2K``) and
    cursor-up moves (``ESC[1A``) applied, colours dropped."""
    lines, column = [""], 0
    for piece in re.split(r"(\x1b\[[\d;]*[A-Za-z]|\x1b\[\?25[lh]|\r|\n)", text):
        move = ESCAPE.fullmatch(piece)
        if piece == "\n":
            lines.append("")
            column = 0
        elif piece == "\r":
            column = 0
        elif move and move.group(2) == "K":
            lines[-1], column = "", 0
        elif move and move.group(2) == "A":
            del lines[len(lines) - int(move.group(1) or 1) :]
            column = 0
        elif piece and not move:
            lines[-1] = lines[-1][:column] + piece + lines[-1][column + len(piece) :]
            column += len(piece)
    return lines


@contextmanager
def bare_root_logger() -> Iterator[None]:
    """The root logger without pytest's handlers for the block, so that a command's ``basicConfig``
    installs its own as it does when run; both put back afterwards."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        yield
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def terminal(buffer: io.StringIO) -> Console:
    return Console(file=buffer, force_terminal=True, width=100, color_system="standard")


# --- python -m export ---------------------------------------------------------------------------


@pytest.fixture
def export_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``python -m export`` in-process over one checkpoint whose export is two steps with a warning
    logged between them (the TorchScript fallback's, as a translator's encoder logs it)."""
    import export.pipeline
    from export.__main__ import main

    checkpoint = _tiny_checkpoint(tmp_path / "ck" / "lenet.pt", "lenet", 0)

    def two_steps(path, repository, options, *, on_step, data_path=None):
        on_step("lenet: freeze")
        logging.getLogger("export.fake").warning("lenet: dynamic axes fixed by torch.export")
        on_step("lenet: parity fp32")
        return []

    monkeypatch.setattr(export.pipeline, "export_checkpoint", two_steps)
    monkeypatch.delenv("KILN_MODELS_FROM", raising=False)  # a developer's own modules: not this test's
    return lambda *flags: main([str(checkpoint), "--repository", str(tmp_path / "repo"), *flags])


def test_export_in_a_log_prints_each_step_on_a_line_of_its_own(export_run, capsys):
    """Off a terminal the bar was off and nothing else said what ran: minutes of silence in a CI
    log (and a CI's no-output timeout), until the summary."""
    assert export_run() == 0
    err = capsys.readouterr().err
    assert "[1/1] lenet: freeze\n" in err and "[1/1] lenet: parity fp32\n" in err
    assert "\r" not in err and "\x1b" not in err


def test_export_with_no_progress_prints_no_step_line(export_run, capsys):
    assert export_run("--no-progress") == 0
    assert "[1/1]" not in capsys.readouterr().err


def test_export_on_a_terminal_prints_a_warning_above_its_bar_not_on_the_bar_s_line(
    export_run, monkeypatch: pytest.MonkeyPatch
):
    """A warning logged while the bar was drawn went to stderr directly and ran on from the bar:
    ``⠼ gru_attention: export encoder ━━━ 0:00:09WARNING gru_attention_encoder: ...``."""
    import export.__main__ as export_main

    monkeypatch.setenv("TERM", "xterm-256color")
    err, out = io.StringIO(), io.StringIO()
    monkeypatch.setattr(export_main, "Console", lambda stderr=False: terminal(err if stderr else out))
    with bare_root_logger():
        assert export_run() == 0
    shown = screen(err.getvalue())
    assert any(
        line.startswith("WARNING") and "lenet: dynamic axes fixed by torch.export" in line for line in shown
    ), shown
    assert any("lenet: parity fp32" in line and "━" in line for line in shown), shown


def test_export_on_a_dumb_terminal_prints_plain_step_lines(export_run, monkeypatch: pytest.MonkeyPatch):
    """TERM=dumb: rich draws a bar only once it stops, the last step's, read as a step left hanging."""
    import export.__main__ as export_main

    monkeypatch.setenv("TERM", "dumb")
    err, out = io.StringIO(), io.StringIO()
    monkeypatch.setattr(export_main, "Console", lambda stderr=False: terminal(err if stderr else out))
    assert export_run() == 0
    assert "[1/1] lenet: freeze\n" in err.getvalue() and "━" not in err.getvalue()
    assert "\r" not in err.getvalue()


# --- python -m bench ----------------------------------------------------------------------------

MACHINE = {"cpu": "x", "usable_cores": 2, "memory_gib": 1, "gpu": None, "libraries": {}}


def test_bench_prints_its_targets_table_one_row_a_line_in_a_log(tmp_path: Path, capsys):
    """`make bench | tee log`: rich wrapped the Markdown table at 80 columns, a row's cells on two
    lines, and the path of the results with them."""
    from bench.__main__ import write

    target = "gateway (2 workers) c=32 beam 4 >= 4x the PyTorch reference with KV cache (best layout)"
    row = {"target": target, "goal": 4.0, "measured": 4.5, "met": "yes", "note": f"see {LONG}log"}
    out = tmp_path / "a-results-directory-whose-path-is-long" / "20261206-000000"
    write({"profile": "quick", "machine": MACHINE, "threads": 2, "targets": [row]}, out)
    printed = capsys.readouterr().out.splitlines()
    assert f"wrote {out}/results.json, report.md and 0 plot(s)" in printed
    assert f"| {target} | 4.00 | 4.50 | yes |" in printed
    assert f"- {target}: see {LONG}log" in printed


def test_bench_log_lines_in_a_log_keep_a_long_path_whole():
    """Rich's log columns, 51 characters wide off a terminal, cut a failed server's log path in two."""
    from kiln.cli import log_handler

    buffer = io.StringIO()
    handler = log_handler(Console(file=buffer), "%(asctime)s %(levelname)s %(message)s")  # bench's
    message = f"servers failed: python -m serving exited with 1 before it was ready (log: {LONG}gw.log)"
    handler.handle(logging.makeLogRecord({"msg": message, "levelno": logging.ERROR, "levelname": "ERROR"}))
    (line,) = buffer.getvalue().splitlines()
    assert line.endswith(f"ERROR {message}") and "\x1b" not in line


# --- python -m serving.triton -------------------------------------------------------------------


class _LoggingServer(_StandInServer):
    """Logs its pid line while it starts, as :class:`serving.triton.server.TritonServer` does."""

    def start(self) -> None:
        super().start()
        logging.getLogger("serving.triton.server").info("tritonserver pid 4242: http 127.0.0.1:1")


@pytest.fixture
def launcher(monkeypatch: pytest.MonkeyPatch):
    """``python -m serving.triton`` in-process over :class:`_LoggingServer` (conftest puts back the
    signal handlers it sets)."""
    from serving.triton import __main__ as launcher_module

    monkeypatch.setattr(launcher_module, "TritonServer", _LoggingServer)
    monkeypatch.setattr(_StandInServer, "made", [])
    return launcher_module.main


def test_the_triton_launcher_in_a_log_says_what_it_waits_for_and_where_it_is(
    launcher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    """Its spinner was its only word while Triton loaded the models: a log said nothing until ready,
    then wrapped the ready line's log path at 80 columns."""
    workdir = Path(f"{tmp_path}{LONG}")
    assert launcher(["--model-repository", str(tmp_path), "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out.splitlines()
    waits = f"starting tritonserver on {tmp_path} (log: {workdir}/tritonserver.log); waiting up to 180 s"
    assert any(line.startswith(waits) for line in out), out
    assert any(line.endswith(f"log {workdir}/tritonserver.log") for line in out), out
    assert "\x1b" not in "".join(out)


def test_the_triton_launcher_on_a_terminal_prints_a_log_record_above_its_spinner(
    launcher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The pid line was written after the spinner's text, on its line, and the spinner's next frame
    erased it."""
    from serving.triton import __main__ as launcher_module

    monkeypatch.setenv("TERM", "xterm-256color")
    buffer = io.StringIO()
    monkeypatch.setattr(launcher_module, "Console", lambda: terminal(buffer))
    with bare_root_logger():
        assert launcher(["--model-repository", str(tmp_path), "--workdir", str(tmp_path / "w")]) == 0
    shown = [" ".join(line.split()) for line in screen(buffer.getvalue())]
    assert "INFO serving.triton.server: tritonserver pid 4242: http 127.0.0.1:1" in shown, shown
    assert not any("loading the models" in line for line in shown), shown


# --- python -m kiln.demo ------------------------------------------------------------------------


def test_the_demo_shows_a_long_command_on_one_line_as_a_shell_takes_it():
    """A stage's command wrapped at a log's 80 columns (pasted, it ran without its last arguments),
    and ``[v2]`` in a path was read as markup and dropped from it."""
    from kiln import demo

    cmd = ["true", f"{LONG}runs/[v2]/checkpoints", "--repository", f"{LONG}model_repository"]
    with demo.console.capture() as captured:
        demo.run_stage("Copyable", cmd)
    (shown,) = [line for line in captured.get().splitlines() if line.startswith("$ ")]
    assert shlex.split(shown[2:]) == cmd


def test_the_demo_says_what_it_waits_for_while_the_gateway_loads(monkeypatch, tmp_path: Path):
    from kiln import demo

    @contextmanager
    def started(cmd, ready_url, **kwargs):
        yield None

    monkeypatch.setattr(demo, "running", started)
    with demo.console.capture() as captured, demo.gateway(tmp_path, timeout_s=120) as (url, _):
        pass
    assert f"waiting up to 120 s for it to load the models and answer {url}/v2/health/ready" in captured.get()


def test_the_demo_passes_no_progress_to_each_stage_that_draws_a_bar(monkeypatch, tmp_path: Path):
    from export.__main__ import parse_args
    from kiln import demo

    seen = []
    monkeypatch.setattr(demo, "run_demo", lambda args, target: seen.append(target))
    monkeypatch.setattr(demo, "stop_on_sigterm", lambda: None)
    demo.main(["--no-progress", "--checkpoints", str(tmp_path / "ck"), "--repository", str(tmp_path / "r")])
    (target,) = seen
    assert all("--no-progress" in flags for flags in (target.classify, target.translate, target.export))
    assert parse_args(["--no-progress"]).progress is False and parse_args([]).progress is True


# --- training ---------------------------------------------------------------------------------------


def on_a_terminal(cmd: list[str], columns: int = 120, timeout_s: float = 120.0) -> bytes:
    """What ``cmd`` writes on a pseudo-terminal of ``columns`` columns (tqdm draws its bar only there)."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out, deadline = b"", time.monotonic() + timeout_s
    try:
        while chunk := _read(master, deadline):
            out += chunk
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        process.kill()
        os.close(master)
    return out


def _read(fd: int, deadline: float) -> bytes:
    """The next output, or nothing once the child closed the terminal; a failure past ``deadline``."""
    import os
    import select

    readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    if not readable or time.monotonic() > deadline:  # silent, or writing on past its deadline
        raise AssertionError("the command wrote nothing more and did not end before its deadline")
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the child closed the terminal
        return b""


def test_a_validation_line_mid_epoch_is_printed_above_the_translators_bar_not_run_on_from_it(tmp_path):
    """With --eval-every, the validation's log line was written onto the epoch bar's half-drawn line
    (``... 0/17 [00:00<?, ?it/s, loss=6.411]2026-12-06 ... INFO training.translate: epoch 0.18 step 3``)."""
    import sys

    cmd = [sys.executable, "-m", "training.translate", "--model", "gru_attention", "--n-pairs", "120"]
    cmd += [
        "--epochs",
        "1",
        "--eval-every",
        "2",
        "--val-limit",
        "4",
        "--batch-size",
        "16",
        "--time-budget",
        "0",
    ]
    cmd += ["--model-arg", "hidden_size=16", "--model-arg", "embed_dim=16", "--output-dir", str(tmp_path)]
    out = on_a_terminal(cmd)
    segments = out.split(b"\r")  # what each carriage return starts drawing over
    logged = [s for s in segments if b"INFO training.translate: epoch" in s]
    assert logged and b"epoch 1/1:" in out, out[-2000:]  # the bar was drawn, and the lines logged
    assert all(s.lstrip().startswith(b"20") for s in logged), [s[:120] for s in logged]
