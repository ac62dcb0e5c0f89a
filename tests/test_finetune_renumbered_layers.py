"""Fine-tuning with another dropout keeps the pretrained head: ``mlp_head`` inserts a Dropout per hidden
layer only where dropout > 0, which renumbers the head's Linear layers (``classifier.1/3/5`` without,
``classifier.2/5/7`` with), and matching by name re-initialised them all."""

from __future__ import annotations

import torch

from training.classify_finetune import load_matching_weights, renumber_layers
from training.models import build_model


def _lenet(**args):
    torch.manual_seed(0)
    return build_model("lenet", num_classes=args.pop("num_classes", 10), in_channels=1, **args)


def _linears(module):
    return [m for m in module.classifier if isinstance(m, torch.nn.Linear)]


def test_a_head_with_dropout_added_starts_from_the_pretrained_layers():
    trained, target = _lenet(dropout=0.0), _lenet(dropout=0.3)
    with torch.no_grad():  # weights the fresh model cannot have by chance
        for p in trained.parameters():
            p.add_(1.0)
    state = renumber_layers(target.state_dict(), trained.state_dict())
    skipped = load_matching_weights(target, state)
    assert skipped == []
    for old, new in zip(_linears(trained), _linears(target), strict=True):
        assert torch.equal(old.weight, new.weight) and torch.equal(old.bias, new.bias)


def test_dropout_removed_and_a_new_class_count_keep_every_layer_but_the_last():
    trained, target = _lenet(dropout=0.5), _lenet(dropout=0.0, num_classes=3)
    state = renumber_layers(target.state_dict(), trained.state_dict())
    skipped = load_matching_weights(target, state)
    last = [n for n, m in target.classifier.named_children() if isinstance(m, torch.nn.Linear)][-1]
    assert skipped == [f"classifier.{last}.bias", f"classifier.{last}.weight"]
    for old, new in zip(_linears(trained)[:-1], _linears(target)[:-1], strict=True):
        assert torch.equal(old.weight, new.weight)


def test_layers_that_differ_in_kind_are_not_renamed():
    own = {"head.0.weight": torch.zeros(2, 2), "head.2.weight": torch.zeros(2, 2)}
    theirs = {"head.0.weight": torch.zeros(2, 2), "head.1.running_mean": torch.zeros(2)}
    assert renumber_layers(own, theirs) is theirs
    same = {"head.0.weight": torch.zeros(2, 2), "head.2.weight": torch.zeros(2, 2)}
    assert renumber_layers(own, same) is same  # already aligned: nothing to rename


def test_a_top_level_sequential_is_renumbered_too():
    own = {"0.weight": torch.zeros(1), "2.weight": torch.zeros(1)}
    theirs = {"0.weight": torch.ones(1), "1.weight": torch.ones(1) * 2}
    assert renumber_layers(own, theirs) == {"0.weight": torch.ones(1), "2.weight": torch.ones(1) * 2}
