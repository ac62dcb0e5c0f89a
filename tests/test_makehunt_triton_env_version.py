"""Triton's python models run with the stub of this Python's version, which does not see the packages of a
Triton python environment made from another (``.venv/triton-env`` made by ``PYTHON_SYS``'s python3 beside a
``.venv`` from ``PYTHON_SYS=python3.11``, or a ``KILN_TRITON_PYTHON_ENV`` of another version): every model was
UNAVAILABLE ("No module named 'numpy'"), said only in Triton's log after the wait for readiness. Such an
environment is refused at once, naming it and what to do; no server is started."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from serving.triton import install
from serving.triton.install import TritonError, triton_python_env

OURS = "{}.{}".format(*sys.version_info[:2])


def made_from(env: Path, version: str | None) -> Path:
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text("")
    if version is not None:
        (env / "pyvenv.cfg").write_text(f"home = /usr/bin\nversion = {version}\n")
    return env


def test_a_named_environment_of_another_python_is_refused(tmp_path, monkeypatch):
    env = made_from(tmp_path / "te", "3.9.18")
    monkeypatch.setenv("KILN_TRITON_PYTHON_ENV", str(env))
    with pytest.raises(TritonError) as refused:
        triton_python_env()
    message = str(refused.value)
    assert f"KILN_TRITON_PYTHON_ENV={env} was made from Python 3.9" in message
    assert f"this Python's version, {OURS}" in message and f"name one made from Python {OURS}" in message


def test_the_default_environment_of_another_python_names_make_setup(tmp_path, monkeypatch):
    made_from(tmp_path / "triton-env", "3.10.13")
    monkeypatch.delenv("KILN_TRITON_PYTHON_ENV", raising=False)
    monkeypatch.setattr(install.sys, "prefix", str(tmp_path))
    with pytest.raises(TritonError, match=r"triton-env was made from Python 3\.10.*run `make setup`"):
        triton_python_env()


@pytest.mark.parametrize("version", [f"{OURS}.0", None])  # None: no pyvenv.cfg (a conda env, a prefix)
def test_an_environment_of_this_python_or_of_no_known_version_is_used(tmp_path, monkeypatch, version):
    env = made_from(tmp_path / "te", version)
    monkeypatch.setenv("KILN_TRITON_PYTHON_ENV", str(env))
    assert triton_python_env() == env


def test_a_refused_environment_leaves_no_log_to_keep(tmp_path, monkeypatch):
    """The launcher keeps its work directory for reading where a server's log is there: an empty log of a
    server never started was kept, a copy of every model beside it."""
    from serving.triton.server import TritonServer

    monkeypatch.setenv("KILN_TRITON_PYTHON_ENV", str(made_from(tmp_path / "te", "3.9.1")))
    server = TritonServer(tmp_path / "repository", tmp_path / "work")
    (tmp_path / "work").mkdir()
    stub = install.TritonInstall(tmp_path / "tritonserver")
    with pytest.raises(TritonError, match="made from Python 3.9"):
        server._launch(stub, tmp_path / "repository", tmp_path / "backends")
    assert server.process is None and not server.log_path.exists()
