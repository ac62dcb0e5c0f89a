"""The Python source tokenizer (serving/decoding/fast_tokens.py) gives the tokenizer's own ids, or none.

Tokenizers trained here as training does (NFKC, optional lower-casing, Metaspace, BPE) on a small
generated corpus; texts built to hit the pipeline's edges: runs of spaces at either end and inside,
tabs and newlines (not spaces to Metaspace), unknown characters, upper case, the special tokens'
texts, non-ASCII characters (the fast path declines those), the empty text.
"""

from __future__ import annotations

import random
import string

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from serving.decoding.fast_tokens import FastEncoder
from serving.decoding.translator import TextCodec
from training.data.numbers import generate_pairs
from training.data.tokenizer import train_tokenizer

ODD = ["", " ", "  ", "\t", "\n", " \t ", "<s>", "</s>", "<unk>", "<pad>", "A", "ThReE", "x<s", "é", "▁", "€"]


def _corpus(count: int = 400) -> list[str]:
    pairs = generate_pairs(count, seed=3)
    return [text for pair in pairs for text in pair]


def _texts(words: list[str], seed: int, count: int = 3000) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + " \t\n-'.,!?<>/"
    texts = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.4:
            texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))))
        elif kind < 0.7:
            texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))))
        else:
            parts = [rng.choice(words + ODD) for _ in range(rng.randint(1, 8))]
            texts.append(rng.choice(ODD[:3]) + rng.choice(ODD[:3]).join(parts) + rng.choice(ODD[:3]))
    return texts


@pytest.fixture(scope="module", params=[False, True], ids=["cased", "lowercase"])
def tokenizer(request) -> Tokenizer:
    return train_tokenizer(_corpus(), 300, lowercase=request.param)


def test_the_python_path_gives_the_tokenizers_ids_wherever_it_answers(tokenizer):
    fast = FastEncoder.of(tokenizer)
    assert fast is not None
    words = [w.lstrip("▁") for w in tokenizer.get_vocab() if w.startswith("▁")] + _corpus(20)
    answered = 0
    for text in _texts(words, seed=len(words)):
        ids = fast.encode(text)
        if ids is not None:
            answered += 1
            assert ids == tokenizer.encode(text).ids, repr(text)
    assert answered > 1000  # the generated texts are mostly plain ASCII: the path is taken


@pytest.mark.parametrize("text", ["héllo", "a € b", "say <s> twice", "x</s>", "▁three", "<unk>"])
def test_text_the_python_path_cannot_vouch_for_goes_to_the_tokenizer(tokenizer, text):
    assert FastEncoder.of(tokenizer).encode(text) is None


def test_another_pipeline_is_left_to_the_tokenizer():
    whitespace = Tokenizer(models.BPE(unk_token="<unk>"))
    whitespace.pre_tokenizer = pre_tokenizers.Whitespace()
    assert FastEncoder.of(whitespace) is None
    dropout = train_tokenizer(_corpus(50), 100)
    dropout.model = models.BPE(dropout=0.1, unk_token="<unk>")
    assert FastEncoder.of(dropout) is None


def test_the_codec_gives_the_same_ids_on_the_event_loop_and_in_batches(tokenizer):
    codec = TextCodec(tokenizer, tokenizer, spec=None)  # encoding reads no step spec
    assert codec.fast is not None
    texts = _corpus(30) + ["héllo wörld", "  two  spaces ", "<s> kept as a special"]
    assert codec.encode(texts, batched=False) == codec.encode(texts, batched=True)
