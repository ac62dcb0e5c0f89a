"""The gateway's translator pool reads a translator's encoder and decoder as repository entries named
in its kiln.json (``step_entries``): a name that is not a plain entry name (with a ``/``, ``.``, ``..``,
empty) is refused naming kiln.json and the field, as the Triton python model refuses it, where it was
looked up as an unknown model (or, at a readiness probe, sent to the backend as a path)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from serving.decoding.translator_pool import step_entries
from tests.test_translator_pool import _pool


@pytest.mark.parametrize("field", ["encoder", "decoder"])
@pytest.mark.parametrize("name", ["/abs/e", "../other_encoder", "sub/e", ".", "..", ""])
def test_a_step_entry_that_is_not_an_entry_name_is_refused_naming_kiln_json(tmp_path, field, name) -> None:
    pool = _pool(["first"])
    entry = pool.repository.entries["first"]
    entry.path, entry.kiln = tmp_path, {"translator": {"encoder": "e", "decoder": "d", field: name}}
    asyncio.run(pool.start(lambda *args, **kwargs: None))
    assert pool.failed["first"] == (
        f"ValueError: {tmp_path / 'kiln.json'}: 'translator.{field}' must name an entry of the model "
        f"repository (a directory name without '/', as export writes <name>_{field}), got {name!r}"
    )


def test_plain_entry_names_are_returned() -> None:
    entry = SimpleNamespace(
        path=None, kiln={"translator": {"encoder": "t_encoder", "decoder": "t.v2_decoder"}}
    )
    assert step_entries(entry) == ("t_encoder", "t.v2_decoder")
