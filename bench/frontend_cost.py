"""The translation gateway's front end measured apart from its decode side, per request.

Through one gateway process, each request costs CPU on three threads: the event loop (HTTP, routing,
validation, tokenization, the answer), the decode thread (encoder, decoder, the search's Python) and,
on the same cores, the load client. The event loop's share depends on what runs beside it: the decode
thread shares its GIL and its core's caches, and at a low request rate each request pays the loop's
wake-ups alone instead of sharing them. This runs the same workload three ways on one gateway process
(``--workers 1``) and reads each thread's CPU (``/proc/<pid>/task/<tid>/schedstat``: nanoseconds on a
CPU, not the 10 ms ticks of ``stat``)::

    real    the gateway as it serves
    paced   every translator answering at once with the source's tokens (the decode side idle),
            each answer held back so that requests arrive at the real run's rate
    instant the same without holding answers back (requests as fast as the loop answers them)

``real - paced`` on the event loop is what the decode side costs the loop (its GIL and caches, the
hand-off of requests and answers); ``paced - instant`` what a low rate costs it::

    python -m bench.frontend_cost --repository R --checkpoints C [--concurrency 16] [--requests 2000]

``--serve DELAY_S -- ARGS`` is the answering-at-once gateway itself (``python -m serving ARGS`` with
:meth:`~serving.decoding.scheduler.DecodingScheduler.submit` replaced), started by the runs above.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

MODES = ("real", "paced", "instant")


@dataclass(frozen=True)
class Cost:
    """One run's requests a second and CPU a request (milliseconds) by thread."""

    mode: str
    requests: int
    per_s: float
    loop_ms: float  # the gateway's main thread: its event loop
    decode_ms: float  # decode threads: named kdec<n>.<worker>-* (kiln-decode-* outside a translator)
    other_ms: float  # the gateway's other threads (ONNX Runtime's, gRPC's, the codec thread)
    client_ms: float  # this process (the load client)

    def line(self) -> str:
        return (
            f"{self.mode:8s} {self.per_s:7.0f} requests/s  CPU ms a request: event loop {self.loop_ms:.3f}"
            f"  decode {self.decode_ms:.3f}  other {self.other_ms:.3f}  client {self.client_ms:.3f}"
        )


# the OS names of decode threads: a translator's (serving.decoding.translator.decode_thread_name), or
# a scheduler's built alone
DECODE_THREADS = ("kdec", "kiln-decode")


