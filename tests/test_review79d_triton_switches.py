"""``python -m serving.triton`` refuses a KILN_NATIVE-style switch its python translators would ignore, as
``python -m serving`` does: tritonserver runs with the launcher's environment, and Kiln's decoding there
reads ``KILN_NATIVE=false`` as on ("not 0"). The launcher took it and started the server, silently."""

from __future__ import annotations

import pytest

from serving.__main__ import SWITCHES


@pytest.mark.parametrize(("name", "value"), [("KILN_NATIVE", "false"), ("KILN_RESIDENT_DECODER", "true")])
def test_the_triton_launcher_refuses_a_switch_value_before_starting(
    tmp_path, capfd, monkeypatch, name, value
):
    from serving.triton.__main__ import main

    for switch in SWITCHES:
        monkeypatch.delenv(switch, raising=False)
    monkeypatch.setenv(name, value)
    (tmp_path / "repository").mkdir()
    argv = ["--model-repository", str(tmp_path / "repository"), "--workdir", str(tmp_path / "work")]
    argv += ["--ready-timeout", "1", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    assert main(argv) == 2
    out, err = capfd.readouterr()
    assert f"{name}={value!r}: takes 0" in err
    assert "starting tritonserver" not in out + err
