"""The README's table of ``make`` variables gives each one's default: the value the Makefile's ``?=``
assigns, or, for a default the Makefile computes, every place and program it consults (NVIDIA_DEVICES
also takes the first GPU ``nvidia-smi -L`` lists, so a README naming only the device files told users
with a working ``nvidia-smi`` that ``make demo GPU=1`` would refuse them)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_docs_reference import section

MAKEFILE = Path(__file__).resolve().parent.parent / "Makefile"


def assigned_defaults() -> dict[str, list[str]]:
    """Every ``NAME ?= value`` of the Makefile, each value it may take (PRECISIONS has one per DEVICE)."""
    found: dict[str, list[str]] = {}
    for name, value in re.findall(r"^([A-Z_]+)\s*\?=[ \t]*(.*)$", MAKEFILE.read_text(), re.M):
        found.setdefault(name, []).append(value.strip())
    return found


def default_cells() -> dict[str, str]:
    """The README's variable table: each variable's default cell (one row may name several)."""
    text = section("`make` targets and variables")
    rows = re.findall(r"^\| ((?:`[A-Z_]+`(?:, )?)+) \| ([^|]+) \|", text, re.M)
    return {name: cell.strip() for names, cell in rows for name in re.findall(r"`([A-Z_]+)`", names)}


def consulted(value: str) -> list[str]:
    """What a computed default reads: its ``$(wildcard ...)`` patterns and the programs its shells run."""
    patterns = [p for group in re.findall(r"\$\(wildcard ([^)]*)\)", value) for p in group.split()]
    programs = re.findall(r"\$\(shell ([a-z][\w-]*)", value) + re.findall(r"\$\$\(([a-z][\w-]*)", value)
    return patterns + programs


def test_every_variable_the_makefile_lets_users_set_is_in_the_readme_table() -> None:
    missing = sorted(set(assigned_defaults()) - set(default_cells()))
    assert not missing, f"README's make variable table has no row for {missing}"


def test_each_default_the_readme_gives_a_make_variable_is_the_makefiles() -> None:
    cells = default_cells()
    for name, values in assigned_defaults().items():
        cell = cells[name]
        for value in values:
            if not value:
                assert cell in ("none", "unset", "the recipe's"), f"{name}: README says {cell!r}, make: empty"
            elif "$(" in value:
                absent = [part for part in consulted(value) if part not in cell]
                assert consulted(value) and not absent, f"{name}: README's {cell!r} leaves out {absent}"
            else:
                assert re.search(rf"(?<![\w.])(?<!\w,){re.escape(value)}(?![\w.]|,\w)", cell), (
                    f"{name}: README says {cell!r}, the Makefile {value!r}"
                )
