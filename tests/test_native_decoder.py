"""serving.decoding.native_decoder: a decoder step in one compiled call decodes exactly as the Python step.

Over a tiny exported Transformer (the gateway's own export path), every search is compared bit for bit
(tokens and scores) with the Python step over the same ONNX model: one sentence, batches with mixed
beam sizes, sentences joining and leaving between steps, several steps in one call and the stop flag.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from serving.decoding import native, native_decoder, offline
from serving.decoding import step_spec as sp
from serving.decoding import stepper as st
from serving.decoding.options import DecodingOptions, config_for
from serving.execution.onnxruntime import onnxruntime_runner
from serving.execution.repository import Repository
from tests.test_translate_serving import exported_translators, texts_of_mixed_lengths

pytestmark = pytest.mark.skipif(
    native_decoder._c_library() is None, reason="no C compiler or no ONNX Runtime C library here"
)


@pytest.fixture(scope="module")
def model(exported_translator_models, tmp_path_factory):
    """(spec, encoder runner, Python decoder runner, compiled decoder runner, source ids)."""
    spec, runner, sources = transformer_runners(exported_translator_models, tmp_path_factory, "native", 24)
    compiled = native_decoder.attach(runner("decoder"))
    assert compiled.native is not None and Path(compiled.model_file).name == native.FUSED_GRAPH
    return spec, runner("encoder"), runner("decoder"), compiled, sources


def transformer_runners(exported_translator_models, tmp_path_factory, prefix: str, texts: int):
    """The tiny exported ``transformer``'s step spec, a maker of one-thread runners over the graphs the
    gateway's decode workers open (``runner("encoder")``, ``runner("decoder")``: the decoder's
    fused-attention step where written, its path as ``model_file``), and ``texts`` source id lists of
    mixed lengths."""
    repository = exported_translators(exported_translator_models, tmp_path_factory, prefix, ("transformer",))
    entry = Repository(repository).get("transformer")
    block = entry.kiln["translator"]

    def runner(part: str):
        options = ort.SessionOptions()  # one per session: custom operators register once per options
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        path = native.graph_to_open(repository / block[part] / "1" / "model.onnx")
        run = onnxruntime_runner(ort.InferenceSession(str(path), native.session_options(path, options)))
        run.model_file = path
        return run

    from serving.decoding.translator import translator_from_entry

    translator = translator_from_entry(entry.path, entry.kiln, runner("encoder"), runner("decoder"))
    return (
        sp.parse_step_spec(block["step_spec"]),
        runner,
        translator.source_ids(texts_of_mixed_lengths(texts)),
    )


def _config(spec, beam: int, **changes):
    options = dataclasses.replace(DecodingOptions(beam_size=beam, max_length=24), **changes)
    return config_for(options, eos_id=spec.eos_id, bos_id=spec.bos_id)


def _plain(hypotheses):
    return [[(h.tokens, h.score, h.normalized_score) for h in hyps] for hyps in hypotheses]


@pytest.mark.parametrize("beam", [1, 4])
def test_one_sentence_at_a_time_decodes_bit_for_bit_as_the_python_step(model, beam):
    spec, encoder, python, compiled, sources = model
    config = _config(spec, beam)
    for source in sources[:12]:
        want = offline.translate_ids(encoder, python, spec, [source], config)
        assert _plain(offline.translate_ids(encoder, compiled, spec, [source], config)) == _plain(want)


def test_batches_of_mixed_beam_sizes_decode_bit_for_bit_as_the_python_step(model):
    spec, encoder, python, compiled, sources = model
    for beam, sentences in ((2, sources[:8]), (4, sources[8:24]), (8, sources[:5])):
        config = _config(spec, beam, n_best=2)
        want = offline.translate_ids(encoder, python, spec, sentences, config)
        assert _plain(offline.translate_ids(encoder, compiled, spec, sentences, config)) == _plain(want)


def _joining(spec, encoder, decoder, sources, configs, steps: int, indexed: bool, stop=None):
    """Sentence i joins before decode step 2*i (iteration-level batching); returns hypotheses and steps per call.

    A call never runs past the next join, so every step sees the same rows whatever `steps` is: scores
    are then bit-identical, not just close (a GEMM over other rows may round differently)."""
    batch = st.DecodeBatch(spec, indexed=indexed)
    batch.stop = stop
    finished, done_steps, joined, ran = {}, 0, 0, []
    while len(finished) < len(sources):
        if joined < len(sources) and done_steps >= 2 * joined:
            batch.join(
                [joined],
                encoder(sp.encoder_inputs(spec, [sources[joined]])),
                [configs[joined]],
                [len(sources[joined]) + 1],
            )
            joined += 1
        budget = steps if joined == len(sources) else max(1, min(steps, 2 * joined - done_steps))
        finished |= {done.key: done.hypotheses for done in batch.step(decoder, steps=budget)}
        ran.append(batch.last_steps)
        done_steps += batch.last_steps
    return _plain([finished[i] for i in range(len(sources))]), ran


@pytest.mark.parametrize("indexed", [False, True], ids=["per-row", "indexed"])
def test_sentences_joining_and_leaving_decode_bit_for_bit_as_the_python_step(model, indexed):
    spec, encoder, python, compiled, sources = model
    # a beam-8 sentence joining late: every buffer of the compiled call grows for its rows
    configs = [_config(spec, beam) for beam in (4, 1, 2, 4, 3, 8, 1, 4)]
    want, _ = _joining(spec, encoder, python, sources[:8], configs, 1, indexed)
    one, ran = _joining(spec, encoder, compiled, sources[:8], configs, 1, indexed)
    assert one == want and set(ran) == {1}
    several, ran = _joining(spec, encoder, compiled, sources[:8], configs, 16, indexed)
    assert several == want
    assert max(ran) > 1  # steady stretches really ran as several steps in one call


def test_the_stop_flag_ends_a_call_after_its_current_step(model):
    spec, encoder, python, compiled, sources = model
    configs = [_config(spec, 4)] * 4
    want, _ = _joining(spec, encoder, python, sources[:4], configs, 1, True)
    stopped, ran = _joining(spec, encoder, compiled, sources[:4], configs, 16, True, np.ones(1, np.int64))
    assert stopped == want and set(ran) == {1}


def test_runners_that_do_not_say_which_file_they_run_keep_stepping_in_python(model):
    spec, encoder, python, compiled, sources = model

    def triton_like(inputs):
        return python(inputs)

    assert native_decoder.attach(triton_like) is triton_like
    assert getattr(triton_like, "native", None) is None
    assert native_decoder.open_native_decoder(Path("/nonexistent.onnx"), python.session) is None


def test_each_compiled_call_counts_as_a_model_run_in_the_runners_occupancy(model):
    spec, encoder, python, compiled, sources = model
    events = []

    class Recorder:
        def enter(self):
            events.append("enter")

        def leave(self):
            events.append("leave")

    run = onnxruntime_runner(python.session, Recorder())
    run.model_file = python.model_file
    native_decoder.attach(run)
    assert run.native is not None and run.native.occupancy is run.occupancy
    offline.translate_ids(encoder, run, spec, [sources[0]], _config(spec, 4))
    assert events and events == ["enter", "leave"] * (len(events) // 2)


def test_calls_run_on_past_finished_hypotheses_and_hand_them_over_in_order(model, monkeypatch):
    """A step that offers a finished hypothesis no longer ends the call: the call keeps the hypotheses
    (``PackedStep.found``) and Python files them in the order the steps offered them, as if every step
    had handed back (``FOUND_STEPS = 0``: the old behaviour), with fewer calls."""
    spec, encoder, python, compiled, sources = model
    config = _config(spec, 4, n_best=4)

    def one_at_a_time(source):
        batch = st.DecodeBatch(spec, indexed=True)
        batch.join([0], encoder(sp.encoder_inputs(spec, [source])), [config], [len(source) + 1])
        calls, finished = 0, []
        while batch.size:
            finished += batch.step(compiled, steps=16)
            calls += 1
        return _plain([finished[0].hypotheses]), calls

    want = [_plain(offline.translate_ids(encoder, python, spec, [s], config)) for s in sources[:12]]
    kept = [one_at_a_time(s) for s in sources[:12]]
    monkeypatch.setattr(native_decoder, "FOUND_STEPS", 0)
    handed = [one_at_a_time(s) for s in sources[:12]]
    assert [h for h, _ in kept] == want == [h for h, _ in handed]
    assert sum(n for _, n in kept) < sum(n for _, n in handed)


def test_a_lone_sentence_widens_in_the_compiled_call(model):
    """A lone sentence's first step, one row widening to ``beam``, advances in C too (indexed rows:
    search order over the encoder store) and the call runs on: its search is one call per 16 steps
    (bit for bit as the Python step: test_one_sentence_at_a_time_...)."""
    spec, encoder, python, compiled, sources = model
    config = _config(spec, 4)
    for source in sources[:6]:
        batch = st.DecodeBatch(spec, indexed=True)
        batch.join([0], encoder(sp.encoder_inputs(spec, [source])), [config], [len(source) + 1])
        assert (batch.physical, batch.live_rows) == (1, 1)  # no padding rows
        batch.step(compiled, steps=16)
        assert compiled.native.result[6] == 1 and batch.last_steps > 1  # widened in C, and went on
        calls, steps = 1, batch.last_steps
        while batch.size:
            batch.step(compiled, steps=16)
            calls, steps = calls + 1, steps + batch.last_steps
        assert steps > 1 and calls == -(-steps // 16)  # no call handed back before its 16 steps


def test_joins_and_departures_advance_in_the_compiled_call(model, monkeypatch):
    """Sentences of one beam joining a running batch while others finish: the step that widens the
    joiners (one row to ``beam``) and the step that finishes a sentence (its rows gone) advance in C,
    the rows after them in search order, each reading its sentence's place of the store, bit for bit
    as the Python step; Python advances no step."""
    spec, encoder, python, compiled, sources = model
    configs = [_config(spec, 4)] * 10
    want, _ = _joining(spec, encoder, python, sources[:10], configs, 1, True)
    changed, advanced = [], []
    original_step, original_advance = st.DecodeBatch._native_step, st.DecodeBatch._advance_rows

    def native_step(self, decoder, *args):
        finished = original_step(self, decoder, *args)
        if decoder.result[6]:  # the rows changed in C: the batch takes them as C left them
            assert self.slot.tolist() == list(range(self.physical))  # search order
            assert self.beams is None or self.physical == int(self.beams.rows.sum())
            changed.append(bool(finished))
        return finished

    monkeypatch.setattr(st.DecodeBatch, "_native_step", native_step)
    monkeypatch.setattr(
        st.DecodeBatch, "_advance_rows", lambda self, *a: advanced.append(1) or original_advance(self, *a)
    )
    got, _ = _joining(spec, encoder, compiled, sources[:10], configs, 1, True)
    assert got == want
    assert any(changed) and not all(changed)  # departures and widenings
    assert not advanced


def _finish_steps(spec, encoder, decoder, sources, configs, hold: int, steps: int):
    """The sources joined at once, stepped to the end with ``steps`` a call and ``hold_steps`` = ``hold``:
    each sentence's hypotheses, the steps run when its call returned, and the calls made."""
    batch = st.DecodeBatch(spec, indexed=True)
    batch.hold_steps = hold
    batch.join(
        list(range(len(sources))),
        encoder(sp.encoder_inputs(spec, sources)),
        configs,
        [len(s) + 1 for s in sources],
    )
    finished, returned, done_steps, calls = {}, {}, 0, 0
    while batch.size:
        left = batch.step(decoder, steps=steps)
        done_steps, calls = done_steps + batch.last_steps, calls + 1
        for done in left:
            finished[done.key], returned[done.key] = done.hypotheses, done_steps
    keys = range(len(sources))
    return _plain([finished[i] for i in keys]), [returned[i] for i in keys], calls


