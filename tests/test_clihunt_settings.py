"""Settings the gateway and the Triton launcher were given but could not use, refused as usage errors
(exit 2, one line naming the flag or variable) before anything loads, not taken and failed later."""

from __future__ import annotations

import pytest

from serving.__main__ import SWITCHES, parse_args, switch_problem
from serving.settings import MAX_THREADS

BEYOND_C_INT = str(MAX_THREADS + 1)


def _usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        parse_args(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture(autouse=True)
def _no_kiln_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SWITCHES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("flag", ["--intra-op-threads", "--inter-op-threads", "--lone-request-threads"])
def test_a_thread_count_onnx_runtime_cannot_take_is_a_usage_error(capsys, flag):
    """ONNX Runtime takes thread counts as C ints: a larger one was accepted and every model then failed
    to load in pybind11's "incompatible function arguments", the gateway serving nothing."""
    line = _usage_error(capsys, [flag, BEYOND_C_INT])
    variable = "KILN_" + flag[2:].replace("-", "_").upper()
    assert flag in line and variable in line and str(MAX_THREADS) in line
    assert getattr(parse_args([flag, str(MAX_THREADS)]), flag[2:].replace("-", "_")) == MAX_THREADS


def test_a_thread_count_from_the_environment_is_bounded_too(capsys, monkeypatch):
    monkeypatch.setenv("KILN_INTRA_OP_THREADS", str(2**63))
    assert "KILN_INTRA_OP_THREADS" in _usage_error(capsys, [])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KILN_NATIVE", "false"),
        ("KILN_NATIVE", "off"),
        ("KILN_NATIVE_DECODER", "no"),
        ("KILN_FUSED_ATTENTION", " 0"),
        ("KILN_RESIDENT_DECODER", "true"),
        ("KILN_RESIDENT_DECODER", "yes"),
    ],
)
def test_a_switch_value_its_reader_does_not_tell_apart_is_a_usage_error(capsys, monkeypatch, name, value):
    """KILN_NATIVE=false kept the compiled step (read as "not 0"), KILN_RESIDENT_DECODER=true left the
    resident decoder off (read as "not 1, on or force"): what was asked for was silently not done."""
    monkeypatch.setenv(name, value)
    line = _usage_error(capsys, [])
    assert f"{name}={value!r}" in line and "takes 0" in line


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KILN_NATIVE", "0"),
        ("KILN_NATIVE", "1"),
        ("KILN_NATIVE_DECODER", ""),
        ("KILN_FUSED_ATTENTION", "0"),
        ("KILN_RESIDENT_DECODER", "force"),
        ("KILN_RESIDENT_DECODER", " On "),
    ],
)
def test_the_switch_values_the_readers_know_are_taken(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert switch_problem({name: value}) is None
    parse_args([])


@pytest.mark.parametrize("given", [" triton:8001", "triton:8001 ", "\ttriton:8001\n"])
def test_a_triton_url_with_spaces_reaches_the_client_without_them(monkeypatch, given):
    """The address check read the URL stripped, the client as given: " triton:8001" is no name gRPC
    resolves ("Misformatted domain name"), and the gateway was never ready."""
    assert parse_args(["--backend", "triton", "--triton-url", given]).triton_url == "triton:8001"
    monkeypatch.setenv("KILN_TRITON_URL", given)
    assert parse_args(["--backend", "triton"]).triton_url == "triton:8001"


@pytest.mark.parametrize("flag", ["--model-repository", "--workdir"])
@pytest.mark.parametrize("value", ["", " "])
def test_the_triton_launcher_refuses_an_empty_path(capsys, flag, value):
    """``Path("")`` is the current directory: an unset shell variable served it as the repository
    (refused only after "starting tritonserver", exit 1, or served where it held entries), or wrote the
    flavour and the server's log into it and left them there."""
    from serving.triton.__main__ import parse_args as triton_args

    with pytest.raises(SystemExit) as stopped:
        triton_args([flag, value])
    assert stopped.value.code == 2
    assert f"argument {flag}: empty path" in capsys.readouterr().err


def test_the_triton_launcher_bounds_its_threads(capsys):
    from serving.triton.__main__ import parse_args as triton_args

    with pytest.raises(SystemExit) as stopped:
        triton_args(["--threads", BEYOND_C_INT])
    assert stopped.value.code == 2
    assert f"argument --threads: {BEYOND_C_INT} is above {MAX_THREADS}" in capsys.readouterr().err
    assert triton_args(["--threads", "4"]).threads == 4


def test_a_finish_hold_past_the_compiled_steps_int64_is_a_usage_error(capsys, monkeypatch):
    """The compiled step's plan carries the hold as an int64: 2**63 was taken, and every translation
    then failed (500, "OverflowError: Python int too large to convert to C long")."""
    line = _usage_error(capsys, ["--finish-hold-steps", str(2**63)])
    assert "--finish-hold-steps (or KILN_FINISH_HOLD_STEPS)" in line and str(2**63 - 1) in line
    monkeypatch.setenv("KILN_FINISH_HOLD_STEPS", str(2**63))
    assert "KILN_FINISH_HOLD_STEPS" in _usage_error(capsys, [])
    assert parse_args(["--finish-hold-steps", str(2**63 - 1)]).finish_hold_steps == 2**63 - 1


def test_several_workers_on_port_zero_is_a_usage_error(capsys, monkeypatch):
    """Each of several workers would draw its own port: refused with the other flag errors (exit 2,
    both flags and variables named), not as a failed start (exit 1) after logging began."""
    line = _usage_error(capsys, ["--workers", "2", "--http-port", "0"])
    assert "--workers (or KILN_WORKERS) 2" in line and "--http-port (or KILN_HTTP_PORT)" in line
    monkeypatch.setenv("KILN_WORKERS", "3")
    monkeypatch.setenv("KILN_HTTP_PORT", "0")
    assert "--workers (or KILN_WORKERS) 3" in _usage_error(capsys, [])
    monkeypatch.delenv("KILN_WORKERS")
    monkeypatch.delenv("KILN_HTTP_PORT")
    assert parse_args(["--http-port", "0"]).workers == 1
    assert parse_args(["--workers", "2", "--grpc-port", "0"]).workers == 2  # gRPC off: shared as well


@pytest.mark.parametrize("named", ["missing", "a-file"])
def test_the_triton_launcher_refuses_a_named_python_env_before_starting(tmp_path, capfd, monkeypatch, named):
    """A KILN_TRITON_PYTHON_ENV that is no Python environment was refused after "starting tritonserver
    ... waiting up to 180 s", exit 1 (a failed server's), not as the usage error it is (exit 2)."""
    from serving.triton.__main__ import main

    env = tmp_path / named
    if named == "a-file":
        env.write_text("")
    (tmp_path / "repository").mkdir()
    monkeypatch.setenv("KILN_TRITON_PYTHON_ENV", str(env))
    argv = ["--model-repository", str(tmp_path / "repository"), "--workdir", str(tmp_path / "work")]
    assert main(argv) == 2
    out, err = capfd.readouterr()
    assert f"KILN_TRITON_PYTHON_ENV={env} is not a Python environment" in err
    assert "starting tritonserver" not in out + err


@pytest.mark.parametrize(
    ("value", "why"), [("-1", "-1 is not at least 0"), (str(2**31), f"{2**31} is above {2**31 - 1}")]
)
def test_the_triton_launcher_bounds_its_log_verbosity(capsys, value, why):
    """tritonserver reads --log-verbose as an int32: past it the server printed its whole usage and
    exited, the launcher keeping a copy of every model "for reading"; a negative level means nothing."""
    from serving.triton.__main__ import parse_args as triton_args

    with pytest.raises(SystemExit) as stopped:
        triton_args(["--log-verbose", value])
    assert stopped.value.code == 2
    assert f"argument --log-verbose: {why}" in capsys.readouterr().err
    assert triton_args(["--log-verbose", "2"]).log_verbose == 2
