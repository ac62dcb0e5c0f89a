"""The GPU serving bench's translate rows ask for the workload's ``max_length``, as the CPU rows do.

A fixed 64 was refused (422) by a translator trained with fewer positions; nothing here starts a server.
"""

from __future__ import annotations

from types import SimpleNamespace

from bench import gpu_serving, translation_engines, translation_gateway


def _work(max_length: int) -> SimpleNamespace:
    return SimpleNamespace(
        model="transformer",
        texts=["a b", "c d"],
        refs=["x", "y"],
        ckpt={},
        count=lambda texts: 2 * len(texts),
        max_length=max_length,
    )


def test_the_gpu_translate_row_asks_the_gateway_for_the_workloads_max_length(monkeypatch):
    asked = []

    def fake_median_run(url, model, texts, beam, concurrency, repeats=3, max_length=64):
        asked.append(max_length)
        return ["x", "y"], 0.5, [0.01, 0.02], ["x", "y"]

    monkeypatch.setattr(translation_gateway, "_median_run", fake_median_run)
    layout = SimpleNamespace(device="gpu", workers=1, url="http://127.0.0.1:1", metrics=lambda: "")
    row = gpu_serving.translate_row(layout, _work(32), concurrency=2)
    assert asked == [32, 32]  # the warm pass and the measured one
    assert row["sentences_per_s"] == 4.0 and row["tokens_per_s"] == 8.0


def test_the_gpu_bench_reference_translations_decode_as_far_as_the_gateways(monkeypatch):
    asked = []

    def fake_pytorch_rows(ckpt, texts, refs, beams, threads, count, **options):
        asked.append(options.get("max_length", translation_engines.MAX_LENGTH))
        return [{"hyps": ["x", "z"]}]

    monkeypatch.setattr(translation_engines, "pytorch_rows", fake_pytorch_rows)
    rows = [{"hyps": ["x", "y"]}]
    gpu_serving._add_agreement(rows, _work(32), threads=1)
    assert asked == [32]
    assert rows[0]["same_as_reference"] == 50.0


def test_the_resident_decoder_probe_counts_the_tokens_served_not_the_marker_of_a_text_that_changed(
    monkeypatch,
):
    from bench import gpu_decode_gateway as probe

    asked = []

    def fake_gateway_run(url, model, texts, beam, concurrency, rounds=1, served=None, max_length=64):
        asked.append(max_length)
        answers = [[f"t{i} w" for _ in range(rounds)] for i in range(len(texts))]
        answers[0][-1] = "t0 changed"  # its last round answered otherwise: hyps holds a marker for it
        if served is not None:
            served.extend(text for one in answers for text in one)
        marker = f"<inconsistent across rounds: {answers[0][0]!r} then {answers[0][-1]!r}>"
        return [marker, *(one[0] for one in answers[1:])], 2.0, []

    monkeypatch.setattr(probe, "_gateway_run", fake_gateway_run)
    monkeypatch.setattr(probe, "run_client", lambda run: run)
    monkeypatch.setattr(probe, "tree_cpu", lambda pid: {"loop": 0.0, "decode": 0.0, "other": 0.0})
    work = _work(32)
    work.texts = ["a", "b", "c", "d"]
    work.count = lambda texts: sum(len(t.split()) + 1 for t in texts)  # words + EOS
    row = probe._measure("http://127.0.0.1:1", "transformer", work, 1, 1, "1", clients=2)
    rounds = probe.steady_rounds(4, 2)
    # every answer has 2 words + EOS; over the 2 s the run lasted
    assert row["tokens_per_s"] == 3 * 4 * rounds / 2.0
    assert asked == [32, 32]
