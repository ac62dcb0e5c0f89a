"""serving.decoding.resident: a decode batch whose caches stay on the device decodes as the host batch.

Run here on ONNX Runtime's CPU provider (the same code as on CUDA, without CUDA graphs): over a tiny
exported Transformer, every search is compared with the host :class:`DecodeBatch` on the same ONNX
model: tokens identical, scores to float rounding (the device layout attends over masked padding, a sum
in another order). Sentences join and leave between steps across layouts (more rows than a bucket, a
source longer than one, more cache columns than one), so the cache moves between layouts too. The
advance graph, the buckets and the partial copy are checked on hand-made cases.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest

from serving.decoding import device_copy, offline, resident, resident_layout
from serving.decoding import step_spec as sp
from serving.decoding import stepper as st
from serving.decoding.options import DecodingOptions
from serving.execution import placement
from serving.execution.onnxruntime import onnxruntime_runner
from serving.execution.ort_options import resident_request
from serving.execution.repository import Repository
from tests.test_native_decoder import _config
from tests.test_translate_serving import exported_translators, texts_of_mixed_lengths


@pytest.fixture(scope="module")
def built(exported_translator_models, tmp_path_factory):
    return exported_translators(exported_translator_models, tmp_path_factory, "resident", ("transformer",))


@pytest.fixture(scope="module")
def model(built):
    """(spec, encoder runner, host decoder runner, resident decoder runner, source ids)."""
    repository = built
    entry = Repository(repository).get("transformer")
    block = entry.kiln["translator"]

    def runner(part: str):
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        path = repository / block[part] / "1" / "model.onnx"
        run = onnxruntime_runner(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
        run.model_file = path
        return run

    spec = sp.parse_step_spec(block["step_spec"])
    on_device = runner("decoder")
    # narrow widths, so a 40-token source and 48-step searches change layouts (defaults: 32 and 128)
    on_device.resident = {"device": "cpu", "source_min": 32, "columns_min": 32}
    from serving.decoding.translator import translator_from_entry

    translator = translator_from_entry(entry.path, entry.kiln, runner("encoder"), runner("decoder"))
    sources = translator.source_ids(texts_of_mixed_lengths(24))
    return spec, runner("encoder"), runner("decoder"), on_device, sources


def _same(got, want):
    """Each sentence's hypotheses: the same tokens, scores equal to float32 rounding."""
    assert len(got) == len(want)
    for mine, theirs in zip(got, want, strict=True):
        assert [h.tokens for h in mine] == [h.tokens for h in theirs]
        np.testing.assert_allclose([h.score for h in mine], [h.score for h in theirs], rtol=1e-5, atol=1e-5)


def six_on_the_device(spec, encoder, host, decoder, sources) -> tuple[list, list]:
    """The first six sources searched at beam 4 on resident ``decoder`` (the cache on its device), and
    by the offline engine on the host: (hypotheses of each, in order; the host's)."""
    config = _config(spec, 4)
    want = offline.translate_ids(encoder, host, spec, sources[:6], config)
    batch = resident.ResidentDecodeBatch(spec, decoder)
    batch.join(
        range(6),
        encoder(sp.encoder_inputs(spec, sources[:6])),
        [config] * 6,
        [len(s) + 1 for s in sources[:6]],
    )
    finished = {}
    while batch.size:
        finished |= {done.key: done.hypotheses for done in batch.step(host)}
    return [finished[i] for i in range(6)], want


def test_the_runner_gets_a_resident_batch_and_the_host_runner_a_host_one(model):
    spec, encoder, host, on_device, sources = model
    assert type(st.decode_batch(spec, True, host)) is st.DecodeBatch
    batch = st.decode_batch(spec, True, on_device)
    assert isinstance(batch, resident.ResidentDecodeBatch)
    assert st.decode_batch(spec, True, on_device).device is batch.device  # one per runner (decode worker)


@pytest.mark.parametrize("beam", [1, 4])
def test_one_sentence_at_a_time_decodes_as_the_host_batch(model, beam):
    spec, encoder, host, on_device, sources = model
    config = _config(spec, beam)
    for source in sources[:8]:
        want = offline.translate_ids(encoder, host, spec, [source], config)
        _same(offline.translate_ids(encoder, on_device, spec, [source], config), want)


