"""A translate call to a translator's encoder or decoder entry names the translator whose step it is:
it said "model 'transformer_encoder' is a translate_encoder model; it cannot translate" and the user
looked through the repository index for the entry that does."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from serving.decoding.translator_pool import cannot_translate

STEPS = {"encoder": "fr_encoder", "decoder": "fr_decoder"}


def _entry(name: str, task: str, kiln: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(name=name, task=task, kiln=kiln or {}, path=Path("repo") / name)


ENTRIES = {
    "fr": _entry("fr", "translate", {"translator": STEPS}),
    "fr_int8": _entry("fr_int8", "translate", {"translator": {**STEPS, "decoder": "fr_decoder_int8"}}),
    "fr_encoder": _entry("fr_encoder", "translate_encoder"),
    "fr_decoder": _entry("fr_decoder", "translate_decoder"),
    "resnet18": _entry("resnet18", "classify"),
    "broken": _entry("broken", "translate", {"translator": {}}),  # names no steps: skipped, not a 500
}


def test_an_encoder_entry_names_every_translator_that_calls_it() -> None:
    refusal = cannot_translate(ENTRIES["fr_encoder"], ENTRIES)
    assert refusal.status == 400
    assert str(refusal) == (
        "model 'fr_encoder' is a translate_encoder model; it cannot translate; translate with 'fr' or "
        "'fr_int8', the translators whose step it is"
    )
    assert str(cannot_translate(ENTRIES["fr_decoder"], ENTRIES)).endswith(
        "translate with 'fr', the translator whose step it is"
    )


def test_a_classifier_keeps_the_plain_refusal() -> None:
    assert str(cannot_translate(ENTRIES["resnet18"], ENTRIES)) == (
        "model 'resnet18' is a classify model; it cannot translate"
    )