@pytest.mark.parametrize("hold", [1, 3, 16])
def test_finished_sentences_are_held_at_most_hold_steps_and_decode_bit_for_bit(model, hold):
    """With ``hold_steps``, a step that finishes a sentence does not end the compiled call: the sentence
    keeps its place without rows and is answered when the call returns, at most ``hold`` steps after the
    step that finished the call's first; the others' searches are bit for bit the Python step's (the
    rows of every step are the same), with fewer returns to Python."""
    spec, encoder, python, compiled, sources = model
    configs = [_config(spec, beam) for beam in (4, 2, 4, 1, 4, 3, 4, 4)]
    chosen = sources[:8]
    want, finished_at, _ = _finish_steps(spec, encoder, python, chosen, configs, 0, 1)
    assert len(set(finished_at)) > 3  # the sentences finish at different steps
    got, returned_at, calls = _finish_steps(spec, encoder, compiled, chosen, configs, hold, 16)
    assert got == want
    delays = [r - f for r, f in zip(returned_at, finished_at, strict=True)]
    assert min(delays) >= 0 and max(delays) <= hold
    assert max(delays) > 0  # a finished sentence did wait for a later step's
    _, _, calls_without = _finish_steps(spec, encoder, compiled, chosen, configs, 0, 16)
    assert calls < calls_without


