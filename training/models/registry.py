"""One registry for every model family (classifiers and translators).

Builders register under a unique name with the task they serve and the config dataclass that holds
their constructor arguments; the checkpoint stores ``name`` and ``asdict(config)`` so that
``build_model(name, **args)`` rebuilds the exact architecture (contract 1 in DESIGN.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

TASKS = ("classify", "translate")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str
    config_cls: type
    builder: Callable[..., nn.Module]


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, task: str, config: type) -> Callable[[Callable], Callable]:
    """Decorator: register ``builder(config) -> nn.Module`` under ``name``; duplicate names are refused."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"config for {name!r} must be a dataclass, got {config!r}")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name=name, task=task, config_cls=config, builder=builder)
        return builder

    return decorator


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown model {name!r}; registered models: {known}") from None


def make_config(name: str, **args: Any) -> Any:
    """The family's config dataclass for ``name`` with ``args`` applied; unknown arguments are an error."""
    entry = get_entry(name)
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    unknown = sorted(set(args) - fields)
    if unknown:
        raise TypeError(f"{name}: unknown argument(s) {unknown}; accepted: {sorted(fields)}")
    return entry.config_cls(**args)


def build_model(name: str, **args: Any) -> nn.Module:
    """Build a registered model from keyword arguments of its config dataclass."""
    entry = get_entry(name)
    return entry.builder(make_config(name, **args))


def list_models(task: str | None = None) -> list[str]:
    """Registered model names, optionally only those of one task, sorted."""
    _ensure_loaded()
    return sorted(n for n, e in _REGISTRY.items() if task is None or e.task == task)


def _ensure_loaded() -> None:
    # Importing the package registers every family (each module decorates its builders).
    import training.models  # noqa: F401
