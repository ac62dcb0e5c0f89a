"""Translator settings that can never train are one error line before the corpus is read: a recurrent
translator's ``--model-arg rnn_type`` naming the other cell, and a ``--vocab-size`` with no room beside
the four special tokens, were accepted by the checks and refused only once the corpus had been read
(and, for rnn_type, the BPE vocabulary trained: ~18 s on the default corpus)."""

from __future__ import annotations

import pytest

from training import translate, translate_loop
from training.translate_flags import build_parser


def _config(argv: list[str]) -> translate.TranslateConfig:
    return translate.resolve_config(build_parser().parse_args(argv))


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the corpus fails the test: each run here must be refused before."""

    def read(*_args, **_kwargs):
        raise AssertionError("the corpus was read")

    monkeypatch.setattr(translate_loop, "prepare_data", read)


@pytest.mark.parametrize(
    ("model", "cell", "other"),
    [("gru_attention", "lstm", "lstm_attention"), ("lstm_attention", "gru", "gru_attention")],
)
def test_an_rnn_type_naming_the_other_cell_is_refused_before_the_corpus_is_read(
    model, cell, other, tmp_path, capsys, no_data
):
    argv = ["--model", model, "--model-arg", f"rnn_type={cell}", "--output-dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=f"got '{cell}' \\(for that, --model {other}\\)"):
        _config(argv)
    assert translate.main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --model-arg: ") and f"--model {other}" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_rnn_type_naming_the_models_own_cell_is_taken(tmp_path):
    cfg = _config(
        ["--model", "lstm_attention", "--model-arg", "rnn_type=lstm", "--output-dir", str(tmp_path)]
    )
    assert cfg.model_args["rnn_type"] == "lstm"


@pytest.mark.parametrize("size", [-1, 0, 4])
def test_a_vocab_size_without_room_beside_the_special_tokens_is_refused_before_the_corpus_is_read(
    size, tmp_path, capsys, no_data
):
    argv = ["--vocab-size", str(size), "--output-dir", str(tmp_path / "out"), "--no-progress"]
    assert translate.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --vocab-size must exceed the 4 special tokens <pad>, <s>, </s>, <unk>, got {size}"
    assert _config(["--vocab-size", "5", "--output-dir", str(tmp_path)]).vocab_size == 5
