"""BPE tokenizers (specials, normalisation, exact round trip, checkpoint form) and bucketed batches."""

from __future__ import annotations

import pytest
import torch

from training.data.numbers import generate_pairs
from training.data.text_batches import BucketedBatches, bucket_batches, collate
from training.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIALS,
    TokenizerConfig,
    TokenizerPair,
    build_tokenizers,
    train_tokenizer,
)

PAIRS = generate_pairs(400, seed=5)


@pytest.fixture(scope="module")
def joint() -> TokenizerPair:
    return build_tokenizers(PAIRS, TokenizerConfig(vocab_size=300))


def test_specials_have_the_contract_ids(joint):
    assert [joint.source.token_to_id(t) for t in SPECIALS] == [0, 1, 2, 3]
    assert (PAD_ID, BOS_ID, EOS_ID) == (0, 1, 2)


@pytest.mark.parametrize("shared", [True, False])
def test_decode_gives_back_the_text_exactly(shared):
    tok = build_tokenizers(PAIRS, TokenizerConfig(vocab_size=300, shared=shared))
    for src, tgt in PAIRS[:50]:
        assert tok.source.decode(tok.source.encode(src).ids) == src
        assert tok.decode_target(tok.encode_target([tgt])[0] + [EOS_ID, 5, 6]) == tgt


def test_source_ids_end_with_eos_and_have_no_bos(joint):
    ids = joint.encode_source(["three hundred and forty-two"])[0]
    assert ids[-1] == EOS_ID and BOS_ID not in ids


def test_normalizer_lives_in_the_serialized_tokenizer():
    tok = train_tokenizer(["hello world", "Hello World"] * 5, 50, lowercase=True, min_frequency=1)
    restored = TokenizerPair.from_dict(TokenizerPair(tok, tok, True).to_dict())
    assert restored.source.encode("ＨＥＬＬＯ").ids == tok.encode("hello").ids
    assert restored.shared and restored.source is restored.target


def test_tokenizer_refuses_a_vocabulary_smaller_than_the_specials():
    with pytest.raises(ValueError, match="vocab_size must exceed"):
        train_tokenizer(["a"], 4)


def test_collate_builds_teacher_forcing_pairs_and_masks():
    batch = collate([([5, 6, EOS_ID], [7, 8, 9]), ([5, EOS_ID], [7])])
    assert batch.src.tolist() == [[5, 6, EOS_ID], [5, EOS_ID, PAD_ID]]
    assert batch.src_mask.tolist() == [[True, True, True], [True, True, False]]
    assert batch.tgt_in.tolist() == [[BOS_ID, 7, 8, 9], [BOS_ID, 7, PAD_ID, PAD_ID]]
    assert batch.tgt_out.tolist() == [[7, 8, 9, EOS_ID], [7, EOS_ID, PAD_ID, PAD_ID]]
    assert batch.n_tokens == 6


def test_buckets_cover_every_example_once_within_the_token_budget():
    examples = [([1] * (i % 13 + 1), [2] * (i % 7 + 1)) for i in range(300)]
    batches = bucket_batches(examples, batch_tokens=60, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(300))
    for b in batches:
        width = max(max(len(examples[i][0]), len(examples[i][1]) + 1) for i in b)
        assert width * len(b) <= 60 or len(b) == 1
    assert bucket_batches(examples, batch_tokens=60, seed=1) == batches
    with pytest.raises(ValueError, match="exactly one"):
        bucket_batches(examples)


def test_bucket_order_is_reshuffled_every_epoch_by_seed():
    examples = [([1] * (i % 9 + 1), [2]) for i in range(200)]
    epochs = BucketedBatches(examples, batch_size=16, seed=0)
    first = [b.src.shape for b in epochs]
    second = [b.src.shape for b in epochs]
    assert len(first) == len(epochs) == 13 and first != second
    assert all(isinstance(b.src, torch.Tensor) for b in BucketedBatches(examples, batch_size=16, seed=0))


def test_data_parallel_ranks_get_disjoint_buckets_of_equal_count():
    examples = [([10 + i, 3], [7]) for i in range(100)]  # the first source id names the example
    ranks = [BucketedBatches(examples, batch_size=8, seed=0, rank=r, world_size=3) for r in range(3)]
    ids = [[int(i) for batch in r for i in batch.src[:, 0]] for r in ranks]
    assert [len(r) for r in ranks] == [4, 4, 4]  # 13 buckets: the 13th of the pass is left out
    assert sum(len(i) for i in ids) == len(set().union(*ids)) >= 92  # disjoint, nearly everything
    with pytest.raises(ValueError, match="rank 3"):
        BucketedBatches(examples, batch_size=8, rank=3, world_size=3)
