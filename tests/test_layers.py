"""serving/ is three layers a newcomer can see (DESIGN.md): each module imports only its own layer or below."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVING = Path(__file__).resolve().parent.parent / "serving"

# Lower number = lower layer. A module may import modules of its own rank or lower, never higher.
RANKS = {
    "serving.errors": 0,
    "serving.settings": 0,
    "serving.process_tree": 0,  # what the gateway's processes use together (procfs), read by its metrics
    "serving.open_files": 0,  # the process's open-file limit, raised as the gateway starts
    "serving.threads": 0,  # OS names for the gateway's threads (decoding and execution both start some)
    "serving.execution": 1,
    "serving.metrics": 2,
    "serving.metric_families": 2,  # what serving.metrics declares: every series the gateway exposes
    "serving.metrics_files": 2,  # the workers' shared metric files, their room reserved before use
    "serving.decoding": 2,
    "serving.protocol": 3,
    "serving.gateway": 3,
    "serving.handoff": 3,  # the front ends' connections placed across workers (app and workers start it)
    "serving.app": 4,
    "serving.lifespan": 4,  # what the app's lifespan opens: repository, backend, gRPC server
    "serving.__main__": 5,
    "serving.log_json": 5,  # --log-format json: the formatter __main__ sets up
    "serving.workers": 5,  # several gateway processes on one port, started by __main__
    "serving.triton": 5,
}


def _rank(module: str) -> int | None:
    for prefix in sorted(RANKS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return RANKS[prefix]
    return None


def _module_name(path: Path) -> str:
    parts = path.relative_to(SERVING.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _serving_imports(path: Path) -> set[str]:
    """Every ``serving.*`` module the file imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("serving"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("serving"))
    return found


MODULES = sorted(p for p in SERVING.rglob("*.py") if _rank(_module_name(p)) is not None)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SERVING)))
def test_a_serving_module_imports_only_its_own_layer_or_lower_ones(path: Path) -> None:
    own = _rank(_module_name(path))
    upward = sorted(m for m in _serving_imports(path) if (_rank(m) or 0) > own)
    assert not upward, f"{_module_name(path)} (layer {own}) imports higher layers: {upward}"


def test_every_serving_module_belongs_to_a_layer() -> None:
    orphans = [str(p.relative_to(SERVING)) for p in SERVING.rglob("*.py") if _rank(_module_name(p)) is None]
    assert orphans in ([], ["__init__.py"]), f"modules outside the layer map: {orphans}"
