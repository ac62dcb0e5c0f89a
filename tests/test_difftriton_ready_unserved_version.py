"""The readiness of a version on disk that the model's version_policy leaves out (a rolled-back one,
still in the repository) says why, as the metadata, config, infer and statistics routes of that version
say it; it was "model 'ident' has no version 1", which sends the operator looking at a directory that is
there, where the policy is what to change. An absent version still reads as absent."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.repo_fixtures import repository_client, write_identity_entries


def _repository(root: Path) -> Path:
    """``ident`` versions 1 and 2 under Triton's default policy (latest 1): version 2 served, 1 not."""
    write_identity_entries(root, ["ident"])
    shutil.copytree(root / "ident" / "1", root / "ident" / "2")
    return root


def test_readiness_of_a_version_the_policy_leaves_out_says_so_as_its_metadata_does(tmp_path: Path) -> None:
    with repository_client(_repository(tmp_path)) as client:
        assert client.get("/v2/models/ident/versions/2/ready").status_code == 200
        ready = client.get("/v2/models/ident/versions/1/ready")
        metadata = client.get("/v2/models/ident/versions/1")
        absent = client.get("/v2/models/ident/versions/9/ready")
    assert metadata.status_code == 404 and "version_policy" in metadata.json()["error"], metadata.text
    assert ready.status_code == 400
    assert ready.json() == metadata.json()  # the same reason, from the same place
    assert ready.json()["error"] == (
        "model 'ident' does not serve version '1': its default version_policy (latest 1) leaves it out; "
        "available: ['2']"
    )
    assert absent.status_code == 400
    assert absent.json()["error"] == "model 'ident' has no version '9'; available: ['2']"
