"""README's "Training is reproducible" names the zoo families whose training runs ``AdaptiveAvgPool2d``'s
backward, one of the CUDA kernels PyTorch lists as without a deterministic version: those whose adaptive
pools go to more than 1x1 (torch computes a pool to 1x1 as a mean), with their recipes' arguments or an
optional head's (GoogLeNet's ``aux_logits``). Models built on the meta device, never run."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
from torch import nn

from training.classify_config import RECIPES, family_of, recipe_model_args
from training.models import build_model, get_entry, list_models

README = Path(__file__).resolve().parent.parent / "README.md"


def documented_families() -> set[str]:
    """The families README's sentence names between ``AdaptiveAvgPool2d``'s backward and ``NLLLoss``."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    clause = re.search(r"`AdaptiveAvgPool2d`'s backward(.*?)`NLLLoss`", text)
    assert clause, "README no longer names AdaptiveAvgPool2d's backward before NLLLoss"
    return {word for word in re.findall(r"[a-z]+", clause.group(1)) if word in RECIPES}


def pools_to_more_than_one(name: str, args: dict) -> bool:
    """Whether ``name`` holds an adaptive average pool to more than 1x1 (its output size whatever the
    input's; the zoo's models run every module they hold in training)."""
    with torch.device("meta"):
        model = build_model(name, num_classes=10, in_channels=1, **args)
    sizes = [m.output_size for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    return any(size not in (1, (1, 1)) for size in sizes)


def test_the_families_named_as_running_adaptive_pools_backward_are_those_that_do():
    running = set()
    for name in list_models("classify"):
        if not get_entry(name).in_zoo:
            continue
        args = recipe_model_args(name)
        fields = {f.name for f in dataclasses.fields(get_entry(name).config_cls)}
        options = [args] + ([{**args, "aux_logits": True}] if "aux_logits" in fields else [])
        if any(pools_to_more_than_one(name, a) for a in options):
            running.add(family_of(name))
    assert running == {"lenet", "alexnet", "googlenet"}  # googlenet's only with its auxiliary heads
    assert documented_families() == running