def test_the_plans_tensor_fields_are_built_once_while_the_buffers_stay(model, monkeypatch):
    """Rows change at almost every call (sentences join, widen, leave): a plan copies the fields built
    for an earlier one and writes its row counts, rebuilding them only when a buffer was reallocated or
    the encoder rows were (a longer source, more places); the answers stay bit for bit the Python
    step's."""
    spec, encoder, python, compiled, sources = model
    configs = [_config(spec, beam) for beam in (4, 1, 2, 4, 3, 4, 1, 4)]
    want, _ = _joining(spec, encoder, python, sources[:8], configs, 1, True)
    calls = []  # per plan: (rows, buffers and encoder rows as they were, fields built for it)
    original_plan = st.DecodeBatch._native_plan

    def plan(self, decoder, sentence, encoder_rows, holder, most):
        before = self._fields
        out = original_plan(self, decoder, sentence, encoder_rows, holder, most)
        buffers = (decoder.generation, tuple(v.ctypes.data for v in encoder_rows.values()))
        calls.append((self.physical, buffers, self._fields is not before))
        return out

    monkeypatch.setattr(st.DecodeBatch, "_native_plan", plan)
    got, _ = _joining(spec, encoder, compiled, sources[:8], configs, 1, True)
    assert got == want
    assert len({rows for rows, _, _ in calls}) > 3  # the row count changed from call to call
    pairs = zip(calls, calls[1:], strict=False)  # each call with the one before
    same = [built for (_, previous, _), (_, buffers, built) in pairs if buffers == previous]
    assert len(same) > len(calls) / 3 and not any(same)  # same buffers: the fields were reused
    pairs = zip(calls, calls[1:], strict=False)
    moved = [built for (_, previous, _), (_, buffers, built) in pairs if buffers != previous]
    assert moved and all(moved)  # a buffer or an encoder row array moved: the fields were rebuilt


