"""A ``--name`` whose folders (``runs/exp1/model``) cross a file is refused before training, naming the
flag, as an ``--output-dir`` under a file is: it stopped the run in a bare ``[Errno 17] File exists``,
exit status 1, naming neither flag."""

from __future__ import annotations

import pytest

from training import classify, translate


@pytest.mark.parametrize("name", ["taken/model", "taken/deeper/model"])
def test_a_name_under_a_file_is_one_line_naming_the_flag(tmp_path, capsys, name):
    (tmp_path / "taken").write_text("")
    argvs = [
        (classify.main, ["--model", "lenet", "--epochs", "1"]),
        (translate.main, ["--n-pairs", "40", "--epochs", "1"]),
    ]
    for main, argv in argvs:
        assert main([*argv, "--output-dir", str(tmp_path), "--name", name, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"error: --name {name} (in --output-dir {tmp_path}): {tmp_path / 'taken'} is a file, "
            "not a directory\n"
        ), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