def test_batches_of_mixed_beam_sizes_decode_as_the_host_batch(model):
    spec, encoder, host, on_device, sources = model
    for beam, sentences in ((2, sources[:8]), (4, sources[8:24]), (8, sources[:5])):
        config = _config(spec, beam, n_best=2)
        want = offline.translate_ids(encoder, host, spec, sentences, config)
        _same(offline.translate_ids(encoder, on_device, spec, sentences, config), want)


def _joining(spec, encoder, decoder, sources, configs):
    """Sentence i joins before decode step 2*i; returns each sentence's hypotheses and the batch."""
    batch = st.decode_batch(spec, True, decoder)
    finished, steps, joined = {}, 0, 0
    while len(finished) < len(sources):
        if joined < len(sources) and steps >= 2 * joined:
            source = sources[joined]
            batch.join(
                [joined], encoder(sp.encoder_inputs(spec, [source])), [configs[joined]], [len(source) + 1]
            )
            joined += 1
        finished |= {done.key: done.hypotheses for done in batch.step(decoder)}
        steps += 1
    return [finished[i] for i in range(len(sources))], batch


def test_sentences_joining_and_leaving_across_layouts_decode_as_the_host_batch(model):
    spec, encoder, host, on_device, sources = model
    # a 40-token source (past the 32-position bucket), beams up to 8 (rows past 8, 16 and 32) and
    # searches of up to 48 steps (cache columns past 32): the live cache moves between layouts
    rng = np.random.default_rng(3)
    long_source = rng.integers(4, spec.vocab_size, size=40).tolist()
    chosen = [*sources[:6], long_source, *sources[6:10]]
    beams = (4, 1, 8, 4, 3, 8, 2, 8, 4, 1, 8)
    configs = [_config(spec, beam, max_length=48, n_best=min(beam, 2)) for beam in beams]
    want, _ = _joining(spec, encoder, host, chosen, configs)
    got, batch = _joining(spec, encoder, on_device, chosen, configs)
    _same(got, want)
    keys = set(batch.device.layouts)
    assert len({k.rows for k in keys}) >= 3 and len({k.source for k in keys}) >= 2
    assert len({k.columns for k in keys}) >= 2


def test_prepare_makes_every_rows_bucket_up_to_the_schedulers_rows_at_the_default_widths(model):
    spec, encoder, host, on_device, sources = model
    decoder = resident_layout.ResidentDecoder(on_device.model_file, spec, "cpu")
    decoder.prepare(40)
    source, columns = min(32, spec.max_positions), min(128, spec.max_positions)
    assert sorted(decoder.layouts) == [
        resident_layout.LayoutKey(rows, source, columns) for rows in (8, 16, 32, 64)
    ]
    _same(*six_on_the_device(spec, encoder, host, decoder, sources))
    assert len(decoder.layouts) == 4  # nothing made during the search


def test_the_advance_writes_the_entry_into_its_column_and_gathers_rows():
    shape = (3, 2, 4, 2)  # [B, H, T, D]
    model = resident_layout.advance_model([("cache", shape, 2, "entry", np.float32)])
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    cache = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    entry = -np.arange(1, 3 * 2 * 2 + 1, dtype=np.float32).reshape(3, 2, 1, 2)
    write = np.zeros(resident_layout.write_index_shape(shape, 2), dtype=np.int64)  # [3, 2, 1, 3]
    write[..., :2] = np.moveaxis(np.indices((3, 2)), 0, -1)[:, :, None, :]
    write[..., 2] = 2  # the entry goes to column 2
    origin = np.array([2, 2, 0], dtype=np.int64)
    (got,) = session.run(None, {"cache": cache, "entry": entry, "write_2": write, "origin": origin})
    want = cache.copy()
    want[:, :, 2] = entry[:, :, 0]
    np.testing.assert_array_equal(got, want[[2, 2, 0]])


def test_buckets_grow_past_what_they_hold_and_never_shrink_within_a_batch():
    assert [resident_layout.bucket(n, 8) for n in (1, 8, 9, 33)] == [8, 8, 16, 64]
    assert resident_layout.bucket(3, 8, current=64) == 64  # a batch's layout only grows
    assert resident_layout.bucket(65, 8, current=64) == 128


