"""The decode side of a translator's scheduler replayed on one thread, to measure its Python.

Through the gateway, run-to-run noise (±20 % on the 2-core machine) hides changes of a few percent in
the decode thread's Python, and in-process the event loop's GIL contention blurs them. This replays
what :class:`serving.decoding.scheduler.DecodingScheduler` does to its batch, on the calling thread:
``concurrency`` sentences in flight, a finished sentence replaced by the next source, joiners admitted
in one encoder call once they are a quarter of the running sentences or have waited two steps (the
scheduler's defaults), each call running the steps the scheduler's would (up to 16 while nothing waits,
else until the oldest joiner has waited two; finished sentences held up to ``finish_hold_steps``), over
the real encoder and decoder runners. It reports each
sentence's CPU split into the decoder's runs (the compiled ``kiln_decode_step`` calls where the decoder
has them), the encoder's and the Python around them; identical runs agree within ~±4 %. To compare two
versions of the code, run it from both checkouts alternately and compare Python per unit of encoder
time (the same code on both sides, so it tracks the machine's speed)::

    python -m bench.decode_replay --repository R --checkpoints C [--concurrency 16] [--sentences 1500]

``--functions`` then replays once more with each function of the decode path (:data:`DECODE_FUNCTIONS`)
timed, and lists each one's own CPU a call (its time less that of the timed functions it calls), so a
change to one function can be read apart from the rest; the timers add ~0.5 us to each timed call.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.decoding import beam_search as bs
from serving.decoding import compiled_step, native_batch, native_decoder, rows, step_spec, stepper
from serving.decoding.scheduler_config import SchedulerConfig

# What --functions times: (owner, attribute) of the functions a decode step runs through. Module-level
# functions are replaced on their module, so only calls made through it (``compiled_step.pack(...)``,
# as stepper makes them) are timed.
DECODE_FUNCTIONS: tuple[tuple[Any, str], ...] = (
    *(
        (native_batch.NativeSteps, name)
        for name in ("_native_step", "_native_plan", "_outputs", "_tensor_fields")
    ),
    *(
        (stepper.DecodeBatch, name)
        for name in (
            "step",
            "_current_layout",
            "_advance_rows",
            "_gather",
            "_compact",
            "_retire",
            "remove",
            "join",
        )
    ),
    (native_decoder.NativeDecoder, "step"),
    (compiled_step, "pack"),
    (compiled_step, "step"),
    (compiled_step, "gather_grow"),
    (compiled_step.PackedStep, "result"),
    (rows.EncoderRows, "add"),
    (rows.EncoderRows, "fit"),
    (rows.EncoderRows, "for_rows"),
    (bs, "start"),
    (bs, "concat"),
    (bs, "remove"),
    (bs, "results"),
    (step_spec, "encoder_inputs"),
)


@dataclass(frozen=True)
class Replay:
    """CPU a sentence (microseconds) and the calls behind it."""

    sentences: int
    calls: int
    total_us: float
    decoder_us: float
    encoder_us: float

    @property
    def python_us(self) -> float:
        return self.total_us - self.decoder_us - self.encoder_us

    @property
    def python_per_call_us(self) -> float:
        return self.python_us * self.sentences / self.calls

    def line(self) -> str:
        return (
            f"per sentence us: total {self.total_us:.0f} decoder {self.decoder_us:.0f} "
            f"encoder {self.encoder_us:.0f} python {self.python_us:.0f}; python per call "
            f"{self.python_per_call_us:.0f} us, {self.calls / self.sentences:.3f} calls a sentence"
        )


@dataclass
class FunctionSplit:
    """Each timed function's own thread CPU (ns: its time less that of the timed calls it made) and
    its calls, by label (``Owner.name``)."""

    own_ns: collections.Counter[str]
    calls: collections.Counter[str]

    def lines(self, per: int, unit: str) -> list[str]:
        """One line per function that ran, the most CPU first, in microseconds per ``unit`` (``per`` of them)."""
        return [
            f"  {label:42s} {ns / 1e3 / per:8.1f} us a {unit}"
            + (f"  ({self.calls[label] / per:.2f} calls a {unit})" if self.calls[label] else "")
            for label, ns in self.own_ns.most_common()
        ]


@contextlib.contextmanager
def function_split(
    targets: Sequence[tuple[Any, str]] = DECODE_FUNCTIONS,
) -> Iterator[tuple[FunctionSplit, Callable[[str, Callable[..., Any]], Callable[..., Any]]]]:
    """Time every ``(owner, attribute)`` of ``targets`` on the calling thread while the block runs (each
    put back afterwards); yields the split and ``timed(label, fn)``, which wraps one more callable (e.g.
    a runner passed in) the same way."""
    split = FunctionSplit(collections.Counter(), collections.Counter())
    nested: list[int] = []  # per active timed call: the time of the timed calls made inside it

    def timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time_ns()
            nested.append(0)
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.thread_time_ns() - started
                split.own_ns[label] += spent - nested.pop()
                split.calls[label] += 1
                if nested:
                    nested[-1] += spent

        return run

    saved = []
    try:
        for owner, name in targets:
            original = vars(owner)[name]  # raises for a name the owner does not define itself
            saved.append((owner, name, original))
            label = f"{getattr(owner, '__name__', owner).rpartition('.')[2]}.{name}"
            setattr(owner, name, timed(label, original))
        yield split, timed
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def replay(
    spec: Any,
    run_encoder: step_spec.Runner,
    run_decoder: step_spec.Runner,
    sources: Sequence[Sequence[int]],
    config: bs.BeamConfig,
    *,
    indexed: bool,
    concurrency: int = 16,
    sentences: int = 1500,
    join_fraction: float = SchedulerConfig.join_fraction,
    join_wait_steps: int = SchedulerConfig.join_wait_steps,
    finish_hold_steps: int = SchedulerConfig.finish_hold_steps,
) -> tuple[Replay, list[list[bs.Hypothesis]]]:
    """Decode ``sentences`` sources (``sources`` cycled) as the scheduler would at ``concurrency``;
    returns the CPU split and each sentence's hypotheses, in the order they were admitted."""
    spent: collections.Counter[str] = collections.Counter()
    admission = _Admission(sentences, concurrency, join_fraction, join_wait_steps)
    with _timed_decoder(run_decoder, spent) as decoder:
        batch = stepper.DecodeBatch(spec, indexed)
        batch.stop = np.zeros(1, dtype=np.int64)  # arrivals come between calls here: never set
        batch.hold_steps = finish_hold_steps
        join = functools.partial(_join, batch, spec, run_encoder, sources, config, spent)
        started = time.thread_time()
        results, calls = _decode(batch, decoder, join, admission)
        total = time.thread_time() - started
    per = 1e6 / sentences
    split = Replay(sentences, calls, total * per, spent["decoder"] * per, spent["encoder"] * per)
    return split, [results[i] for i in range(sentences)]


