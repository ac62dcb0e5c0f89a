"""A classifier started from another's weights (``--finetune``): the checkpoint's checks, before any data
is read (a classifier's, whose constructor arguments its model's config still has; with ``--resume``,
only the file the interrupted run started from), and the finetuned model: the head's rows follow the
class names (a class the checkpoint's labels have keeps its row, another's is new), and a first layer
of other channels is adapted (1 -> 3 spreads its weights over the three, 3 -> 1 sums them) rather than
trained from scratch.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.checkpoint import load_checkpoint
from training.classify_config import TrainConfig
from training.models import build_model, get_entry, make_config
from training.resume import load_resume

log = logging.getLogger("training.classify")  # the classifier's lines, whichever of its modules says them


def check_finetune_args(path: str, ckpt: dict[str, Any]) -> None:
    """Refuse a ``--finetune`` checkpoint whose constructor arguments its model's config no longer has
    (a file from another Kiln, or of a user model whose config changed since), naming them, before any
    data is read: else a ``TypeError`` traceback from the config."""
    name, args = ckpt["model"]["name"], ckpt["model"]["args"]
    fields = {f.name for f in dataclasses.fields(get_entry(name).config_cls)}
    unknown = sorted(set(args) - fields)
    if unknown:
        raise ValueError(
            f"--finetune {path}: its {name} arguments {unknown} are not fields of {name}'s config here "
            f"(accepted: {sorted(fields)}); a checkpoint written by another version of the model's code"
        )


def check_resume_finetune(config: TrainConfig) -> None:
    """Refuse ``--finetune`` with ``--resume`` unless it names the file the interrupted run started from: a
    resumed run continues from its resume state's weights, so another ``--finetune`` would be silently
    ignored (and recorded in the checkpoint as where the weights came from)."""
    if not (config.resume and config.finetune):
        return
    saved = (load_resume(config.resume, mmap=True).get("train_config") or {}).get("finetune")
    if saved and (saved == config.finetune or Path(saved).resolve() == Path(config.finetune).resolve()):
        return
    started = f"started from --finetune {saved}" if saved else "started without --finetune"
    raise ValueError(
        f"--finetune {config.finetune} with --resume {config.resume}: a resumed run continues from its "
        f"resume state's weights (that run {started}); drop --finetune to resume it, or --resume to "
        f"finetune {config.finetune} in a new run"
    )


def finetune_classifier(
    config: TrainConfig, num_classes: int, channels: int, classes: list[str] | None = None
) -> tuple[str, dict, nn.Module]:
    """The checkpoint's model for ``num_classes`` classes of ``channels``; with the data's ``classes``
    and the checkpoint's labels, its head's rows follow the class names (``match_head_rows``)."""
    ckpt = load_checkpoint(config.finetune)
    if ckpt["task"] != "classify":
        raise ValueError(f"--finetune {config.finetune}: a {ckpt['task']} checkpoint, not a classifier")
    name = ckpt["model"]["name"]
    if config.model not in (None, name):
        raise ValueError(f"--finetune checkpoint holds {name!r} but --model is {config.model!r}")
    args = {**ckpt["model"]["args"], "num_classes": num_classes, "in_channels": channels, **config.model_args}
    args = asdict(make_config(name, **args))
    module = build_model(name, **args)
    held = checkpoint_channels(config.finetune, ckpt)
    state = renumber_layers(module.state_dict(), ckpt["state_dict"])
    state = adapt_input_channels(module, state, held, channels)
    if classes is not None and ckpt.get("labels"):
        rows = class_rows(name, args, module)
        state = match_head_rows(module, state, rows, list(ckpt["labels"]), list(classes))
    try:
        skipped = load_matching_weights(module, state)
    except ValueError as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(config.model_args.items()))
        given = f" (--model-arg {shown} changes its shapes?)" if shown else ""
        raise ValueError(f"--finetune {config.finetune}: {exc}{given}") from None
    log.info("finetune from %s: new (re-initialised) tensors: %s", config.finetune, skipped or "none")
    return name, args, module


def renumber_layers(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the layers of each ``nn.Sequential`` renamed to this model's indices where only
    parameter-free layers moved them: a head built with ``dropout=0.3`` from one trained without has
    ``classifier.2/5/7`` where the checkpoint has ``classifier.1/3/5`` (Dropout takes an index), and
    matching by name re-initialised the whole pretrained head. The k-th layer holding tensors in the
    checkpoint's sequence becomes the k-th in the model's where both hold the same tensor names, layer
    for layer (a new class count's head keeps its other layers; shapes are matched afterwards, as
    always); any other difference leaves the sequence's names as they were."""
    ours, theirs = _indexed_layers(own), _indexed_layers(state)
    renamed = {}
    for prefix, old in theirs.items():
        new = ours.get(prefix)
        if new is None or list(new) == list(old) or len(new) != len(old):
            continue
        pairs = list(zip(old.items(), new.items(), strict=True))
        if all(a == b for (_, a), (_, b) in pairs):
            at = f"{prefix}." if prefix else ""
            renamed.update({f"{at}{i}.": f"{at}{j}." for (i, _), (j, _) in pairs if i != j})
    if not renamed:
        return state
    log.info(
        "finetune: layers renumbered by position: %s", ", ".join(f"{a}* -> {b}*" for a, b in renamed.items())
    )
    out = {}
    for key, value in state.items():
        head = min((a for a in renamed if key.startswith(a)), key=len, default=None)  # the outermost
        out[renamed[head] + key[len(head) :] if head else key] = value
    return out