def thread_cpu(pid: int) -> dict[str, float]:
    """Seconds on a CPU so far of ``pid``'s threads, summed as ``loop`` (the main thread), ``decode``
    (:data:`DECODE_THREADS`) and ``other``; a thread that ended between listing and reading is skipped."""
    if not Path("/proc/self/task").is_dir() or not Path(f"/proc/self/task/{os.getpid()}/schedstat").is_file():
        raise RuntimeError(
            "bench.frontend_cost reads each thread's CPU from /proc/<pid>/task/<tid>/schedstat, which this "
            "system does not have (Linux with scheduler statistics)"
        )
    spent = {"loop": 0.0, "decode": 0.0, "other": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            name = (task / "comm").read_text().strip()
            seconds = int((task / "schedstat").read_text().split()[0]) / 1e9
            kind = (
                "loop" if task.name == str(pid) else "decode" if name.startswith(DECODE_THREADS) else "other"
            )
            spent[kind] += seconds
    return spent


def tree_cpu(pid: int) -> dict[str, float]:
    """:func:`thread_cpu` summed over ``pid`` and every process below it (a gateway with ``--workers``:
    its workers; their main threads count as ``loop``). A process that ended meanwhile is skipped."""
    spent = thread_cpu(pid)
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            children += [int(child) for child in (task / "children").read_text().split()]
    for child in children:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for kind, seconds in tree_cpu(child).items():
                spent[kind] += seconds
    return spent


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


@contextlib.contextmanager
def _held_ports() -> Iterator[tuple[int, int]]:
    """HTTP and gRPC ports held (SO_REUSEPORT, never listening) while the gateway binds beside them."""
    from serving.triton.ports import held_port

    with held_port(reuse_port=True) as http, held_port(reuse_port=True) as grpc:
        yield http.getsockname()[1], grpc.getsockname()[1]


def measure(
    repository: Path,
    model: str,
    texts: Sequence[str],
    *,
    mode: str,
    concurrency: int,
    rounds: int,
    answer_delay_s: float = 0.0,
    log_path: Path | None = None,
    max_length: int = 64,
) -> Cost:
    """One gateway process (``mode`` real, or answering at once after ``answer_delay_s``), warmed up,
    then ``rounds`` passes over ``texts`` (beam 4, at most ``max_length`` tokens: the workload's) from
    ``concurrency`` keep-alive clients."""
    from bench.servers import gateway_cmd
    from bench.translation_gateway import _gateway_run, run_client
    from kiln.processes import running

    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {MODES}")
    with _held_ports() as (http, grpc):
        cmd = gateway_cmd(repository, http, grpc, threads=1) + ["--reuse-port"]
        if mode != "real":  # the same flags to the answering-at-once gateway
            cmd = [
                sys.executable,
                "-m",
                "bench.frontend_cost",
                "--serve",
                str(answer_delay_s),
                "--",
                *cmd[3:],
            ]
        url = f"http://127.0.0.1:{http}"
        with running(cmd, f"{url}/v2/health/ready", log_path=log_path) as process:
            warm = list(texts[: 4 * concurrency])
            run_client(_gateway_run(url, model, warm, 4, concurrency, max_length=max_length))  # warm-up
            before, client = thread_cpu(process.pid), _own_cpu()
            run = _gateway_run(url, model, list(texts), 4, concurrency, rounds, max_length=max_length)
            _, seconds, _ = run_client(run)
            after, client = thread_cpu(process.pid), _own_cpu() - client
    n = len(texts) * rounds
    ms = {kind: (after[kind] - before[kind]) * 1e3 / n for kind in after}
    return Cost(mode, n, n / seconds, ms["loop"], ms["decode"], ms["other"], client * 1e3 / n)


def compare(
    repository: Path,
    model: str,
    texts: Sequence[str],
    *,
    concurrency: int,
    rounds: int,
    out: Path | None = None,
    max_length: int = 64,
) -> list[Cost]:
    """The three runs of the module docstring, ``paced`` at the ``real`` run's rate."""
    logs = {mode: out / f"frontend-{mode}.log" if out else None for mode in MODES}
    common = dict(concurrency=concurrency, rounds=rounds, max_length=max_length)
    real = measure(repository, model, texts, mode="real", log_path=logs["real"], **common)
    delay = concurrency / real.per_s  # each client's time a request in the real run
    paced = measure(
        repository, model, texts, mode="paced", answer_delay_s=delay, log_path=logs["paced"], **common
    )
    instant = measure(repository, model, texts, mode="instant", log_path=logs["instant"], **common)
    return [real, paced, instant]


def echo_submit(answer_delay_s: float = 0.0):  # noqa: ANN201 - a DecodingScheduler.submit
    """A :meth:`~serving.decoding.scheduler.DecodingScheduler.submit` that checks the options as the
    real one does, waits ``answer_delay_s`` and answers each source with its own tokens and EOS (the
    decode side idle; the answer as long as a translation, for the detokenizer)."""
    from serving.decoding.options import Hypothesis

    async def submit(self, sources, config, timeout_s=None, version=""):  # noqa: ANN001, ANN202, ARG001
        self._check(config)
        if answer_delay_s > 0:
            await asyncio.sleep(answer_delay_s)
        eos = self.spec.eos_id
        return [[Hypothesis([*source, eos], 0.0, 0.0)] * config.n_best for source in sources]

    return submit


def serve(answer_delay_s: float, argv: list[str]) -> None:
    """``python -m serving argv`` with every translator's submit replaced by :func:`echo_submit`."""
    from serving.__main__ import main
    from serving.decoding import scheduler

    scheduler.DecodingScheduler.submit = echo_submit(answer_delay_s)
    main(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--serve"]:
        if len(args) < 3 or args[2] != "--":
            raise SystemExit("usage: python -m bench.frontend_cost --serve DELAY_S -- GATEWAY_ARGS")
        serve(float(args[1]), args[3:])
        return
    from bench.translation_rows import Workload, workload_parser

    try:
        thread_cpu(os.getpid())  # refuse before starting anything where per-thread CPU cannot be read
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    parser = workload_parser(
        "python -m bench.frontend_cost",
        __doc__.split("\n")[0],
        "keep-alive clients (one worker's share of c=32)",
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests a run (whole passes over the texts)"
    )
    parsed = parser.parse_args(args)
    work = Workload.load(parsed.checkpoints, parsed.model, 128)
    texts = work.texts
    rounds = max(1, -(-parsed.requests // len(texts)))
    entry = parsed.entry or parsed.model
    options = dict(concurrency=parsed.concurrency, rounds=rounds, max_length=work.max_length)
    for cost in compare(parsed.repository, entry, texts, **options):
        print(cost.line(), flush=True)


if __name__ == "__main__":
    main()
