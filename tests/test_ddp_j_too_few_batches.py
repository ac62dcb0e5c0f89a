"""A translator corpus too small for the torchrun processes: each rank trains on batches of its own, and a
training split of fewer batches than ranks is refused. The line said "error: 1 batches cannot feed 2
processes", naming neither the data nor a flag to change; it names the pairs, the batch flag with a
value that works, and the process count that would."""

from __future__ import annotations

import pytest

from tests.torchrun import two_ranks
from training.data.numbers import generate_pairs
from training.data.text_batches import BucketedBatches

EXAMPLES = [([5] * (1 + i % 7), [6] * (1 + i % 5)) for i in range(27)]


def test_too_few_batches_for_the_processes_names_the_pairs_and_the_batch_size_that_feeds_them():
    with pytest.raises(ValueError) as err:
        BucketedBatches(EXAMPLES, batch_size=32, rank=0, world_size=2)
    assert str(err.value) == (
        "the 27 training sentence pair(s) make 1 batch(es), fewer than the 2 processes, each of which "
        "trains on batches of its own: use --batch-size 13 or less, or more data, or fewer processes "
        "(torchrun --nproc_per_node 1)"
    )
    shares = [BucketedBatches(EXAMPLES, batch_size=13, rank=r, world_size=2) for r in (0, 1)]
    assert [len(share) for share in shares] == [1, 1]  # the size it names does feed both


@pytest.mark.parametrize("world", [3, 4, 7])
def test_the_batch_size_named_feeds_every_process(world):
    with pytest.raises(ValueError, match=rf"use --batch-size {27 // world} or less,"):
        BucketedBatches(EXAMPLES, batch_size=27 // world + 20, rank=0, world_size=world)
    assert len(BucketedBatches(EXAMPLES, batch_size=27 // world, rank=0, world_size=world)) >= 1


def test_a_token_budget_or_fewer_pairs_than_processes_is_told_what_can_help():
    with pytest.raises(ValueError, match=r"use a smaller --batch-tokens, or more data, or fewer processes"):
        BucketedBatches(EXAMPLES, batch_tokens=10_000, rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"make 1 batch\(es\), .*: use more data, or fewer processes"):
        BucketedBatches(EXAMPLES[:2], batch_size=8, rank=0, world_size=3)


@pytest.mark.timeout(60)
def test_under_torchrun_the_run_stops_with_that_one_line_from_rank_0(tmp_path):
    tsv = tmp_path / "small.tsv"
    tsv.write_text("".join(f"{en}\t{fr}\n" for en, fr in generate_pairs(30, seed=3)), encoding="utf-8")
    argv = ["-m", "training.translate", "--model", "transformer", "--corpus", "tsv", "--data-path", str(tsv)]
    argv += ["--batch-size", "32", "--vocab-size", "60", "--threads", "1", "--device", "cpu", "--no-progress"]
    argv += ["--model-arg", "d_model=16", "--model-arg", "heads=2", "--output-dir", str(tmp_path / "out")]
    done = two_ranks(argv, tmp_path / "torchrun")
    lines = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert done.returncode != 0 and len(lines) == 1, done.stderr[-3000:]
    assert "training sentence pair(s) make 1 batch(es), fewer than the 2 processes" in lines[0]
    assert "--batch-size" in lines[0] and "--nproc_per_node 1" in lines[0]