def test_a_decoders_buffers_keep_their_address_until_they_grow():
    decoder = object.__new__(native_decoder.NativeDecoder)  # its buffers only: no session needed
    decoder._buffers, decoder._pair_keys, decoder.generation, decoder.turn = {}, {}, 0, 0
    small, at = decoder.buffer_at("cache", 100, np.float32)
    assert at == small.ctypes.data and small.size >= 100 and decoder.generation == 1
    again, at_again = decoder.buffer_at("cache", 80, np.float32)
    assert again is small and at_again == at and decoder.generation == 1
    bigger, at_bigger = decoder.buffer_at("cache", 1000, np.float32)
    assert bigger.size >= 1000 and at_bigger == bigger.ctypes.data and decoder.generation == 2
    (first, second), (at_first, at_second) = decoder.pair("tokens", 10, np.int64)
    decoder.turn = 1  # the next call's first advance writes the other buffer first
    (first_after, second_after), addresses = decoder.pair("tokens", 10, np.int64)
    assert first_after is second and second_after is first and addresses == (at_second, at_first)
    assert decoder.buffer("tokens#0", 10, np.int64) is first


@pytest.mark.parametrize("indexed", [False, True])
def test_the_decode_replay_splits_each_sentences_cpu_and_answers_as_the_python_step(model, indexed):
    """bench.decode_replay (the scheduler's admission pattern on one thread, for timing the decode
    side's Python): every sentence finishes, and the compiled calls answer as the Python step does; the split adds up and the compiled decoder's calls are put back afterwards."""
    from bench.decode_replay import replay

    spec, encoder, python, compiled, sources = model
    config = _config(spec, 4)
    # finished sentences answered at once: the Python step's schedule (held ones let their successors
    # join later, and rows beside other rows may round differently)
    common = dict(indexed=indexed, concurrency=5, sentences=30, finish_hold_steps=0)
    split, got = replay(spec, encoder, compiled, sources, config, **common)
    _, want = replay(spec, encoder, python, sources, config, **common)
    assert _plain(got) == _plain(want) and all(got)
    held, _ = replay(spec, encoder, compiled, sources, config, **{**common, "finish_hold_steps": 8})
    assert held.sentences == 30 and (held.calls < split.calls or not indexed)
    assert len(got) == 30 > len(sources)  # the sources cycled (the same tokens are likely, not
    # asserted: scores beside other rows may round differently, and a near tie may then flip)
    assert split.sentences == 30 and 30 / 5 < split.calls < 30 * 25
    assert (
        split.decoder_us > 0 and split.encoder_us > 0 and split.total_us > split.decoder_us + split.encoder_us
    )
    assert split.python_us == pytest.approx(split.total_us - split.decoder_us - split.encoder_us)
    assert "step" not in vars(compiled.native)  # the timing wrapper is gone


