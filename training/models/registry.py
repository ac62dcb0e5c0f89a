"""One registry for every model family (classifiers and translators).

Builders register under a unique name with the task they serve and the config dataclass that holds
their constructor arguments; the checkpoint stores ``name`` and ``asdict(config)`` so that
``build_model(name, **args)`` rebuilds the exact architecture (contract 1 in DESIGN.md).

A user's own classifier registers the same way from a module of their own; ``import_modules`` imports
such modules (``--models-from``, ``KILN_MODELS_FROM``), and each entry remembers the module that
registered it, which the checkpoint records so that export can say which module to name (it imports
none by itself: README, "Your own classifier").
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

TASKS = ("classify", "translate")
ZOO_PACKAGE = "training.models"


class ModelModuleError(ValueError):
    """A module of user models could not be imported, or does not register the model asked for."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str
    config_cls: type
    builder: Callable[..., nn.Module]
    module: str = ZOO_PACKAGE  # the module whose import registered it

    @property
    def in_zoo(self) -> bool:
        """Whether Kiln's own package registered it (always loaded), not a user module."""
        return self.module == ZOO_PACKAGE or self.module.startswith(ZOO_PACKAGE + ".")


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, task: str, config: type) -> Callable[[Callable], Callable]:
    """Decorator: register ``builder(config) -> nn.Module`` under ``name``; duplicate names are refused
    (the zoo, ``training/models/__init__.py``, is loaded before any user module can import this)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"config for {name!r} must be a dataclass, got {config!r}")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        # The builder's module: where the user keeps the model (a checkpoint names it, so that a refusal
        # can say which module to import), whichever helper of theirs applied the decorator.
        module = getattr(builder, "__module__", None) or "__main__"
        held = _REGISTRY.get(name)
        # the same builder of a user's module again is that module reloaded (a notebook's edit-and-reload);
        # a builder made inside a function (a helper's closure) names no one model: refused as before
        key = (module, _qualname(builder))
        same = held is not None and (held.module, _qualname(held.builder)) == key and "<locals>" not in key[1]
        if held is not None and not (same and not held.in_zoo):
            raise ValueError(
                f"model {name!r} is already registered (by {held.module}); register yours under another name"
            )
        _REGISTRY[name] = ModelEntry(name=name, task=task, config_cls=config, builder=builder, module=module)
        return builder

    return decorator


def _qualname(builder: Callable[..., nn.Module]) -> str:
    return getattr(builder, "__qualname__", repr(builder))


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(
            f"unknown model {name!r}; registered models: {known} (a model of your own: import the module "
            "that registers it with --models-from MODULE)"
        ) from None


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


def env_modules() -> list[str]:
    """The modules ``KILN_MODELS_FROM`` names (comma-separated), imported before ``--models-from``'s."""
    return [m.strip() for m in os.environ.get("KILN_MODELS_FROM", "").split(",") if m.strip()]


def import_modules(modules: Iterable[str]) -> None:
    """Import each module of user models (``--models-from``), so that it registers them; a module that
    cannot be found or raises is one :class:`ModelModuleError` line naming it and what to do."""
    _ensure_loaded()
    from_environment = env_modules()
    for module in modules:
        try:
            _import_module(module)
        except ModelModuleError as exc:
            if module not in from_environment:
                raise
            # a variable set in a shell long ago (the own-classifier walk-through's) is not the flag just typed
            raise ModelModuleError(
                f"{exc} (KILN_MODELS_FROM in the environment names it: unset it if the module is gone)"
            ) from exc.__cause__


def ensure_registered(name: str, module: str | None) -> None:
    """Make sure ``name`` is registered, importing only what the user named (``KILN_MODELS_FROM``; the
    commands import ``--models-from`` before): ``module``, a checkpoint's or resume state's record of the
    module that registered the model, is named in the refusal, never imported. A checkpoint is loaded
    ``weights_only`` so that reading one runs no code; importing a module it names would run that
    module's (an ``evil.py`` beside ``evil.pt`` in the current directory, or a standard module whose
    import acts)."""
    _ensure_loaded()
    if name in _REGISTRY:
        return
    import_modules(env_modules())
    if name in _REGISTRY or module is None:
        return
    if module == "__main__":
        raise ModelModuleError(
            f"model {name!r} was registered by a script run as __main__, which cannot be imported again: "
            "move its @register_model code into a module and pass --models-from MODULE"
        )
    named = [m.strip() for m in module.split(",")]
    if not all(m and all(part.isidentifier() for part in m.split(".")) for m in named):  # the file's text
        raise ModelModuleError(
            f"model {name!r} is not registered, and the file names no valid module for it: pass "
            "--models-from MODULE naming the module of yours that registers it"
        )
    flags = " ".join(f"--models-from {m}" for m in named)
    raise ModelModuleError(
        f"model {name!r} is not registered; the file says {', '.join(named)} registers it: pass {flags} "
        f"(or KILN_MODELS_FROM={','.join(named)}) if you trust it (Kiln imports only the modules you name: "
        "importing one runs its code)"
    )


def _import_module(module: str) -> None:
    if not all(part.isidentifier() for part in module.split(".")):
        raise ModelModuleError(
            f"model module {module!r}: give a module name as `import` takes it (mynets, mypkg.nets), not a "
            "file path; its directory goes on PYTHONPATH"
        )
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise ModelModuleError(f"importing model module {module!r} failed: {_where(exc)}") from exc
        raise ModelModuleError(
            f"cannot import model module {module!r}: no module named {exc.name!r} on the Python path; "
            "run from the directory that holds it or add that directory to PYTHONPATH"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - the user's code: any failure is named in one line
        raise ModelModuleError(f"importing model module {module!r} failed: {_where(exc)}") from exc


def _where(exc: BaseException) -> str:
    """``Type: message (file:line)``: the exception and the line of the imported code that raised it,
    on one line (a SyntaxError's message names its line itself)."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    ours = (__file__, importlib.__file__)
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if f.filename not in ours and f.filename[0] != "<"
    ]
    place = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {message}{place}"


def _ensure_loaded() -> None:
    # Importing the package registers every family (each module decorates its builders).
    import training.models  # noqa: F401
