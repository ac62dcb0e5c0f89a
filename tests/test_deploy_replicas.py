"""Three gateway replicas behind a real haproxy on 127.0.0.1: requests spread over every replica (gRPC per
request, from one client channel), every answer equals one gateway's, every replica decodes, and a
replica killed mid-load costs no request. The fleet tests skip where haproxy is absent (`make balancer`
installs it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.balancer import (
    HAPROXY_HINT,
    Upstream,
    find_haproxy,
    haproxy_config,
    run_balancer,
    server_stats,
    wait_until,
)
from bench.replicas import (
    answered_per_replica,
    classifier_input,
    cut_mid_response,
    fixed_load,
    grpc_classifier,
    http_classifier,
    http_translator,
    references,
    retried,
    rows_per_step,
    run_replicas,
)
from bench.servers import _http_session as http_session
from tests.repo_fixtures import build_classifier_repository
from tests.test_translate_serving import exported_translators, texts_of_mixed_lengths

needs_haproxy = pytest.mark.skipif(find_haproxy() is None, reason=HAPROXY_HINT)

CLASSIFIER, TRANSLATOR, REPLICAS, INPUTS = "lenet", "transformer", 3, 24


def test_the_balancer_spreads_http_and_grpc_per_request_over_every_replica_and_retries() -> None:
    """The generated configuration, read as a reviewer would (haproxy itself checks it in the tests below)."""
    upstreams = [Upstream(f"replica{i}", 9000 + i, 9100 + i) for i in range(3)]
    config = haproxy_config(upstreams, http_port=8000, grpc_port=8001, stats_port=8002)
    assert "bind 127.0.0.1:8001 proto h2" in config and "retry-on conn-failure empty-response" in config
    backends = config.split("\nbackend ")[1:]
    assert [b.splitlines()[0] for b in backends] == ["gateways_http", "gateways_grpc"]
    for backend in backends:
        assert "balance leastconn" in backend and "uri /v2/health/ready" in backend
        servers = [line.split()[2] for line in backend.splitlines() if line.strip().startswith("server ")]
        assert len(servers) == 3 and all(s.startswith("127.0.0.1:") for s in servers)
    assert backends[1].count(" proto h2 ") == 3, (
        "gRPC goes to the replicas over HTTP/2, one stream per request"
    )


def test_only_answers_cut_after_they_began_count_as_unretryable() -> None:
    """A balancer's own 50x (retryable work it gave up on) is a failure; a body or stream cut is not."""
    import aiohttp
    import grpc

    def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)

    assert cut_mid_response(aiohttp.ClientPayloadError("Response payload is not completed"))
    assert cut_mid_response(rpc_error(grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2"))
    assert not cut_mid_response(
        rpc_error(grpc.StatusCode.UNAVAILABLE, "Received http2 header with status: 503")
    )
    assert not cut_mid_response(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"))
    assert not cut_mid_response(RuntimeError("HTTP 503: no server is available"))


@pytest.fixture(scope="module")
def repository(exported_translator_models, tmp_path_factory) -> Path:
    repository = exported_translators(exported_translator_models, tmp_path_factory, "fleet", (TRANSLATOR,))
    return build_classifier_repository(repository, (CLASSIFIER,))


@pytest.fixture(scope="module")
def fleet(repository, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fleet-logs")
    with (
        run_replicas(repository, REPLICAS, workdir) as replicas,
        run_balancer([r.upstream for r in replicas], workdir) as balancer,
    ):
        yield replicas, balancer


async def _classify_everywhere(repository: Path, replicas, balancer, total: int, on_answer=None):
    """The same images through the balancer over HTTP and over one gRPC channel, both at once."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    name, images = classifier_input(repository, CLASSIFIER, INPUTS)
    async with http_session(16) as session, grpc.aio.insecure_channel(balancer.grpc_url) as channel:
        expected = await references(
            http_classifier(session, replicas[0].url, CLASSIFIER, name, images), INPUTS
        )
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return await asyncio.gather(
            fixed_load(
                http_classifier(session, balancer.http_url, CLASSIFIER, name, images),
                expected,
                total,
                8,
                on_answer,
            ),
            fixed_load(grpc_classifier(stub, CLASSIFIER, name, images), expected, total, 8, on_answer),
        )


@needs_haproxy
def test_http_and_grpc_requests_spread_over_every_replica_with_one_gateways_answers(
    repository, fleet
) -> None:
    replicas, balancer = fleet
    before = {p: answered_per_replica(balancer, p) for p in ("http", "grpc")}
    http, grpc = asyncio.run(_classify_everywhere(repository, replicas, balancer, total=180))
    for tally in (http, grpc):
        assert (tally.ok, tally.wrong, tally.failed) == (180, 0, 0), tally.as_dict()
    for protocol in ("http", "grpc"):
        after = answered_per_replica(balancer, protocol)
        served = {name: after[name] - before[protocol][name] for name in after}
        assert sum(served.values()) == 180 and min(served.values()) > 0, (protocol, served)


@needs_haproxy
def test_translations_through_the_balancer_equal_one_gateways_and_every_replica_decodes(fleet) -> None:
    replicas, balancer = fleet
    texts = texts_of_mixed_lengths(INPUTS)
    before = [rows_per_step(r, TRANSLATOR) for r in replicas]

    async def scenario():
        async with http_session(16) as session:
            expected = await references(http_translator(session, replicas[0].url, TRANSLATOR, texts), INPUTS)
            return await fixed_load(
                http_translator(session, balancer.http_url, TRANSLATOR, texts), expected, 72, 16
            )

    tally = asyncio.run(scenario())
    assert (tally.ok, tally.wrong, tally.failed) == (72, 0, 0), tally.as_dict()
    after = [rows_per_step(r, TRANSLATOR) for r in replicas]
    steps = [a[1] - b[1] for a, b in zip(after, before, strict=True)]
    assert min(steps[1:]) > 0 and steps[0] > 0, steps


@needs_haproxy
def test_a_replica_killed_mid_load_costs_no_request_the_balancer_could_retry(repository, fleet) -> None:
    """Runs last: SIGKILL one replica once 60 answers are in; haproxy retries what it never answered.

    At most the requests in flight on it (8 per protocol here) can be cut after their answer began."""
    replicas, balancer = fleet
    victim = replicas[-1]

    def kill_at_60(answered: int) -> None:
        if answered >= 60 and victim.process.poll() is None:
            victim.process.kill()

    http, grpc = asyncio.run(_classify_everywhere(repository, replicas, balancer, 240, kill_at_60))
    assert victim.process.wait(timeout=30) != 0
    assert sum(retried(balancer).values()) > 0, "nothing was retried: the kill did not land mid-load"
    for tally in (http, grpc):
        # Only a request whose answer had already begun when the replica died may fail (rarely seen):
        # no balancer can retry it. Every other request is answered, and answered right.
        assert (tally.ok + tally.cut, tally.wrong, tally.failed) == (240, 0, 0), tally.as_dict()
        assert tally.cut <= 8, tally.as_dict()
    wait_until(
        lambda: server_stats(balancer)[("gateways_http", victim.upstream.name)]["status"] == "DOWN", 30
    )
