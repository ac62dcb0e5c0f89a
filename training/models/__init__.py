"""The model zoo. Importing this package registers every family in the registry."""

from training.models import (  # noqa: F401 - imported for their @register_model side effect
    alexnet,
    densenet,
    googlenet,
    lenet,
    nin,
    resnet,
    seq2seq,
    transformer,
    vgg,
)
from training.models.registry import build_model, get_entry, list_models, make_config, register_model

__all__ = ["build_model", "get_entry", "list_models", "make_config", "register_model"]
