"""Every ``--flag`` the README names is a flag of a Kiln command it documents, or of another program
named here with its owner: a flag renamed or removed without the README fails here (tests/test_docs_truth.py
checks the docs/ folder's flags the same way, not the README's)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_docs_truth import flags, parser_of, parsers

README = Path(__file__).resolve().parent.parent / "README.md"

# Flags the README names of programs that are not Kiln's, with their owner.
OTHER_PROGRAMS = {
    "--async": "perf_analyzer",
    "--concurrency-range": "perf_analyzer",
    "--max-threads": "perf_analyzer",
    "--request-rate-range": "perf_analyzer",
    "--shared-memory": "perf_analyzer",
    "--streaming": "perf_analyzer",
    "--string-data": "perf_analyzer",
    "--version": "perf_analyzer",
    "--exit-timeout-secs": "tritonserver",
    "--model-control-mode": "tritonserver",
    "--grpc-keepalive-": "tritonserver (its --grpc-keepalive-* flags)",
    "--master-addr": "torchrun",
    "--master-port": "torchrun",
    "--max-restarts": "torchrun",
    "--node-rank": "torchrun",
    "--nproc": "torchrun (--nproc_per_node)",
    "--rdzv-backend": "torchrun",
    "--rdzv-id": "torchrun",
    "--standalone": "torchrun",
    "--no-deps": "pip",
    "--no-index": "pip",
    "--target": "pip",
    "--dist": "pytest-xdist (--dist loadfile)",
    "--pdb": "pytest",
    "--ulimit": "docker run (--ulimit nofile=...)",
}


def kiln_flags() -> set[str]:
    """The flags of every command the README tells a user to run."""
    import bench.decode_replay
    import bench.frontend_cost
    import bench.gpu_decode_probe
    import bench.gpu_graph_probe
    import kiln.demo
    from training.zoo import build_parser as zoo_parser

    tools = [
        parser_of(kiln.demo.main),
        parser_of(bench.decode_replay.main),
        parser_of(bench.frontend_cost.main),
        parser_of(bench.gpu_graph_probe.main),
        bench.gpu_decode_probe._parser(),
        zoo_parser(),
    ]
    return set().union(*(flags(p) for p in [*parsers().values(), *tools]))


def test_every_flag_the_readme_names_is_a_flag_of_a_kiln_command_or_of_a_named_other_program() -> None:
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", README.read_text()))
    unknown = sorted(named - kiln_flags() - set(OTHER_PROGRAMS))
    assert not unknown, f"README names {unknown}, no flag of a Kiln command (or add the other program here)"


def test_the_other_programs_flags_listed_here_are_still_named_by_the_readme() -> None:
    text = README.read_text()
    stale = sorted(flag for flag in OTHER_PROGRAMS if flag not in text)
    assert not stale, f"README no longer names {stale}: drop them from OTHER_PROGRAMS"