def test_the_function_split_times_each_decode_function_apart_and_puts_every_one_back(model):
    """bench.decode_replay --functions: each timed function's own CPU excludes the timed calls it makes
    (the decode call's own time is far below the compiled decoder runs inside it, which are counted
    apart), the calls are counted, the answers do not change, and every function is put back after."""
    from bench.decode_replay import DECODE_FUNCTIONS, function_split, replay

    spec, encoder, _python, compiled, sources = model
    config = _config(spec, 4)
    common = dict(indexed=True, concurrency=5, sentences=20)
    originals = [vars(owner)[name] for owner, name in DECODE_FUNCTIONS]
    _, want = replay(spec, encoder, compiled, sources, config, **common)
    with function_split() as (split, timed):
        timed_encoder = timed("encoder", encoder)
        done, got = replay(spec, timed_encoder, compiled, sources, config, **common)
    assert _plain(got) == _plain(want)
    assert [vars(owner)[name] for owner, name in DECODE_FUNCTIONS] == originals
    assert "step" not in vars(compiled.native)
    calls, own = split.calls, split.own_ns
    assert calls["DecodeBatch.step"] == done.calls == calls["NativeDecoder.step"]
    assert (
        calls["encoder"] == calls["DecodeBatch.join"] > 0 and calls["beam_search.start"] == calls["encoder"]
    )
    assert 0 < own["DecodeBatch.step"] < own["NativeDecoder.step"]  # the runs inside it counted apart
    assert set(own) <= {f"{o.__name__.rpartition('.')[2]}.{n}" for o, n in DECODE_FUNCTIONS} | {"encoder"}
    lines = split.lines(done.calls, "call")
    assert len(lines) == len(own) and all(" us a call  (" in line for line in lines)


@pytest.mark.parametrize("indexed", [False, True], ids=["per-row", "indexed"])
def test_one_sentence_at_a_time_through_one_batch_builds_its_fields_once_and_decodes_bit_for_bit(
    model, indexed, monkeypatch
):
    """A batch serving one request at a time empties after every sentence and starts afresh with new
    encoder rows; the next sentence's first call rebuilt every tensor field of the plan for them (~120 us
    a sentence, a fifth of the Python at batch 1). Only the encoder tensors' addresses and dims are
    written now; the fields are built again only when an output buffer grows (a wider beam)."""
    spec, encoder, python, compiled, sources = model
    beams = (4, 4, 1, 4, 8, 4, 2, 4, 4, 4, 4, 4)
    batch = st.DecodeBatch(spec, indexed=indexed)
    builds = []
    original = st.DecodeBatch._build_fields

    def build(self, decoder, *args):
        builds.append(decoder.generation)
        return original(self, decoder, *args)

    monkeypatch.setattr(st.DecodeBatch, "_build_fields", build)
    for i, (source, beam) in enumerate(zip(sources[:12], beams, strict=True)):
        config = _config(spec, beam)
        want = offline.translate_ids(encoder, python, spec, [source], config)
        batch.join([i], encoder(sp.encoder_inputs(spec, [source])), [config], [len(source) + 1])
        done = []
        while not done:
            done = batch.step(compiled, steps=16)
        assert [d.key for d in done] == [i] and batch.size == 0
        assert _plain([done[0].hypotheses]) == _plain(want)  # its own width: as a batch of its own
    # only where a buffer grew (a longer sentence, a wider beam), never twice over one set of buffers;
    # before, at every sentence (its new encoder rows)
    assert 0 < len(builds) < len(beams) and len(set(builds)) == len(builds), builds
