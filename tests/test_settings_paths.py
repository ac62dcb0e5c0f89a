"""Empty paths in the gateway's settings (an empty model repository is a usage error:
test_gateway_cli's bad values): the current directory named as such is still one, an empty optional
path is unset. Validators' messages read as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.__main__ import parse_args


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
