"""`make bench`'s replicas row: throughput against the number of gateway replicas behind haproxy (N = 1, 2,
3), how requests spread, beam rows per decoder step per replica, wrong answers, and one replica killed
mid-load. Every replica, the balancer and the clients share this machine's cores, so the row says how
much scaling out costs or gains *here*; it is not a cluster's figure.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import load
from bench.balancer import HAPROXY_HINT, Balancer, find_haproxy, run_balancer
from bench.replicas import (
    Ask,
    Replica,
    Tally,
    answered_per_replica,
    classifier_input,
    fixed_load,
    grpc_classifier,
    http_classifier,
    http_translator,
    references,
    retried,
    rows_per_step,
    run_replicas,
    same_answer,
)
from bench.report import table
from bench.servers import _http_session as http_session

log = logging.getLogger(__name__)
REPLICAS = (1, 2, 3)
INPUTS, CONCURRENCY, TRANSLATE_CONCURRENCY = 32, 32, 16


def checked(ask: Ask, expected: list[Any], tally: Tally) -> load.Send:
    """A closed-loop sender over the inputs in turn that counts each answer in ``tally`` once: ``ok``,
    ``wrong`` (answered differently) or ``failed`` (no answer: an error, raised again for the loop)."""
    turn = itertools.count()

    async def send() -> bool:
        i = next(turn) % len(expected)
        try:
            answer = await ask(i)
        except Exception:
            tally.failed += 1
            raise
        good = same_answer(answer, expected[i])
        tally.ok, tally.wrong = tally.ok + good, tally.wrong + (not good)
        return good

    return send


async def _measure(
    balancer: Balancer, replicas: list[Replica], workload: dict[str, Any], duration_s: float
) -> dict[str, Any]:
    """Each workload through the balancer for ``duration_s``; spread and rows per step from the counters."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    row: dict[str, Any] = {"replicas": len(replicas)}
    before = {p: answered_per_replica(balancer, p) for p in ("http", "grpc")}
    steps_before = [rows_per_step(r, workload["translator"]) for r in replicas] if workload["texts"] else []
    async with http_session(CONCURRENCY) as session, grpc.aio.insecure_channel(balancer.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        name, images, model = workload["input_name"], workload["images"], workload["classifier"]
        asks = {
            "http": (http_classifier(session, balancer.http_url, model, name, images), CONCURRENCY),
            "grpc": (grpc_classifier(stub, model, name, images), CONCURRENCY),
        }
        if workload["texts"]:
            asks["translate"] = (
                http_translator(session, balancer.http_url, workload["translator"], workload["texts"]),
                TRANSLATE_CONCURRENCY,
            )
        tally = Tally()
        for key, (ask, concurrency) in asks.items():
            result = await load.closed_loop(
                checked(ask, workload["expected"][key], tally), concurrency, duration_s
            )
            row[f"{key}_per_s"], row[f"{key}_p99_ms"] = (
                result.ok / result.duration_s,
                result.as_dict()["p99_ms"],
            )
    # every request's answer, warm-up included: a wrong answer is not also a failed one
    row["wrong"], row["failed"] = tally.wrong, tally.failed
    for protocol in ("http", "grpc"):
        after = answered_per_replica(balancer, protocol)
        row[f"{protocol}_spread"] = [
            after[r.upstream.name] - before[protocol][r.upstream.name] for r in replicas
        ]
    if workload["texts"]:
        after_steps = [rows_per_step(r, workload["translator"]) for r in replicas]
        row["rows_per_step"] = [
            round((a[0] - b[0]) / max(a[1] - b[1], 1), 1)
            for a, b in zip(after_steps, steps_before, strict=True)
        ]
    return row


async def _references(replica: Replica, workload: dict[str, Any]) -> dict[str, list[Any]]:
    """What one gateway answers for every input, asked alone (the answers every replica must match)."""
    async with http_session(4) as session:
        images, name = workload["images"], workload["input_name"]
        expected = {
            "http": await references(
                http_classifier(session, replica.url, workload["classifier"], name, images), INPUTS
            )
        }
        expected["grpc"] = expected["http"]
        if workload["texts"]:
            ask = http_translator(session, replica.url, workload["translator"], workload["texts"])
            expected["translate"] = await references(ask, len(workload["texts"]))
    return expected


async def _kill_mid_load(
    balancer: Balancer, victim: Replica, workload: dict[str, Any], total: int
) -> dict[str, Any]:
    """HTTP and gRPC at once; SIGKILL ``victim`` when a quarter of the answers are in."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    def kill(answered: int) -> None:
        if answered >= total // 4 and victim.process.poll() is None:
            victim.process.kill()

    name, images, model, expected = (
        workload["input_name"],
        workload["images"],
        workload["classifier"],
        workload["expected"]["http"],
    )
    async with http_session(16) as session, grpc.aio.insecure_channel(balancer.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        http, grpc_ = await asyncio.gather(
            fixed_load(
                http_classifier(session, balancer.http_url, model, name, images), expected, total, 8, kill
            ),
            fixed_load(grpc_classifier(stub, model, name, images), expected, total, 8, kill),
        )
    return {
        "requests_per_protocol": total,
        "http": http.as_dict(),
        "grpc": grpc_.as_dict(),
        **retried(balancer),
    }


def _texts(count: int) -> list[str]:
    from training.data.numbers import generate_pairs

    return [src for src, _ in generate_pairs(count, lang="fr", seed=7)]


def run(
    args: Any, profile: dict[str, Any], out: Path, progress: Callable[[str], None] = log.info
) -> dict[str, Any]:
    """Three replicas started once; haproxy over the first N of them for N = 1, 2, 3; then the kill."""
    if find_haproxy() is None:
        return {
            "error": HAPROXY_HINT,
            "markdown": f"## Gateway replicas behind haproxy\n\nskipped: {HAPROXY_HINT}\n",
        }
    repository: Path = args.repository
    input_name, images = classifier_input(repository, args.classifier, INPUTS)
    translate = (repository / args.translator / "kiln.json").exists()
    workload = {
        "classifier": args.classifier,
        "translator": args.translator,
        "input_name": input_name,
        "images": images,
        "texts": _texts(INPUTS) if translate else [],
    }
    workdir = out / "logs" / "replicas"
    load_average = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    with run_replicas(repository, max(REPLICAS), workdir, threads=args.threads) as replicas:
        workload["expected"] = asyncio.run(_references(replicas[0], workload))
        for n in REPLICAS:
            progress(f"replicas: {n} gateway(s) behind haproxy, {profile['duration_s']:.0f} s per workload")
            with run_balancer([r.upstream for r in replicas[:n]], workdir / f"n{n}") as balancer:
                rows.append(asyncio.run(_measure(balancer, replicas[:n], workload, profile["duration_s"])))
        progress("replicas: one of three killed mid-load")
        with run_balancer([r.upstream for r in replicas], workdir / "kill") as balancer:
            kill = asyncio.run(_kill_mid_load(balancer, replicas[-1], workload, total=200))
    return {
        "rows": rows,
        "kill": kill,
        "load_average": load_average,
        "markdown": markdown(rows, kill, args.classifier, load_average),
    }


def markdown(rows: list[dict[str, Any]], kill: dict[str, Any], classifier: str, load_average: float) -> str:
    cols = [
        "replicas",
        "http_per_s",
        "grpc_per_s",
        "translate_per_s",
        "http_spread",
        "grpc_spread",
        "rows_per_step",
        "wrong",
        "failed",
    ]
    base = rows[0]
    for r in rows:
        r["http_x"] = r["http_per_s"] / base["http_per_s"] if base["http_per_s"] else float("nan")
    lost = {p: kill[p]["failed"] + kill[p]["wrong"] for p in ("http", "grpc")}
    cut = {p: kill[p]["cut"] for p in ("http", "grpc")}
    return (
        f"## Gateway replicas behind haproxy (`{classifier}` classify over HTTP and gRPC, translate over HTTP)\n\n"
        "Closed loop through haproxy (least connections; gRPC balanced per request from one channel). "
        "Every replica, haproxy and the clients share this machine's cores: the row shows the cost or gain "
        "of scaling out *here*, not a cluster's. "
        f"Load average when it started: {load_average:.1f} on {os.cpu_count()} cores.\n\n"
        + table(rows, [*cols[:1], "http_x", *cols[1:]])
        + f"\n\nOne of three replicas SIGKILLed after {kill['requests_per_protocol'] // 4} answers: "
        f"{kill['requests_per_protocol']} requests per protocol, lost or wrong: HTTP {lost['http']}, "
        f"gRPC {lost['grpc']}; cut after the answer had begun (not retryable): HTTP {cut['http']}, gRPC "
        f"{cut['grpc']}; haproxy retried {kill['wretr']} and redispatched {kill['wredis']}.\n"
    )
