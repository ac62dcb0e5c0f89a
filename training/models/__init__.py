"""The model zoo. Importing this package registers every family in the registry."""

import importlib

from training.models.registry import build_model, get_entry, list_models, make_config, register_model

# Each family lives in its own module; a module that does not exist yet is simply not registered.
_FAMILIES = (
    "lenet",
    "alexnet",
    "vgg",
    "nin",
    "googlenet",
    "resnet",
    "densenet",
    "seq2seq",
    "transformer",
)
for _family in _FAMILIES:
    try:
        importlib.import_module(f"training.models.{_family}")
    except ModuleNotFoundError as exc:  # pragma: no cover - only while a family is being written
        if exc.name != f"training.models.{_family}":
            raise

__all__ = ["build_model", "get_entry", "list_models", "make_config", "register_model"]
