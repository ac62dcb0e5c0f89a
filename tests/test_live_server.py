"""The in-process test server (``tests.repo_fixtures.LiveServer``) leaves nothing behind when it cannot start."""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI

from tests.repo_fixtures import LiveServer


def _failing_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        raise RuntimeError("no models today")
        yield

    return FastAPI(lifespan=lifespan)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # uvicorn's sys.exit(3)
def test_a_server_whose_start_up_fails_frees_its_port_and_thread():
    """``__exit__`` never runs when ``__enter__`` raises: the held port stayed bound for the rest of the
    session (and no other server could take it), with the server's thread unaccounted for."""
    live = LiveServer(_failing_app(), log_level="critical")
    with pytest.raises(RuntimeError, match="did not start: its start-up failed"), live:
        pass
    assert live.socket.fileno() == -1 and not live.thread.is_alive()
    with socket.socket() as other:  # the port is free again for a server binding as servers do
        other.bind(("127.0.0.1", live.port))


def test_a_server_that_starts_serves_until_its_block_ends():
    with LiveServer(FastAPI()) as live:
        assert live.server.started and live.thread.is_alive()
    assert live.socket.fileno() == -1 and not live.thread.is_alive()
