"""The gateway serves the versions it found at start. A version an export writes while it runs (``--version
next``), which the entry's ``version_policy`` would serve, was a 404 saying the policy "leaves it out"
(``latest 1`` leaving out the highest version): the restart, not the policy, is what serves it. A
version the policy does leave out is still named so."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serving.errors import ModelNotFound
from serving.execution.repository import Repository
from tests.repo_fixtures import IDENTITY_CONFIG, write_identity_entries


@pytest.mark.parametrize(
    "policy", ["", "version_policy { latest { num_versions: 1 } }\n", "version_policy { all { } }\n"]
)
def test_a_version_written_since_start_up_is_no_policy_s_doing(tmp_path: Path, policy: str) -> None:
    write_identity_entries(tmp_path, ["m"])
    (tmp_path / "m" / "config.pbtxt").write_text(IDENTITY_CONFIG.format(name="m") + policy)
    entry = Repository(tmp_path).get("m")
    shutil.copytree(tmp_path / "m" / "1", tmp_path / "m" / "2")  # the rollout, while the gateway runs
    with pytest.raises(ModelNotFound) as refused:
        entry.resolve_version("2")
    assert "leaves it out" not in str(refused.value)
    assert "written since the gateway loaded the repository" in str(refused.value)
    assert "restart the gateway" in str(refused.value)
    assert entry.resolve_version("1") == "1"  # still served until the restart, as before


def test_a_version_the_policy_leaves_out_is_still_named_so(tmp_path: Path) -> None:
    write_identity_entries(tmp_path, ["m"])
    specific = "version_policy { specific { versions: [1] } }\n"
    (tmp_path / "m" / "config.pbtxt").write_text(IDENTITY_CONFIG.format(name="m") + specific)
    entry = Repository(tmp_path).get("m")
    shutil.copytree(tmp_path / "m" / "1", tmp_path / "m" / "2")  # staged, not served by specific:1
    with pytest.raises(ModelNotFound, match=r"does not serve version '2': its version_policy specific \[1\]"):
        entry.resolve_version("2")
