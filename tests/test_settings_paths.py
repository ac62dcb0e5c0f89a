"""Empty paths in the gateway's settings: an empty ``KILN_MODEL_REPOSITORY=`` (a deployment template's
unset value) or ``--model-repository ''`` is a usage error, not the current directory served as a
repository; an empty optional path is unset. Validators' messages read as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.__main__ import parse_args


@pytest.mark.parametrize(("argv", "env"), [([], {"KILN_MODEL_REPOSITORY": ""}), (["--model-repository", " "], {})])
def test_an_empty_model_repository_is_a_usage_error_naming_it(monkeypatch, capsys, argv, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        parse_args(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "error: --model-repository (or KILN_MODEL_REPOSITORY): is empty: name the model repository's" in err


def test_the_current_directory_named_as_such_is_still_a_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_args(["--model-repository", "."]).model_repository == Path(".")


@pytest.mark.parametrize("name", ["KILN_WEIGHTS_DIR", "KILN_WORKER_BOARD", "KILN_CONNECTION_BOARD"])
def test_an_empty_optional_path_is_unset(monkeypatch, name):
    monkeypatch.setenv(name, "")
    settings = parse_args([])
    assert getattr(settings, name.removeprefix("KILN_").lower()) is None


def test_a_validators_message_has_no_pydantic_prefix(monkeypatch, capsys):
    monkeypatch.setenv("KILN_MAX_BODY_BYTES", "4096")
    with pytest.raises(SystemExit):
        parse_args(["--max-inflight-body-bytes", "2048"])
    err = capsys.readouterr().err
    assert "error: --max-inflight-body-bytes (or KILN_MAX_INFLIGHT_BODY_BYTES) 2048 is below" in err
