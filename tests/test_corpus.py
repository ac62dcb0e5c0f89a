"""The numbers generator, the TSV / aligned-file loaders, cleaning and the seeded split."""

from __future__ import annotations

import pytest

from training.data.corpus import (
    CorpusConfig,
    CorpusError,
    clean_pairs,
    load_corpus,
    load_parallel,
    load_tsv,
    split_pairs,
)
from training.data.numbers import (
    ADJECTIVES,
    NOUNS,
    ORDINAL_NOUNS,
    amount_phrase,
    count_phrase,
    generate_pairs,
    number_pair,
    ordinal_phrase,
)


def _noun(en: str, table=NOUNS):
    return next(n for n in table if n.en == en)


def test_known_numbers_are_rendered_in_french_and_german():
    assert number_pair(342) == ("three hundred and forty-two", "trois cent quarante-deux")
    assert number_pair(97)[1] == "quatre-vingt-dix-sept"
    assert number_pair(80)[1] == "quatre-vingts"
    assert number_pair(97, "de")[1] == "siebenundneunzig"


def test_counted_nouns_agree_in_gender_and_put_colours_after_the_noun():
    red = next(a for a in ADJECTIVES if a.en == "red")
    green = next(a for a in ADJECTIVES if a.en == "green")
    assert count_phrase(21, _noun("apple"), None, "fr") == ("twenty-one apples", "vingt et une pommes")
    assert count_phrase(21, _noun("book"), None, "fr")[1] == "vingt et un livres"
    assert count_phrase(3, _noun("box"), green, "fr")[1] == "trois boîtes vertes"
    assert count_phrase(1, _noun("car"), red, "fr") == ("one red car", "une voiture rouge")
    assert count_phrase(1, _noun("dog"), red, "de")[1] == "einen roten Hund"


def test_ordinals_fix_french_plural_forms_and_the_first():
    floor, street = _noun("floor", ORDINAL_NOUNS), _noun("street", ORDINAL_NOUNS)
    assert ordinal_phrase(42, floor, "fr") == ("the forty-second floor", "le quarante-deuxième étage")
    assert ordinal_phrase(80, floor, "fr")[1] == "le quatre-vingtième étage"
    assert ordinal_phrase(1, street, "fr")[1] == "la première rue"
    assert ordinal_phrase(42, floor, "de")[1] == "der zweiundvierzigste Stock"


def test_amounts_read_units_and_cents():
    en, fr = amount_phrase(42, 5, ("euro", "euros", "euro", "euros", "Euro"), "fr")
    assert (en, fr) == (
        "it costs forty-two euros and five cents",
        "ça coûte quarante-deux euros et cinq centimes",
    )


def test_the_generator_is_deterministic_by_seed_and_distinct():
    a, b, c = generate_pairs(300, seed=1), generate_pairs(300, seed=1), generate_pairs(300, seed=2)
    assert a == b and a != c
    assert len(set(a)) == 300
    assert all(src.isascii() and tgt for src, tgt in a)


def test_the_generator_refuses_an_unknown_language():
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        generate_pairs(10, lang="xx")


def test_tsv_loader_ignores_extra_columns_and_names_malformed_lines(tmp_path):
    good = tmp_path / "good.tsv"
    good.write_text("one\tun\t123\tCC-BY\ntwo\tdeux\n\n")
    assert load_tsv(good) == [("one", "un"), ("two", "deux")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("one\tun\nno tab here\n")
    with pytest.raises(CorpusError, match=r"bad.tsv:2: expected at least 2"):
        load_tsv(bad)
    with pytest.raises(CorpusError, match="no such corpus file"):
        load_tsv(tmp_path / "missing.tsv")


def test_aligned_files_load_and_misalignment_is_reported(tmp_path):
    (tmp_path / "c.en").write_text("one\ntwo\n")
    (tmp_path / "c.fr").write_text("un\ndeux\n")
    assert load_parallel(tmp_path / "c.en", tmp_path / "c.fr") == [("one", "un"), ("two", "deux")]
    (tmp_path / "d.fr").write_text("un\n")
    with pytest.raises(CorpusError, match="not aligned"):
        load_parallel(tmp_path / "c.en", tmp_path / "d.fr")
    (tmp_path / "e.fr").write_text("un\n\n")
    with pytest.raises(CorpusError, match=r"e.fr:2: empty line"):
        load_parallel(tmp_path / "c.en", tmp_path / "e.fr")


def test_cleaning_normalises_lowercases_filters_and_dedups():
    pairs = [("Ｏne  ", "Un"), ("one", "un"), ("a b c d", "x"), ("cafe\u0301", "café")]
    out = clean_pairs(pairs, normalization="NFKC", lowercase=True, max_length=3)
    assert out == [("one", "un"), ("café", "café")]


def test_split_is_seeded_disjoint_and_sized():
    pairs = [(str(i), str(i)) for i in range(100)]
    train, valid, test = split_pairs(pairs, 0.1, 5, seed=3)
    assert (len(train), len(valid), len(test)) == (85, 10, 5)
    assert sorted(train + valid + test) == sorted(pairs)
    assert split_pairs(pairs, 0.1, 5, seed=3) == (train, valid, test)
    with pytest.raises(CorpusError, match="too small"):
        split_pairs(pairs[:3], 2, 2, seed=0)


def test_load_corpus_reads_a_parallel_prefix_and_records_sizes(tmp_path):
    (tmp_path / "p.en").write_text("\n".join(f"s{i}" for i in range(40)) + "\n")
    (tmp_path / "p.fr").write_text("\n".join(f"t{i}" for i in range(40)) + "\n")
    corpus = load_corpus(
        CorpusConfig(kind="parallel", data_path=str(tmp_path / "p"), valid_size=4, test_size=4)
    )
    assert corpus.info["train_size"] == 32 and len(corpus.valid) == 4 and len(corpus.test) == 4
    with pytest.raises(CorpusError, match="needs --data-path"):
        load_corpus(CorpusConfig(kind="tsv"))


def test_files_given_to_the_generated_corpus_are_refused_not_ignored(tmp_path):
    with pytest.raises(CorpusError, match="needs --corpus tsv or parallel"):
        load_corpus(CorpusConfig(kind="numbers", data_path=str(tmp_path / "pairs.tsv")))
