"""The README's reference tables name everything they list from the code: a series, setting or target
added without its row fails here."""

from __future__ import annotations

import re
from pathlib import Path

from serving.__main__ import INTERNAL
from serving.metrics import GatewayMetrics
from serving.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def section(title: str) -> str:
    """The README's text from heading ``title`` to the next heading of the same or a higher level."""
    text = README.read_text()
    match = re.search(rf"^(#+) {re.escape(title)}\n", text, re.M)
    assert match, f"README has no heading {title!r}"
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{len(match.group(1))}}} ", rest, re.M)
    return rest[: end.start() if end else None]


def table_names(text: str) -> set[str]:
    """The first cell of each table row, without its backquotes."""
    return {m.group(1) for m in re.finditer(r"^\| `([^`]+)`", text, re.M)}


def exposed_series() -> set[str]:
    """Every series family a gateway exposes, named as a scrape shows it (counters with ``_total``)."""
    families = GatewayMetrics().registry.collect()
    return {f.name + ("_total" if f.type == "counter" else "") for f in families}


def test_every_metric_the_gateway_exposes_is_in_the_readme_metrics_table():
    documented = table_names(section("Metrics"))
    assert exposed_series() - documented == set(), "add them to README's Metrics table"
    assert documented - exposed_series() == set(), "README's Metrics table names series that do not exist"


def settings_rows() -> dict[str, str]:
    """The README's Settings table: each flag's default cell."""
    rows = re.finditer(r"^\| `(--[a-z-]+)` \| ([^|]+) \|", section("Settings"), re.M)
    return {m.group(1): m.group(2).strip() for m in rows}


def test_every_gateway_setting_is_in_the_readme_settings_table_with_its_default():
    rows = settings_rows()
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if name in INTERNAL:
            assert flag not in rows, f"{flag} is set by the gateway for its workers, not by users"
            continue
        assert flag in rows, f"README's Settings table has no row for {flag}"
        default = field.default.as_posix() if isinstance(field.default, Path) else field.default
        if default is None:  # the help says what an unset value means
            assert rows[flag].startswith("unset"), f"{flag}: {rows[flag]!r}"
        else:
            assert rows[flag] == f"`{default}`", f"{flag}: README says {rows[flag]}, the code {default}"
    assert len(rows) == len(Settings.model_fields) - len(INTERNAL), "README names a flag that does not exist"


def test_every_make_target_make_help_lists_is_in_the_readme_make_table():
    makefile = (README.parent / "Makefile").read_text()
    listed = set(re.findall(r"^([a-z-]+):.*## ", makefile, re.M))
    first_cells = re.findall(r"^\| ([^|]+) \|", section("`make` targets and variables"), re.M)
    documented = {target for cell in first_cells for target in re.findall(r"`make ([a-z-]+)`", cell)}
    assert listed - documented == set(), "add them to README's make table"
