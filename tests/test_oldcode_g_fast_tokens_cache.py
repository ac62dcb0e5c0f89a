"""The event loop's Python tokenizer remembers word-sized pieces only: a long piece (a hash, a URL, a run of
letters in a text the model then refuses as too long) is tokenized each time it comes, not held for good."""

from __future__ import annotations

import random
import string

from serving.decoding.fast_tokens import CACHE_PIECE_CHARS, FastEncoder
from training.data.numbers import generate_pairs
from training.data.tokenizer import train_tokenizer


def test_long_pieces_are_tokenized_alike_but_not_remembered() -> None:
    tokenizer = train_tokenizer([t for pair in generate_pairs(200, seed=3) for t in pair], 300)
    fast = FastEncoder.of(tokenizer)
    assert fast is not None
    rng = random.Random(0)
    longs = ["".join(rng.choice(string.ascii_lowercase) for _ in range(1000)) for _ in range(20)]
    for text in longs:  # each a piece of ~1000 ids: ~10 KiB held a piece, 65536 pieces ~700 MB
        assert fast.encode(text) == tokenizer.encode(text).ids
    assert fast.pieces == {}
    edge = "a" * CACHE_PIECE_CHARS  # "▁" + 31 letters: the longest piece remembered
    words = ["twenty one", edge[1:], edge]
    for text in words * 2:
        assert fast.encode(text) == tokenizer.encode(text).ids
    assert sorted(fast.pieces) == sorted(["▁twenty", "▁one", "▁" + edge[1:]])
