"""What the README and docs tell a user to run, checked against what the code does: the mistakes a
first run makes are answered with what to do."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from kiln import demo
from serving.__main__ import main

README = Path(__file__).resolve().parent.parent / "README.md"


class ReachedThePorts(Exception):
    """The gateway got past its repository checks to claiming its ports: it would have served."""


@pytest.fixture
def start(monkeypatch):
    """``python -m serving`` with these arguments, stopped where it would claim its ports."""
    import serving.__main__ as cli

    def reached(settings, *, hold):
        raise ReachedThePorts

    monkeypatch.setattr(cli, "claim_ports", reached)
    return lambda repository: main(
        ["--model-repository", str(repository), "--http-port", "0", "--grpc-port", "0"]
    )


def test_a_directory_of_checkpoints_given_as_the_repository_stops_the_gateway_with_the_export_command(
    tmp_path, start
):
    (tmp_path / "resnet18.pt").write_bytes(b"not read")
    (tmp_path / "transformer.pt").write_bytes(b"not read")
    with pytest.raises(SystemExit) as stopped:
        start(tmp_path)
    message = str(stopped.value.code)
    assert "holds checkpoints (resnet18.pt, transformer.pt)" in message
    assert f"python -m export {tmp_path} --repository" in message


def test_a_repository_without_entries_is_named_in_a_warning_before_the_gateway_serves_nothing(
    tmp_path, start, caplog
):
    (tmp_path / "notes").mkdir()  # a directory, but no <model>/config.pbtxt in it
    with caplog.at_level(logging.WARNING, logger="serving"), pytest.raises(ReachedThePorts):
        start(tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("holds no model entry" in w and "make export" in w for w in warnings), warnings


def test_a_repository_with_an_entry_starts_without_the_warning(tmp_path, start, caplog):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\n')
    with caplog.at_level(logging.WARNING, logger="serving"), pytest.raises(ReachedThePorts):
        start(tmp_path)
    assert "holds no model entry" not in caplog.text


def test_the_gpu_demo_without_onnxruntimes_cuda_provider_names_the_install_command_and_a_real_section(
    monkeypatch,
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(SystemExit) as stopped:
        demo.gpu_target()
    message = str(stopped.value.code)
    assert "`make setup GPU=1`" in message
    section = re.search(r'README, "([^"]+)"', message).group(1)
    assert re.search(rf"^#+ {re.escape(section)}$", README.read_text(), re.M), (
        f"README has no heading {section!r}"
    )
