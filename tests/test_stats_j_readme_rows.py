"""README's Metrics table says what each series counts: where a series also counts a translator's
requests (its help says so), its row says so too. ``kiln_executed_requests_total`` read "requests the
batcher ran" while each translation decoded to success added one (the decode workers run outside the
batchers), and the stage series did not say what a translator's ``queue`` and ``infer`` are."""

from __future__ import annotations

from pathlib import Path

from serving.metrics import GatewayMetrics

README = Path(__file__).resolve().parents[1] / "README.md"


def _rows() -> dict[str, str]:
    """Each series of README's Metrics table, by name, with what its row says it counts."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Metrics") : text.index("### Errors")]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `kiln_"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells[-1]
    return rows


def test_every_series_counting_translators_says_so_in_its_readme_row() -> None:
    rows = _rows()
    silent = []
    for family in GatewayMetrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        if "translator" in family.documentation and "translator" not in rows.get(name, ""):
            silent.append(name)
    assert silent == [], f"README's Metrics rows do not say these count translators too: {silent}"
