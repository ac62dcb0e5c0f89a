"""``export.__main__.main`` called in-process (a test, a script, a thread of a service) turns a SIGTERM
into Ctrl-C only while it runs: the caller's own SIGTERM handler is its handler again afterwards (it
was replaced for good by ``signal.default_int_handler``), and a call off the main thread, where Python
allows no handler, exports as before (it raised ``ValueError: signal only works in main thread``)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest

import export.__main__ as export_main

ARGV = ["--no-progress"]  # each test names its --repository under tmp_path


@pytest.fixture
def own_handler():
    """A SIGTERM handler of the caller's, as a service or test harness installs; put back after."""

    def handler(signum, frame):  # pragma: no cover - never delivered here
        raise AssertionError("not called")

    previous = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, previous)


def test_main_turns_sigterm_into_ctrl_c_while_it_runs_and_gives_the_callers_handler_back(
    own_handler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    during = []

    def no_checkpoints(paths):  # the export's first look at its input: the handler it runs under
        during.append(signal.getsignal(signal.SIGTERM))
        return []

    monkeypatch.setattr(export_main, "_checkpoints", no_checkpoints)
    assert (
        export_main.main([str(tmp_path / "none"), "--repository", str(tmp_path / "repo"), *ARGV]) == 2
    )  # nothing to export
    assert during == [signal.default_int_handler]
    assert signal.getsignal(signal.SIGTERM) is own_handler


def test_main_gives_the_callers_handler_back_when_it_fails_or_exits(own_handler, tmp_path: Path) -> None:
    assert (
        export_main.main([str(tmp_path / "missing"), "--repository", str(tmp_path / "repo"), *ARGV]) == 1
    )  # no such checkpoint path
    assert signal.getsignal(signal.SIGTERM) is own_handler
    with pytest.raises(SystemExit):
        export_main.main(["--precisions", "fp99", str(tmp_path)])  # argparse's refusal
    assert signal.getsignal(signal.SIGTERM) is own_handler


def test_main_off_the_main_thread_exports_instead_of_raising(own_handler, tmp_path: Path) -> None:
    result: dict[str, object] = {}

    def call() -> None:
        try:
            result["rc"] = export_main.main(
                [str(tmp_path / "missing"), "--repository", str(tmp_path / "repo"), *ARGV]
            )
        except BaseException as exc:  # noqa: BLE001 - what the thread met, for the assertion
            result["error"] = repr(exc)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    assert result == {"rc": 1}  # the missing path's one-line refusal, as on the main thread
    assert signal.getsignal(signal.SIGTERM) is own_handler
