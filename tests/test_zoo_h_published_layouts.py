"""README's "Models" table of the classifiers' published layouts is what the code builds: each row's
arguments give the parameter count it states (models built on the meta device, never run), each recipe
sets the arguments its row says, and every registered zoo classifier has a row."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from training.classify_config import recipe_model_args
from training.models import build_model, get_entry, list_models

README = Path(__file__).resolve().parent.parent / "README.md"
# | `name` | `k=v, ...` | 11 689 512 (1 channel, 10 classes) | `k=v, ...` or none | differences |
ROW = re.compile(
    r"^\| `(?P<name>[a-z0-9_]+)` \| `(?P<args>[^`]*)`[^|]* \| (?P<count>[\d ]+\d)"
    r"(?: \((?P<channels>\d+) channels?, (?P<classes>\d+) classes\))? \| (?P<recipe>[^|]+) \|",
    re.M,
)


def models_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = re.search(r"^## Models\n", text, re.M)
    assert start, "README has no Models section"
    rest = text[start.end() :]
    end = re.search(r"^## ", rest, re.M)
    return rest[: end.start() if end else None]


def keyword_args(text: str) -> dict:
    """``small_input=False, pool_size=6`` -> the keyword arguments, values as Python literals."""
    call = ast.parse(f"f({text})", mode="eval").body
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}


def rows() -> dict[str, re.Match]:
    return {m["name"]: m for m in ROW.finditer(models_section())}


def test_every_zoo_classifier_has_a_row_in_the_published_layouts_table():
    zoo = {name for name in list_models("classify") if get_entry(name).in_zoo}
    assert zoo - set(rows()) == set(), "add them to README's table of published layouts"


@pytest.mark.parametrize("name", sorted(n for n in list_models("classify") if get_entry(n).in_zoo))
def test_a_rows_arguments_build_the_parameter_count_it_states(name):
    row = rows().get(name)
    assert row, f"README's Models table has no row for {name}"
    channels, classes = int(row["channels"] or 3), int(row["classes"] or 1000)
    with torch.device("meta"):
        model = build_model(name, in_channels=channels, num_classes=classes, **keyword_args(row["args"]))
    assert sum(p.numel() for p in model.parameters()) == int(row["count"].replace(" ", ""))


@pytest.mark.parametrize("name", sorted(n for n in list_models("classify") if get_entry(n).in_zoo))
def test_a_rows_recipe_arguments_are_the_recipes(name):
    row = rows().get(name)
    assert row, f"README's Models table has no row for {name}"
    cell = row["recipe"].strip()
    documented = {} if cell == "none" else keyword_args(cell.strip("`"))
    assert documented == recipe_model_args(name)
