"""Defects found by the translation audit, each pinned by a test that failed before its fix.

The on-loop source tokenizer (serving/decoding/fast_tokens.py) must give the tokenizer's own ids or
step aside. A tokenizer may carry added tokens beyond Kiln's four specials (a repository's
``source_tokenizer.json`` extended with domain terms, say); one marked ``normalized`` (the default of a
non-special added token) is matched by the tokenizer against the *normalized* text, so "Hello" in a
lower-casing pipeline splits out of "HELLO", and NFKC's "ﬁx" out of "fix". The Python path looked for
the content as written only, and gave the BPE ids of the plain words instead.
"""

from __future__ import annotations

import pytest
from tokenizers import AddedToken, Tokenizer

from serving.decoding.fast_tokens import FastEncoder
from serving.decoding.translator import TextCodec
from training.data.numbers import generate_pairs
from training.data.tokenizer import train_tokenizer

NORMALIZED = ["Hello", "\ufb01x", "Kiln Gateway"]  # matched on the normalized text
AS_WRITTEN = ["Zed"]  # normalized=False: matched on the text as sent
TEXTS = [
    "say hello",
    "say HELLO twice",
    "say Hello",
    "fix it",
    "a fix",
    "the kiln gateway",
    "THE KILN GATEWAY",
    "Kiln Gateway",
    "ZED zed Zed",
    "nothing added here",
    "twenty-one red apples",
]


@pytest.fixture(scope="module", params=[False, True], ids=["cased", "lowercase"])
def tokenizer(request) -> Tokenizer:
    texts = [t for pair in generate_pairs(300, seed=5) for t in pair] + ["hello fix kiln gateway zed"] * 3
    tok = train_tokenizer(texts, 300, lowercase=request.param)
    tok.add_tokens([AddedToken(t, normalized=True) for t in NORMALIZED])
    tok.add_tokens([AddedToken(t, normalized=False) for t in AS_WRITTEN])
    return tok


def test_the_python_path_gives_the_tokenizers_ids_or_steps_aside_for_normalized_added_tokens(tokenizer):
    fast = FastEncoder.of(tokenizer)
    assert fast is not None  # the pipeline is still the one it reproduces
    wrong = {}
    for text in TEXTS:
        ids = fast.encode(text)
        if ids is not None and ids != tokenizer.encode(text).ids:
            wrong[text] = (ids, tokenizer.encode(text).ids)
    assert wrong == {}
    assert fast.encode("nothing added here") is not None  # plain text still takes the Python path


def test_the_codec_encodes_texts_with_normalized_added_tokens_alike_on_the_loop_and_batched(tokenizer):
    codec = TextCodec(tokenizer, tokenizer, spec=None)  # encoding reads no step spec
    assert codec.encode(TEXTS, batched=False) == codec.encode(TEXTS, batched=True)
