"""A special token's text attached to a word ("x</s>y") in the training text stays text.

The BPE trainer learns merges over such text like any other; one whose result is "</s>" (or "<unk>",
"<pad>", "<s>") got the special's own id, so the text encoded to EOS mid-sentence at training and at
serving, and the target was cut there when decoded.
"""

from __future__ import annotations

import pytest

from serving.decoding.translator import TextCodec
from training.data.tokenizer import EOS_ID, SPECIALS, TokenizerPair, train_tokenizer

# HTML-ish text: "</s>", "<s>" (strikethrough tags), "<unk>" and "<pad>" glued to words, often
CORPUS = ["x</s>y z", "a</s>", "b</s>", "c</s>", "ab<unk>", "q<pad>", "<s>k", "m<s>"] * 300


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, 100)


@pytest.mark.parametrize("text", ["zz</s>", "zz</s> a", "kq<unk>", "bz<pad>", "zk<s>", "a</s>b</s>c"])
def test_a_special_tokens_text_glued_to_a_word_encodes_to_ordinary_tokens(tokenizer, text):
    ids = tokenizer.encode(text).ids
    assert not set(ids) & set(range(len(SPECIALS))), [tokenizer.id_to_token(i) for i in ids]


def test_no_merge_of_the_trained_tokenizer_rebuilds_a_special_token(tokenizer):
    import json

    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    assert not [m for m in merges if "".join(m) in SPECIALS]


def test_the_source_ends_with_its_one_eos_and_the_target_decodes_back_whole(tokenizer):
    pair = TokenizerPair(tokenizer, tokenizer, shared=True)
    (source,) = pair.encode_source(["zz</s> a"])
    assert source.count(EOS_ID) == 1 and source[-1] == EOS_ID
    (target,) = pair.encode_target(["ab</s> za"])
    assert pair.decode_target([*target, EOS_ID]) == "ab</s> za"


def test_the_gateway_reads_the_saved_tokenizer_to_the_same_ordinary_ids(tokenizer, tmp_path):
    path = tmp_path / "source_tokenizer.json"
    path.write_text(tokenizer.to_str(), encoding="utf-8")
    codec = TextCodec.from_files(path, path, spec=None)  # encoding reads no step spec
    texts = ["zz</s> a", "x</s>y", "kq<unk>"]
    served = codec.encode(texts)
    assert served == codec.encode(texts, batched=False) == [tokenizer.encode(t).ids for t in texts]
    assert not {i for row in served for i in row} & set(range(len(SPECIALS)))
