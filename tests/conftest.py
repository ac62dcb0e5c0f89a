"""Shared fixtures: seeded, single-threaded torch so tests are reproducible and polite on shared CPUs;
signal handlers restored after each test; the export of every classifier, and of the tiny translators,
that several test modules read, built once for all the run's workers (``tests/session_cache.py``)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import kiln  # noqa: F401  - first: gRPC's fork support off before any test uses gRPC (kiln/__init__.py)
from tests.hermetic_env import drop_kiln_settings

# the shell's KILN_* settings (a developer's KILN_LOG_FORMAT=json, KILN_WORKERS=2) no longer reach the
# gateways, kernels and trainers the tests start: before any test module is imported
DROPPED_SETTINGS = drop_kiln_settings(os.environ)


def pytest_report_header() -> str | None:
    if DROPPED_SETTINGS:
        return "ignored from the environment (tests/hermetic_env.py): " + ", ".join(DROPPED_SETTINGS)
    return None


@pytest.fixture(scope="session", autouse=True)
def _single_torch_thread() -> None:
    """One intra-op thread: the CI machines are small and shared, and results stay reproducible."""
    torch.set_num_threads(1)


# The gateway's default ports. A gateway a test starts binds ports it holds, or port 0: one left on the
# defaults passed while they were free and failed while anything else had them (a developer's own
# gateway or demo, another job on the machine). Held for the whole run, such a test fails every time.
DEFAULT_PORTS = (8000, 8001)


def hold_ports(ports: tuple[int, ...]) -> list[socket.socket]:
    """Bind ``ports`` on every IPv4 address and every IPv6 one (where the machine has IPv6), never
    listening, as :func:`serving.triton.ports.held_port` holds a port: no server binds them (a gateway
    on ``::1`` neither), and a client connecting is refused at once (a listening socket accepted it and
    never answered: it hung until its timeout). One in use already is left as it is (taken either
    way). The caller closes the sockets."""
    held = []
    for port in ports:
        for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError:  # no IPv6 on this machine
                continue
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # IPv4's is the other
                sock.bind((address, port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
    return held


@pytest.fixture(scope="session", autouse=True)
def _default_ports_held() -> Iterator[None]:
    """:data:`DEFAULT_PORTS` held for the run (:func:`hold_ports`)."""
    held = hold_ports(DEFAULT_PORTS)
    yield
    for sock in held:
        sock.close()


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same RNG state, whatever ran before it."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _signal_handlers() -> Iterator[None]:
    """The SIGTERM / SIGINT handlers as before the test: commands run in-process (the demo's and the
    bench's ``main``) make SIGTERM raise KeyboardInterrupt, which would otherwise rule every later test
    and every process forked from this one."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        if signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)


@pytest.fixture(scope="session")
def exported_classifiers(tmp_path_factory) -> tuple[Path, dict[str, list]]:
    """Every registered classifier exported once (fp32) into one repository, read-only for its users:
    the repository and each model's export results (``tests/classifier_exports.py``)."""
    from tests.classifier_exports import export_every_classifier
    from tests.session_cache import built_once, shared_directory

    return built_once(shared_directory(tmp_path_factory), "classifiers", export_every_classifier)


@pytest.fixture
def inflation_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The threads ``serving.protocol.limits.inflate`` runs on during the test (the event loop's, or a
    worker's for a body that inflates past what the loop takes)."""
    from serving.protocol import limits

    threads: list[int] = []
    real = limits.inflate

    def recording(*args: object) -> bytes:
        threads.append(threading.get_ident())
        return real(*args)

    monkeypatch.setattr(limits, "inflate", recording)
    return threads


@pytest.fixture(scope="session")
def exported_translator_models(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The tiny trained translators (``transformer``, ``gru_attention``) exported once, read-only for
    their users: (the root, holding ``checkpoints/`` and ``model_repository/``; {name: export error})."""
    from tests.session_cache import built_once, shared_directory
    from tests.test_translate_serving import build_translator_repository

    def build(root: Path) -> tuple[Path, dict[str, str]]:
        _, errors = build_translator_repository(root)
        return root, errors

    return built_once(shared_directory(tmp_path_factory), "translators", build)


@pytest.fixture(scope="module")
def transformer_repository(exported_translator_models) -> Path:
    """The model repository of :func:`exported_translator_models`, its ``transformer`` exported (a
    failed export fails the test that asks, with the error)."""
    root, errors = exported_translator_models
    if "transformer" in errors:
        pytest.fail(f"export failed: {errors['transformer']}")
    return root / "model_repository"


@pytest.fixture(scope="module")
def loop() -> Iterator:
    """An event loop in a thread of its own for a module's tests (tests.test_grpc.LoopThread): a test
    file with its own ``loop`` fixture uses that one."""
    from tests.test_grpc import LoopThread

    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture
def nowhere() -> Iterator[str]:
    """An address nothing serves (bound, never listening: refused), as a Triton killed or never started."""
    from serving.triton.ports import held_port

    sock = held_port()
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@pytest.fixture
def native_cache(tmp_path, monkeypatch) -> Path:
    """An empty cache of compiled kernels (``KILN_CACHE_DIR``), this process's own load state kept."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KILN_NATIVE", raising=False)
    from serving.decoding import native

    monkeypatch.setattr(native, "_loaded_path", [])
    (tmp_path / "cache").mkdir()
    return tmp_path / "cache"


@pytest.fixture
def short_tmpdir() -> Iterator[Path]:
    """An empty directory short enough to be a gateway's TMPDIR with its JSON helper: multiprocessing's
    forkserver listens on ``$TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX``, at most 107 bytes, and pytest's
    ``tmp_path`` under xdist (``/tmp/pytest-of-<user>/pytest-N/popen-gwN/<test name>``) is longer."""
    path = Path(tempfile.mkdtemp(prefix="kiln-t-", dir="/tmp" if Path("/tmp").is_dir() else None))
    yield path
    shutil.rmtree(path, ignore_errors=True)