@contextlib.contextmanager
def _timed_decoder(
    run_decoder: step_spec.Runner, spent: collections.Counter[str]
) -> Iterator[step_spec.Runner]:
    """The decoder to step with, its runs' CPU added to ``spent["decoder"]``: where it has compiled
    calls, those are timed on the instance (put back after), else each call of ``run_decoder``."""
    native = getattr(run_decoder, "native", None)
    if native is None:

        def decoder(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            started = time.thread_time()
            try:
                return run_decoder(feeds)
            finally:
                spent["decoder"] += time.thread_time() - started

        yield decoder
        return
    step = native.step

    def timed_step(plan: np.ndarray, dyn: np.ndarray) -> None:
        started = time.thread_time()
        try:
            step(plan, dyn)
        finally:
            spent["decoder"] += time.thread_time() - started

    native.step = timed_step
    try:
        yield run_decoder
    finally:
        del native.step  # the class's method again


@dataclass(frozen=True)
class _Admission:
    """When the scheduler (at its defaults) admits new sentences, and how many steps a call runs."""

    sentences: int  # in all
    concurrency: int  # in flight at most
    join_fraction: float
    join_wait_steps: int

    def due(self, waiting: int, running: int, waited: int) -> bool:
        """Whether the waiting sentences join now: nothing runs, the oldest has waited long enough, or
        they are enough of the running ones."""
        return bool(waiting) and (
            not running or waited >= self.join_wait_steps or waiting >= self.join_fraction * running
        )

    def steps(self, waiting: int, waited: int) -> int:
        """The next call's steps: up to the most while nothing waits, else until the oldest joiner has
        waited long enough."""
        return max(1, self.join_wait_steps - waited) if waiting else native_decoder.MAX_STEPS


def _join(
    batch: stepper.DecodeBatch,
    spec: Any,
    run_encoder: step_spec.Runner,
    sources: Sequence[Sequence[int]],
    config: bs.BeamConfig,
    spent: collections.Counter[str],
    waiting: list[int],
) -> None:
    """The waiting sentences encoded in one call (its CPU added to ``spent["encoder"]``) and joined."""
    texts = [sources[i % len(sources)] for i in waiting]
    encoding = time.thread_time()
    encoded = run_encoder(step_spec.encoder_inputs(spec, texts))
    spent["encoder"] += time.thread_time() - encoding
    batch.join(waiting, encoded, [config] * len(waiting), [len(t) + 1 for t in texts])


def _decode(
    batch: stepper.DecodeBatch,
    decoder: step_spec.Runner,
    join: Callable[[list[int]], None],
    admission: _Admission,
) -> tuple[dict[int, list[bs.Hypothesis]], int]:
    """Every sentence admitted, joined and stepped to its end; their hypotheses by sentence number
    (its source: the number modulo the sources) and the decoder calls it took."""
    results: dict[int, list[bs.Hypothesis]] = {}
    waiting: list[int] = []
    admitted, waited, calls = 0, 0, 0
    while len(results) < admission.sentences:
        while admitted < admission.sentences and batch.size + len(waiting) < admission.concurrency:
            waiting.append(admitted)
            admitted += 1
        if admission.due(len(waiting), batch.size, waited):
            join(waiting)
            waiting, waited = [], 0
        for done in batch.step(decoder, len(waiting), admission.steps(len(waiting), waited)):
            if done.error is not None:
                raise RuntimeError(f"sentence {done.key}: {done.error}")
            results[done.key] = done.hypotheses
        calls += 1
        if waiting:
            waited += batch.last_steps
    return results, calls


def main(argv: Sequence[str] | None = None) -> None:
    from bench.inputs import non_negative_int, positive_int
    from bench.translation_engines import kiln_translator
    from bench.translation_rows import Workload, workload_parser
    from serving.decoding.options import DecodingOptions

    parser = workload_parser(
        "python -m bench.decode_replay",
        __doc__.split("\n")[0],
        "sentences in flight (a gateway worker's share)",
    )
    parser.add_argument("--sentences", type=positive_int, default=1500)
    parser.add_argument("--beam", type=positive_int, default=4)
    parser.add_argument(
        "--warmup", type=non_negative_int, default=300, help="sentences replayed first, not counted (0: none)"
    )
    parser.add_argument(
        "--functions",
        action="store_true",
        help="then replay once more with the decode path's functions timed: each one's own CPU a call",
    )
    args = parser.parse_args(argv)
    texts = Workload.load(args.checkpoints, args.model, 128).texts
    translator, _ = kiln_translator(args.repository, args.entry or args.model)
    limit = translator.limits.max_texts
    sources = [
        ids for i in range(0, len(texts), limit) for ids in translator.source_ids(texts[i : i + limit])
    ]
    # max_length as a request that does not choose it gets: 64, or the model's max_positions if lower
    config = translator.beam_config(DecodingOptions(beam_size=args.beam))
    scheduler = translator.schedulers[0]
    common = dict(indexed=scheduler.indexed, concurrency=args.concurrency)
    run = (scheduler.spec, scheduler.run_encoder, scheduler.run_decoder, sources, config)
    if args.warmup:
        replay(*run, sentences=args.warmup, **common)
    split, _ = replay(*run, sentences=args.sentences, **common)
    print(split.line())
    if args.functions:
        with function_split() as (functions, timed):
            encoder = timed("encoder (ONNX Runtime)", scheduler.run_encoder)
            timed_run = (scheduler.spec, encoder, scheduler.run_decoder, sources, config)
            started = time.thread_time_ns()
            again, _ = replay(*timed_run, sentences=args.sentences, **common)
            total = time.thread_time_ns() - started
        functions.own_ns["(the replay's own loop)"] = total - sum(functions.own_ns.values())
        print(f"own CPU a call ({again.calls} calls; the decoder's runs are NativeDecoder.step):")
        print("\n".join(functions.lines(again.calls, "call")))


if __name__ == "__main__":
    main()
