"""A resumed run on a generated corpus (``--corpus numbers``) whose generator now writes some sentences
otherwise (6b08419: a bare German "hunderteins" was "hundertein") is refused with what the user can do:
the corpus cannot be "put back as it was", it is the code's, not a file."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from training.data.corpus import CorpusConfig, load_corpus
from training.translate_resume import check_same_corpus, corpus_digest


def _older_generator(corpus):
    """The corpus as the generator wrote it before 6b08419: a bare cardinal ending in 1 lost its s."""

    def older(pairs):
        return [(en, de.removesuffix("s")) if de.endswith("hunderteins") else (en, de) for en, de in pairs]

    return SimpleNamespace(**{split: older(getattr(corpus, split)) for split in ("train", "valid", "test")})


def test_a_resume_refused_because_the_generator_changed_says_so_and_not_to_put_a_corpus_back():
    corpus = load_corpus(CorpusConfig(kind="numbers", lang="de", n_pairs=3000, seed=0))
    older = _older_generator(corpus)
    assert corpus_digest(older) != corpus_digest(corpus)  # 3000 German pairs hold a bare "...hunderteins"
    cfg = SimpleNamespace(resume="run/transformer.resume.pt", data_path=None, corpus="numbers")
    state = {"corpus": corpus_digest(older), "train_config": {"data_path": None}}
    with pytest.raises(ValueError) as err:
        check_same_corpus(cfg, state, corpus_digest(corpus))
    message = str(err.value)
    assert message.startswith("--resume run/transformer.resume.pt: the numbers generator makes other pairs")
    assert "other pairs;" in message and "version that began" in message
    assert "put the corpus back" not in message  # a generated corpus is no file to restore
