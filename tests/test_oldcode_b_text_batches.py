"""Length buckets refuse a batch budget under 1 instead of making an empty batch."""

from __future__ import annotations

import pytest

from training.data.text_batches import BucketedBatches, bucket_batches

EXAMPLES = [([5, 6, 2], [7]), ([5, 2], [7, 8]), ([9, 9, 9, 2], [])]


@pytest.mark.parametrize("size", [0, -1])
def test_a_batch_size_under_one_is_refused_naming_it(size):
    with pytest.raises(ValueError, match=rf"batch_size must be >= 1, got {size}"):
        bucket_batches(EXAMPLES, batch_size=size)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        BucketedBatches(EXAMPLES, batch_size=size)


def test_a_token_budget_under_one_is_refused_and_one_gives_one_example_a_batch():
    with pytest.raises(ValueError, match="batch_tokens must be >= 1, got 0"):
        bucket_batches(EXAMPLES, batch_tokens=0)
    assert sorted(len(b) for b in bucket_batches(EXAMPLES, batch_tokens=1)) == [1, 1, 1]
    assert all(bucket_batches(EXAMPLES, batch_size=1))  # no empty batch