def test_a_partial_copy_writes_and_reads_at_an_offset_and_refuses_to_overrun():
    value = ort.OrtValue.ortvalue_from_numpy(np.zeros((4, 3), dtype=np.float32), "cpu", 0)
    copy = device_copy.HostCopy("cpu")
    copy(value, 12, np.array([[1, 2, 3]], dtype=np.float32))
    np.testing.assert_array_equal(value.numpy(), [[0, 0, 0], [1, 2, 3], [0, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="overruns"):
        copy(value, 40, np.ones(3, dtype=np.float32))
    np.testing.assert_array_equal(copy.read(value, 2, [4, 3], np.float32), [[0, 0, 0], [1, 2, 3]])
    with pytest.raises(ValueError, match="overruns"):
        copy.read(value, 5, [4, 3], np.float32)


def test_decoders_the_engine_cannot_hold_on_the_device_say_why(model, monkeypatch):
    spec, encoder, host, on_device, sources = model
    assert "row_place" in resident.resident_usable(spec, indexed=False)
    gru_like = dataclasses.replace(
        spec, decoder_inputs=(*spec.decoder_inputs, sp.DecoderInput("hidden", "state", "new_hidden", "h0"))
    )
    assert "state" in resident.resident_usable(gru_like, indexed=True)
    assert resident.resident_usable(spec, indexed=True) == ""
    monkeypatch.setenv("KILN_RESIDENT_DECODER", "0")
    assert type(st.decode_batch(spec, True, on_device)) is st.DecodeBatch


def test_the_backend_asks_for_a_resident_decoder_on_cuda_when_enabled_or_anywhere_forced(
    monkeypatch, tmp_path
):
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig(name="t_decoder")
    gpu = placement.Placement(placement.CUDA, "cuda:1", provider_options={"enable_cuda_graph": "1"})
    cpu = placement.Placement(placement.CPU, "cpu")
    monkeypatch.delenv("KILN_RESIDENT_DECODER", raising=False)
    assert resident_request(gpu, config, tmp_path / "model.onnx") is None  # off by default (measured)
    monkeypatch.setenv("KILN_RESIDENT_DECODER", "1")
    wanted = resident_request(gpu, config, tmp_path / "model.onnx")
    assert wanted["device"] == "cuda" and wanted["device_id"] == 1 and wanted["cuda_graphs"]
    assert wanted["providers"][0] == (placement.CUDA, {})  # graphs are the layouts' own sessions
    assert resident_request(cpu, config, tmp_path / "model.onnx") is None
    config.parameters["kiln_cuda_graphs"].string_value = "0"
    assert not resident_request(gpu, config, tmp_path / "model.onnx")["cuda_graphs"]
    monkeypatch.setenv("KILN_RESIDENT_DECODER", "0")
    assert resident_request(gpu, config, tmp_path / "model.onnx") is None
    monkeypatch.setenv("KILN_RESIDENT_DECODER", "force")
    assert resident_request(cpu, config, tmp_path / "model.onnx")["device"] == "cpu"


def _pool_translations(repository, texts, resident_mode: str | None, monkeypatch) -> tuple[list, list]:
    """Every text its own concurrent request through the backend's translator pool (the gateway's
    path), with ``KILN_RESIDENT_DECODER`` as given; returns the answers and the decoder runners."""
    import asyncio

    from serving.decoding.translator_pool import TranslatorPool
    from serving.execution.onnxruntime import OnnxRuntimeBackend

    if resident_mode is None:
        monkeypatch.delenv("KILN_RESIDENT_DECODER", raising=False)
    else:
        monkeypatch.setenv("KILN_RESIDENT_DECODER", resident_mode)
    repo = Repository(repository)
    backend = OnnxRuntimeBackend(repo)
    runners = []

    def runner_for(name, **kwargs):
        run = backend.runner(name, **kwargs)
        runners.append(run)
        return run

    async def go():
        await backend.start()
        pool = TranslatorPool(repo)
        await pool.start(runner_for)
        try:
            options = DecodingOptions(beam_size=4, max_length=24)
            answers = await asyncio.gather(
                *(pool.translators["transformer"].translate([t], options) for t in texts)
            )
        finally:
            await pool.stop(1.0)
            await backend.stop()
        return [a[0][0].tokens for a in answers]

    return asyncio.run(go()), runners


def test_the_gateways_translator_pool_decodes_on_a_resident_decoder_as_on_the_host(built, monkeypatch):
    texts = texts_of_mixed_lengths(16, seed=11)
    want, host_runners = _pool_translations(built, texts, None, monkeypatch)
    assert not any(getattr(r, "resident", None) for r in host_runners)  # off by default
    got, runners = _pool_translations(built, texts, "force", monkeypatch)
    decoders = [r for r in runners if getattr(r, "resident_decoder", None) is not None]
    assert decoders, "no decode worker stepped on a resident decoder"
    assert len(decoders[0].resident_decoder.layouts) >= 2  # made at the scheduler's start (prepare)
    assert got == want


def test_the_decode_probe_times_each_step_variant_and_decodes_three_ways_on_the_cpu(
    built, tmp_path, monkeypatch
):
    from types import SimpleNamespace

    from bench import gpu_decode_gateway, gpu_decode_probe, translation_rows

    texts = texts_of_mixed_lengths(24, seed=5)  # the tiny checkpoint records no corpus to hold out from
    monkeypatch.setattr(
        translation_rows.Workload,
        "load",
        staticmethod(
            lambda *a: SimpleNamespace(
                texts=texts, count=lambda hyps: sum(len(h.split()) for h in hyps), max_length=64
            )
        ),
    )

    decoder = built / "transformer_decoder" / "1" / "model.onnx"
    out = tmp_path / "probe.json"
    assert (
        gpu_decode_probe.main(
            [
                str(decoder),
                "--device",
                "cpu",
                "--rows",
                "8",
                "--past",
                "4",
                "--repeats",
                "3",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    (row,) = __import__("json").loads(out.read_text())["shapes"]
    assert all(
        isinstance(row[k], float) and row[k] > 0 for k in ("numpy", "resident", "advance", "numpy_growing")
    )
    result = gpu_decode_probe.translate(built, built.parent / "checkpoints", "transformer", "cpu", 24, [8])
    ways = {r["way"]: r for r in result["rows"]}
    assert set(ways) == {"host", "resident"}  # CUDA graphs only on CUDA
    assert ways["resident"]["same_as_host"] == 100.0 and ways["resident"]["layouts"] >= 1
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its gateways' logs: here, not in /tmp
    rows = gpu_decode_gateway.gateway(built, built.parent / "checkpoints", "transformer", 24, [1], [2, 8])
    assert sorted(p.name for p in tmp_path.glob("kiln-probe-gateway-*.log")) == [
        "kiln-probe-gateway-1-0.log",
        "kiln-probe-gateway-1-1.log",
    ]
    assert [(r["resident"], r["concurrency"]) for r in rows] == [("1", 2), ("1", 8), ("0", 2), ("0", 8)]
    assert all("failed" not in r and r["same_as_first"] == 100.0 and r["tokens_per_s"] > 0 for r in rows)
    assert all(r["cpu_ms_a_sentence"]["decode"] > 0 and 0 < r["decode_busy"] <= 1.05 for r in rows)


def _cancelling(spec, encoder, decoder, sources, config):
    """All sentences join; after 3 steps sentences 1 and 4 are cancelled with their rows live (the
    scheduler's timeout and disconnect path); returns the others' hypotheses."""
    batch = st.decode_batch(spec, True, decoder)
    batch.join(
        list(range(len(sources))),
        encoder(sp.encoder_inputs(spec, sources)),
        [config] * len(sources),
        [len(s) + 1 for s in sources],
    )
    finished, steps = {}, 0
    while batch.size:
        if steps == 3:
            cancelled = np.isin(np.asarray(batch.keys), [1, 4])
            assert batch.beams.rows[cancelled].all()  # live rows leave: the rows are gathered
            batch.remove(cancelled)
        finished |= {done.key: done.hypotheses for done in batch.step(decoder)}
        steps += 1
    return [finished[i] for i in sorted(finished)], sorted(finished)


def test_sentences_cancelled_with_live_rows_leave_the_others_decoding_as_on_the_host(model):
    spec, encoder, host, on_device, sources = model
    config = _config(spec, 4, max_length=32)
    want, kept = _cancelling(spec, encoder, host, sources[:8], config)
    got, kept_here = _cancelling(spec, encoder, on_device, sources[:8], config)
    assert kept == kept_here == [0, 2, 3, 5, 6, 7]
    _same(got, want)
