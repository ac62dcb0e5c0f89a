"""``python -m serving``'s flags: one per setting, typed by it, and bad values as usage errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal, get_args, get_origin

import pytest

from serving.__main__ import INTERNAL, _base_type, build_parser, parse_args
from serving.settings import Settings


def test_every_setting_is_a_flag_and_the_internal_ones_are_not_advertised():
    parser = build_parser()
    flags = {action.dest: action for action in parser._actions if action.dest != "help"}
    assert set(flags) == set(Settings.model_fields)
    text = parser.format_help()
    for name in Settings.model_fields:
        flag = "--" + name.replace("_", "-")
        assert (flag in text) is (name not in INTERNAL), flag


def test_flags_reach_the_settings_with_their_types(tmp_path):
    settings = parse_args(
        [
            "--model-repository",
            str(tmp_path),
            "--decode-workers",
            "2",
            "--finish-hold-steps",
            "0",
            "--request-timeout-s",
            "2.5",
            "--log-level",
            "WARNING",
            "--reuse-port",
            "--worker-board",
            "/dev/shm/board",
        ]
    )
    assert settings.model_repository == tmp_path
    assert settings.decode_workers == 2
    assert settings.finish_hold_steps == 0
    assert settings.request_timeout_s == 2.5
    assert settings.log_level == "warning"
    assert settings.reuse_port is True
    assert settings.worker_board == Path("/dev/shm/board")
    assert parse_args([]) == Settings()  # nothing given: the defaults


def test_the_decoding_settings_reach_the_schedulers_and_unset_ones_keep_their_defaults():
    from serving.decoding.scheduler_config import SchedulerConfig
    from serving.lifespan import scheduler_config

    given = scheduler_config(
        parse_args(
            ["--decode-workers", "2", "--finish-hold-steps", "0", "--max-queue-size", "5"]
            + ["--decode-release-idle-s", "2.5"]
        )
    )
    assert (given.workers, given.finish_hold_steps, given.max_queue) == (2, 0, 5)
    assert given.release_idle_s == 2.5
    assert scheduler_config(parse_args(["--decode-release-idle-s", "0"])).release_idle_s is None  # never
    default = scheduler_config(parse_args([]))
    assert (default.workers, default.finish_hold_steps, default.release_idle_s) == (
        SchedulerConfig.workers,
        SchedulerConfig.finish_hold_steps,
        SchedulerConfig.release_idle_s,
    )


@pytest.mark.parametrize(
    ("flag", "want"),
    [([], 10.0), (["--batch-release-idle-s", "2.5"], 2.5), (["--batch-release-idle-s", "0"], None)],
)
def test_the_batch_release_delay_reaches_the_backends_options(tmp_path, flag, want):
    from serving.execution.repository import Repository
    from serving.lifespan import make_backend
    from serving.metrics import GatewayMetrics

    settings = parse_args(["--model-repository", str(tmp_path), *flag])
    backend = make_backend(settings, Repository(tmp_path), GatewayMetrics())
    try:
        assert backend.options.release_idle_s == want  # 0: kept until the gateway stops
    finally:
        backend.occupancy.close()


def test_flags_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("KILN_MAX_QUEUE_SIZE", "7")
    assert parse_args([]).max_queue_size == 7
    assert parse_args(["--max-queue-size", "9"]).max_queue_size == 9


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (
            ["--http-port", "70000"],
            {},
            "--http-port (or KILN_HTTP_PORT): Input should be less than or equal to 65535",
        ),
        (
            [],
            {"KILN_DECODE_WORKERS": "0"},
            "--decode-workers (or KILN_DECODE_WORKERS): Input should be greater",
        ),
        (["--workers", "two"], {}, "argument --workers: invalid int value: 'two'"),
        # an empty path is not the current directory (Path("") is "."), whose folders would be served
        *(
            (argv, env, "error: --model-repository (or KILN_MODEL_REPOSITORY): is empty: name the model")
            for argv, env in [([], {"KILN_MODEL_REPOSITORY": ""}), (["--model-repository", " "], {})]
        ),
        (
            ["--finish-hold-steps", "-1"],
            {},
            "--finish-hold-steps (or KILN_FINISH_HOLD_STEPS): Input should be greater than or equal to 0",
        ),
        (["--log-level", "loud"], {}, "argument --log-level: invalid choice: 'loud'"),
        (
            ["--grpc-port", "9000"],
            {"KILN_HTTP_PORT": "9000"},
            "--http-port (or KILN_HTTP_PORT) and --grpc-port (or KILN_GRPC_PORT) are both 9000",
        ),
        (
            ["--max-inflight-body-bytes", "2048"],
            {"KILN_MAX_BODY_BYTES": "4096"},
            "--max-inflight-body-bytes (or KILN_MAX_INFLIGHT_BODY_BYTES) 2048 is below --max-body-bytes 4096",
        ),
        (  # the defaults: --triton-url 127.0.0.1:8001 is --grpc-port 8001 on --host 127.0.0.1
            ["--backend", "triton"],
            {},
            "--triton-url (or KILN_TRITON_URL) 127.0.0.1:8001 is this gateway's own gRPC address "
            "(--host 127.0.0.1, --grpc-port (or KILN_GRPC_PORT) 8001)",
        ),
        (
            ["--backend", "triton", "--triton-url", "localhost:9000", "--host", "0.0.0.0"],
            {"KILN_HTTP_PORT": "9000"},
            "--triton-url (or KILN_TRITON_URL) localhost:9000 is this gateway's own HTTP address "
            "(--host 0.0.0.0, --http-port (or KILN_HTTP_PORT) 9000)",
        ),
        (
            ["--triton-url", "[::1]:7001", "--grpc-port", "7001", "--host", "::"],
            {"KILN_BACKEND": "triton"},
            "--triton-url (or KILN_TRITON_URL) [::1]:7001 is this gateway's own gRPC address",
        ),
        (
            ["--backend", "triton", "--triton-url", "GATEWAY.example:8001", "--host", "gateway.example"],
            {},
            "point --triton-url at the Triton server, or move --grpc-port",
        ),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_its_flag(monkeypatch, capsys, argv, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        parse_args(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--triton-url", "127.0.0.1:8001"],  # the onnxruntime backend never connects to it
        ["--backend", "triton", "--triton-url", "127.0.0.1:9001"],  # another port
        ["--backend", "triton", "--grpc-port", "0"],  # no gRPC server here
        ["--backend", "triton", "--host", "10.0.0.5"],  # the gateway listens elsewhere: a local Triton
        ["--backend", "triton", "--triton-url", "triton.internal:8001"],  # another machine
    ],
)
def test_a_triton_url_that_is_not_this_gateway_is_accepted(argv):
    assert isinstance(parse_args(argv), Settings)  # no usage error


def test_the_command_prints_the_usage_error_without_a_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "serving", "--model-repository", str(tmp_path), "--grpc-port", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--grpc-port (or KILN_GRPC_PORT): Input should be greater than or equal to 0" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_repository_says_how_to_make_one(tmp_path):
    from serving.__main__ import main

    with pytest.raises(SystemExit, match="is not a directory: run `make export`") as exit_:
        main(["--model-repository", str(tmp_path / "none")])
    # an installed wheel has no Makefile: the command behind it is named too
    assert f"python -m export CHECKPOINTS --repository {tmp_path / 'none'}" in str(exit_.value)


def test_uvicorns_trace_level_configures_logging_too(tmp_path):
    """``trace`` is uvicorn's level below DEBUG; the standard library must know it before the gateway
    configures logging (a fresh process: under pytest logging is already configured)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving",
            "--log-level",
            "trace",
            "--model-repository",
            str(tmp_path / "none"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "is not a directory" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "name", [n for n, f in Settings.model_fields.items() if get_origin(_base_type(f.annotation)) is Literal]
)
def test_a_choice_is_read_in_any_case_from_its_variable_as_from_its_flag(monkeypatch, name):
    """The flags lower-case a choice (``--backend ONNXRUNTIME``); the variables refused the same word."""
    choice = get_args(_base_type(Settings.model_fields[name].annotation))[-1]
    flag = "--" + name.replace("_", "-")
    monkeypatch.setenv("KILN_TRITON_URL", "127.0.0.1:9001")  # --backend triton: not the gateway's own port
    assert getattr(parse_args([flag, choice.upper()]), name) == choice
    monkeypatch.setenv(f"KILN_{name.upper()}", choice.upper())
    assert getattr(parse_args([]), name) == choice


def _make_serve(*args: str, **env: str) -> list[str]:
    """The command ``make serve`` would run (``make -n``), as words."""
    done = subprocess.run(
        ["make", "-n", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr
    return next(line.split() for line in done.stdout.splitlines() if "-m serving" in line)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_serve_leaves_the_settings_it_is_not_given_to_their_variables():
    """``make serve`` passed every setting it knows as a flag, its own defaults included, and flags win:
    ``KILN_WORKERS=2 make serve`` ran one worker, ``KILN_HTTP_PORT=9000 make serve`` served on 8000."""
    plain = _make_serve(KILN_WORKERS="2", KILN_HTTP_PORT="9000")
    assert "--workers" not in plain and "--http-port" not in plain
    given = _make_serve("WORKERS=3", "HTTP_PORT=9001", KILN_WORKERS="2")
    assert given[given.index("--workers") + 1] == "3"
    assert given[given.index("--http-port") + 1] == "9001"