def _indexed_layers(state: dict[str, torch.Tensor]) -> dict[str, dict[int, tuple[str, ...]]]:
    """Per ``nn.Sequential`` path (any depth): its children's indices (ascending) holding tensors, each
    with the names of every tensor under it from that child down (``classifier.1.weight`` ->
    ``{"classifier": {1: ("bias", "weight")}}``)."""
    layers: dict[str, dict[int, list]] = {}
    for key in state:
        parts = key.split(".")
        for at, part in enumerate(parts[:-1]):
            if part.isdigit():
                prefix, rest = ".".join(parts[:at]), ".".join(parts[at + 1 :])
                layers.setdefault(prefix, {}).setdefault(int(part), []).append(rest)
    return {p: {i: tuple(sorted(v)) for i, v in sorted(c.items())} for p, c in layers.items()}


def class_rows(name: str, args: dict[str, Any], module: nn.Module) -> dict[str, int]:
    """The tensors of ``module`` whose size follows its class count, each with the dimension that does:
    those whose shape differs in a model of one class more (built on the meta device: no memory), so
    a head of any form is found, a convolution's (NiN) or an auxiliary classifier's too."""
    wider = {**args, "num_classes": args["num_classes"] + 1}
    try:
        with torch.device("meta"):
            other = build_model(name, **wider).state_dict()
    except Exception:  # noqa: BLE001 - a user model whose construction reads values: build it for real
        other = build_model(name, **wider).state_dict()
    rows = {}
    for key, value in module.state_dict().items():
        wide = other.get(key)
        if wide is None or wide.ndim != value.ndim or wide.shape == value.shape:
            continue
        differ = [d for d in range(value.ndim) if wide.shape[d] != value.shape[d]]
        if len(differ) == 1 and value.shape[differ[0]] == args["num_classes"]:
            rows[key] = differ[0]
    return rows


def match_head_rows(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    rows: dict[str, int],
    held: list[str],
    classes: list[str],
) -> dict[str, torch.Tensor]:
    """``state`` with each class-sized tensor (``rows``) rebuilt for the data's ``classes`` by name: a
    class the checkpoint's labels (``held``) have keeps its trained row, the others keep this model's
    fresh ones. Kept by position, a head of the same class count gave a renamed or reordered class
    another class's row (a/b/c onto b/c/d: b started as a), and one of another count was all new."""
    if held == classes:
        return state
    own = module.state_dict()
    where = {label: i for i, label in enumerate(held)}
    pairs = [(i, where[label]) for i, label in enumerate(classes) if label in where]
    matched = {}
    for key, dim in rows.items():
        value = state.get(key)
        if value is None or value.ndim != own[key].ndim or value.shape[dim] != len(held):
            continue
        if value.shape[:dim] + value.shape[dim + 1 :] != own[key].shape[:dim] + own[key].shape[dim + 1 :]:
            continue
        out = own[key].detach().clone()
        if pairs:
            new, old = torch.tensor(pairs).T  # (2, shared classes): their rows here, and in the checkpoint
            out.index_copy_(dim, new, value.index_select(dim, old).to(out.dtype))
        matched[key] = out
    if matched:
        kept = [label for label in classes if label in where]
        fresh = [label for label in classes if label not in where]
        log.info(
            "finetune: head rows %s matched to the data's classes by name: kept %s; new %s",
            sorted(matched),
            kept or "none",
            fresh or "none",
        )
    return {**state, **matched}


def checkpoint_channels(path: str, ckpt: dict[str, Any]) -> int:
    """The channels a ``--finetune`` checkpoint's model takes: its preprocessing's, else its model's
    ``in_channels`` (a checkpoint written without preprocessing)."""
    channels = (ckpt.get("preprocessing") or {}).get("channels") or ckpt["model"]["args"].get("in_channels")
    if channels not in (1, 3):
        raise ValueError(
            f"--finetune {path}: the checkpoint records no channel count (preprocessing 'channels' or the "
            "model's 'in_channels'); pass --channels"
        )
    return int(channels)


def adapt_input_channels(
    module: nn.Module, state: dict[str, torch.Tensor], old: int, new: int
) -> dict[str, torch.Tensor]:
    """``state`` with each input-layer weight of ``old`` input channels brought to the ``new`` the
    model takes (those whose shapes differ only there), as timm's ``adapt_input_conv``: 1 -> 3 spreads
    the weights over three equal thirds, 3 -> 1 sums them, so a grey image replicated to RGB (or an RGB
    image whose channels are equal) gives the pretrained layer's response, instead of a new random layer."""
    if old == new:
        return state
    own = module.state_dict()
    adapted = {}
    for key, value in state.items():
        target = own.get(key)
        if target is None or value.ndim < 3:  # a convolution's (out, in, *kernel) weight
            continue
        if tuple(value.shape) == (target.shape[0], old, *target.shape[2:]) and target.shape[1] == new:
            adapted[key] = value.expand(-1, new, *value.shape[2:]) / new if old == 1 else value.sum(1, True)
    if adapted:
        log.info("finetune: input layer(s) %s adapted from %d to %d channels", sorted(adapted), old, new)
    return {**state, **adapted}


def load_matching_weights(module: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy every tensor whose name and shape match; return the names left at their fresh init. At least
    one convolution or linear weight must match: BatchNorm's step counters are scalars in any
    architecture, and a head's bias matches whenever the class count does, whatever the layers."""
    own = module.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not any(v.is_floating_point() and v.ndim >= 2 for v in matched.values()):
        raise ValueError(
            "none of the checkpoint's weights fits this model's shapes (another architecture?): it would "
            "train from scratch"
        )
    module.load_state_dict(matched, strict=False)
    return sorted(set(own) - set(matched))
