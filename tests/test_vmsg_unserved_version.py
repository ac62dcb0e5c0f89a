"""A version directory on disk that the entry's ``version_policy`` leaves out (a rolled-back version, kept
for the next rollout) is answered with a 404 that names the policy: "has no version '2'" sent the user
looking for a directory that is there, when the policy is what serves it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serving.errors import ModelNotFound
from serving.execution.repository import Repository
from tests.repo_fixtures import IDENTITY_CONFIG, write_identity_entries


def _entry(root: Path, policy: str) -> Repository:
    write_identity_entries(root, ["m"])
    shutil.copytree(root / "m" / "1", root / "m" / "2")
    (root / "m" / "config.pbtxt").write_text(IDENTITY_CONFIG.format(name="m") + policy)
    return Repository(root)


@pytest.mark.parametrize(
    ("policy", "words"),
    [
        ("version_policy { specific { versions: [1] } }\n", "version_policy specific [1]"),
        ("", "default version_policy (latest 1)"),
        ("version_policy { latest { num_versions: 1 } }\n", "version_policy latest num_versions 1"),
    ],
)
def test_a_version_on_disk_the_policy_leaves_out_names_the_policy(
    tmp_path: Path, policy: str, words: str
) -> None:
    entry = _entry(tmp_path, policy).get("m")
    unserved = "1" if "latest" in words else "2"
    with pytest.raises(ModelNotFound) as refused:
        entry.resolve_version(unserved)
    assert str(refused.value) == (
        f"model 'm' does not serve version '{unserved}': its {words} leaves it out; available: {entry.versions}"
    )


def test_a_version_that_is_nowhere_is_still_no_version(tmp_path: Path) -> None:
    entry = _entry(tmp_path, "").get("m")
    for version in ("7", "1/../2", "02"):
        with pytest.raises(ModelNotFound, match=rf"has no version '{version}'; available: \['2'\]"):
            entry.resolve_version(version)
