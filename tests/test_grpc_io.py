"""The gRPC socket layer the gateway picks (serving/protocol/grpc_io.py) and that grpc accepts it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from serving.protocol import grpc_io


def test_iomgr_sets_the_experiment_grpc_reads():
    environ: dict[str, str] = {}
    assert grpc_io.choose("iomgr", environ) == ("-event_engine_listener", False)
    assert environ == {"GRPC_EXPERIMENTS": "-event_engine_listener"}


def test_event_engine_leaves_grpc_its_own_default():
    environ: dict[str, str] = {}
    assert grpc_io.choose("event-engine", environ) == ("", False)
    assert environ == {}


@pytest.mark.parametrize("io", ["iomgr", "event-engine"])
def test_experiments_already_in_the_environment_win(io):
    environ = {"GRPC_EXPERIMENTS": "event_engine_client"}
    assert grpc_io.choose(io, environ) == ("event_engine_client", True)
    assert environ == {"GRPC_EXPERIMENTS": "event_engine_client"}


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "KILN_"))}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


# A unary call through grpc.aio on the socket layer the gateway asks for: the installed grpc must know
# the experiment (an unknown name is only logged, and the gateway would silently run the other layer).
ECHO = """
    import asyncio, grpc

    def echo(request, context):
        return request[::-1]

    async def main():
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "kiln.Echo", {"Reverse": grpc.unary_unary_rpc_method_handler(echo)}
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await channel.unary_unary("/kiln.Echo/Reverse")(b"kiln")
        await server.stop(None)
        print("reply", reply.decode())

    asyncio.run(main())
"""


def test_grpc_knows_the_experiment_and_serves_on_iomgr():
    environ: dict[str, str] = {}
    grpc_io.choose("iomgr", environ)
    done = _run(ECHO, environ)
    assert done.returncode == 0, done.stderr
    assert "reply nlik" in done.stdout
    assert "Unknown experiment" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    "env, expected", [({}, "-event_engine_listener"), ({"KILN_GRPC_IO": "event-engine"}, "None")]
)
def test_the_gateway_command_chooses_before_it_starts(tmp_path, env, expected):
    done = _run(
        f"""
        import atexit, os
        atexit.register(lambda: print("GRPC_EXPERIMENTS", os.environ.get("GRPC_EXPERIMENTS")))
        from serving.__main__ import main
        main(["--model-repository", {str(tmp_path / "missing")!r}])
        """,
        env,
    )
    assert done.returncode == 1  # the missing repository: after the choice, before any server
    assert "is not a directory" in done.stderr
    assert f"GRPC_EXPERIMENTS {expected}" in done.stdout
