"""A corpus changed since training is refused as a translator's held-out split by export and by the
bench alike (``held_out_pairs``): the refusal told both to "point --data-path at that corpus", a flag
``python -m bench`` and ``bench.decode_replay`` do not have (they read the corpus where the run
recorded it), so the bench's user was sent to a flag that does not exist."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.translation_rows import workload_parser
from training import translate_setup


@pytest.fixture
def grown_corpus(monkeypatch):
    """``held_out_pairs`` rebuilding a corpus of 260 raw pairs for a run that trained on 240."""
    info = {"data_path": "/data/tiny.tsv", "raw_pairs": 260, "clean_pairs": 260}
    monkeypatch.setattr(translate_setup.TokenizerPair, "from_dict", staticmethod(lambda d: None))
    monkeypatch.setattr(translate_setup.TranslateConfig, "from_dict", staticmethod(lambda d: d))
    monkeypatch.setattr(translate_setup, "corpus_config", lambda cfg: cfg)
    monkeypatch.setattr(translate_setup, "load_corpus", lambda cfg: SimpleNamespace(info=info, test=[]))
    return {"tokenizers": {}, "train_config": {}, "data": {"raw_pairs": 240, "clean_pairs": 240}}


def test_the_refusal_says_what_the_bench_can_do_not_only_exports_flag(grown_corpus):
    with pytest.raises(ValueError) as refused:
        translate_setup.held_out_pairs(grown_corpus, "test")
    message = str(refused.value)
    assert "not the one the run trained on (raw_pairs 260, the run's 240)" in message
    assert "put that corpus back there" in message  # the place named at its start: all the bench reads
    assert "point --data-path" not in message


def test_the_bench_has_no_data_path_flag_to_point():
    parser = workload_parser("python -m bench.decode_replay", "", "")
    assert "--data-path" not in parser._option_string_actions
