"""``--replace-version`` with ``--version next`` is a usage error: next writes a new version, or this
checkpoint's own again, never another checkpoint's, so the flag was accepted and did nothing, and a
user who meant to write over a version went on believing it had been."""

from __future__ import annotations

import pytest

from export.__main__ import parse_args


def test_replace_version_with_next_is_refused_naming_what_to_do(capsys) -> None:
    with pytest.raises(SystemExit) as refused:
        parse_args(["ck.pt", "--version", "next", "--replace-version"])
    assert refused.value.code == 2
    assert "--replace-version with --version next" in capsys.readouterr().err


@pytest.mark.parametrize("version", [[], ["--version", "2"]])
def test_replace_version_with_a_number_or_the_default_is_taken(version: list[str]) -> None:
    assert parse_args(["ck.pt", *version, "--replace-version"]).replace_version
