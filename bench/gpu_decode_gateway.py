"""The gateway part of ``python -m bench.gpu_decode_probe --translate ... --gateway-workers``: held-out
sentences through the gateway with the device-resident decoder on and off, at several worker counts and
concurrencies, with the gateway's CPU a sentence by thread and its decode threads' busy share."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.frontend_cost import tree_cpu
from bench.servers import gateway_cmd
from bench.translation_gateway import _gateway_run, run_client, steady_rounds
from bench.translation_rows import Workload
from kiln.processes import running
from serving.triton.ports import free_port


def gateway(
    repository: Path,
    checkpoints: Path,
    translator: str,
    sentences: int,
    workers: list[int],
    concurrency: list[int],
) -> list[dict[str, Any]]:
    """The gateway serving ``repository`` (its own devices), ``workers`` processes, each held-out
    sentence its own request at each ``concurrency`` (beam 4), with the device-resident decoder
    (``KILN_RESIDENT_DECODER=1``) and without (``0``, the default): target tokens/s after a warm pass,
    and the gateway's CPU a sentence by thread (``bench.frontend_cost.tree_cpu``: event loops, decode
    threads, the rest) with the decode threads' busy share of the run. A decode thread near 100 % busy
    is bound by its own Python and calls; well below, it waits (on the device, or for requests: then
    a higher concurrency gains)."""
    work = Workload.load(checkpoints, translator, sentences)
    rows = []
    for count in workers:
        for mode in ("1", "0"):
            rows += _one_gateway(repository, translator, work, count, mode, concurrency)
    base = next((r["hyps"] for r in rows if "hyps" in r), None)
    for row in rows:
        if "hyps" in row:
            row["same_as_first"] = round(
                100.0 * sum(a == b for a, b in zip(row.pop("hyps"), base, strict=True)) / len(base), 2
            )
        print(json.dumps(row), flush=True)
    return rows


def _one_gateway(
    repository: Path, translator: str, work: Workload, count: int, mode: str, concurrency: list[int]
) -> list[dict[str, Any]]:
    """One gateway of ``count`` processes, its resident decoder ``mode`` ("1" on, "0" off): a row at each
    concurrency, then a row saying why, where the gateway failed (its log in the temporary directory)."""
    rows: list[dict[str, Any]] = []
    http, grpc = free_port(), free_port()
    url = f"http://127.0.0.1:{http}"
    os.environ["KILN_RESIDENT_DECODER"] = mode
    try:
        log_path = Path(tempfile.gettempdir()) / f"kiln-probe-gateway-{count}-{mode}.log"
        with running(  # one decode thread a process, whose busy share the rows read (a CPU default is 2)
            [*gateway_cmd(repository, http, grpc, 1, workers=count), "--decode-workers", "1"],
            f"{url}/v2/health/ready",
            timeout_s=300,
            log_path=log_path,
        ) as process:
            for clients in concurrency:
                rows.append(_measure(url, translator, work, process.pid, count, mode, clients))
    except Exception as exc:  # noqa: BLE001 - reported
        rows.append({"workers": count, "resident": mode, "failed": f"{type(exc).__name__}: {str(exc)[:300]}"})
    finally:
        os.environ.pop("KILN_RESIDENT_DECODER", None)
    return rows


def _measure(
    url: str, translator: str, work: Workload, pid: int, count: int, mode: str, clients: int
) -> dict[str, Any]:
    """One run of ``clients`` against the gateway at ``url`` (process ``pid``, ``count`` workers) after a
    warm pass: its rates, CPU a sentence by thread, decode threads' busy share and hypotheses (compared
    with the first run's by :func:`gateway`); a failure is the row's ``failed``."""
    row: dict[str, Any] = {"workers": count, "resident": mode, "concurrency": clients}
    try:
        warm, most = work.texts[: 2 * clients], work.max_length  # the workload's, as the bench's rows
        run_client(_gateway_run(url, translator, warm, 4, clients, max_length=most))
        rounds = steady_rounds(len(work.texts), clients)
        before = tree_cpu(pid)
        served: list[str] = []  # every answer: ``hyps`` marks a text whose rounds disagreed, no translation
        run = _gateway_run(url, translator, work.texts, 4, clients, rounds, served, max_length=most)
        hyps, seconds, _ = run_client(run)
        spent = {k: v - before[k] for k, v in tree_cpu(pid).items()}
        n = len(work.texts) * rounds
        row["tokens_per_s"] = round(work.count(served) / seconds, 1)
        row["sentences_per_s"] = round(n / seconds, 1)
        row["cpu_ms_a_sentence"] = {k: round(v * 1e3 / n, 3) for k, v in spent.items()}
        row["decode_busy"] = round(spent["decode"] / (seconds * count), 3)
        row["hyps"] = hyps
    except Exception as exc:  # noqa: BLE001 - reported
        row["failed"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return row
