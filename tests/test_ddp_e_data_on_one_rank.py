"""A torchrun rank that cannot read the run's data while the others can (a node without the
``--data-path`` file: each node reads it itself) exited 2 without a word, only rank 0 printing refusals;
on one node torchrun then stopped rank 0, on two the other node's ranks waited in their next collective
for the whole ``--dist-timeout`` (30 min by default) and blamed a hung rank. Now every rank learns of the
refusal right after reading the data, and rank 0 prints it in one line naming the rank. The tests make
rank 1's reading fail on one node, as a node without the file does."""

from __future__ import annotations

import pytest

from tests.test_ddp_e_rank_refusals import TINY_TRANSLATOR, error_lines
from tests.torchrun import tiny_lenet, two_ranks

MISSING = "/data/ddp_e/pairs.tsv: no such corpus file"

RANK_1_CANNOT_READ = f"""
import os
import sys

from training import {{module}}
from training.data.corpus import CorpusError

real_read = {{module}}.{{reader}}


def read(*args, **kwargs):
    if os.environ.get("RANK") == "1":  # this rank's node lacks the data
        raise CorpusError("{MISSING}")
    return real_read(*args, **kwargs)


{{module}}.{{reader}} = read
from training.{{command}} import main

raise SystemExit(main(sys.argv[1:]))
"""

LINE = (
    f"error: torchrun rank 1 of 2 could not read the data: {MISSING} (each node reads --data-path itself: "
    "every node must see the same data at the same path)"
)


def launch(tmp_path, module: str, reader: str, command: str, args: list[str]):
    script = tmp_path / "ddp_e_rank1_cannot_read.py"
    script.write_text(
        RANK_1_CANNOT_READ.format(module=module, reader=reader, command=command), encoding="utf-8"
    )
    return two_ranks([str(script), *args, "--dist-timeout", "60"], tmp_path / "torchrun")


@pytest.mark.timeout(90)
def test_a_translator_rank_that_cannot_read_the_corpus_stops_the_run_with_rank_0_naming_it(tmp_path):
    args = [*TINY_TRANSLATOR, "--output-dir", str(tmp_path / "out")]
    done = launch(tmp_path, "translate_loop", "prepare_data", "translate", args)
    assert done.returncode != 0
    assert error_lines(done.stderr) == [LINE], done.stderr[-3000:]


@pytest.mark.timeout(90)
def test_a_classifier_rank_that_cannot_read_the_images_stops_the_run_with_rank_0_naming_it(tmp_path):
    done = launch(tmp_path, "classify_loop", "make_splits", "classify", tiny_lenet(tmp_path / "out", 1))
    assert done.returncode != 0
    assert error_lines(done.stderr) == [LINE], done.stderr[-3000:]
