"""A classifier run's settings: ``TrainConfig``, every knob of ``python -m training.classify``, and the
family recipes its unset hyper-parameters come from (``RECIPES``), tuned so every family reaches >= 95%
validation accuracy on the bundled digits on a CPU; a classifier of the user's own, registered by a
module that ``--models-from`` imports, trains with ``DEFAULT_RECIPE``. Below the command
(``training.classify``), the resolution of a config (``training.classify_resolve``) and the run
(``training.classify_loop``), which all read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from training.data.augment import AugmentConfig, default_augment
from training.data.images import DataSpec
from training.models import get_entry


@dataclass(frozen=True)
class Recipe:
    """A family's default hyper-parameters; ``model_args`` only apply where the config has the field."""

    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "nesterov"
    lr: float = 0.05
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.05
    model_args: dict[str, Any] = field(default_factory=dict)


# Zoo family (registry-name prefix) -> recipe for 32x32 digits on a CPU; the longest matching prefix wins.
# fmt: off
RECIPES: dict[str, Recipe] = {
    "lenet": Recipe(epochs=20, optimizer="adamw", lr=3e-3, weight_decay=1e-4),
    "alexnet": Recipe(epochs=15, optimizer="adamw", lr=1e-3, weight_decay=1e-4,
                      model_args={"small_input": True, "width_mult": 0.5}),
    "vgg": Recipe(epochs=15, lr=0.05, model_args={"width_mult": 0.25}),
    # The ImageNet stems (stride 4 before the first block) cost 1/16 of the CIFAR ones and lose nothing
    # on digits, whose scans are 8x8 before upscaling.
    "nin": Recipe(epochs=15, optimizer="adamw", lr=2e-3, weight_decay=1e-4, model_args={"small_input": False}),
    "googlenet": Recipe(epochs=12, optimizer="adamw", lr=2e-3, weight_decay=0.05, model_args={"small_input": False}),
    "resnet": Recipe(epochs=15, optimizer="adamw", lr=2e-3, weight_decay=0.05, model_args={"small_input": False}),
    "densenet": Recipe(epochs=12, optimizer="adamw", lr=2e-3, weight_decay=0.05, model_args={"small_input": False}),
}
# fmt: on
# fmt: on
# Models without a family recipe (a user's own, --models-from): AdamW as most families here train, less
# sensitive than SGD at 0.05 to an architecture it was not tuned for.
DEFAULT_RECIPE = Recipe(epochs=15, optimizer="adamw", lr=2e-3, weight_decay=0.05)
DEFAULT_OUTPUT_DIR = "checkpoints"


@dataclass
class TrainConfig:
    """Every knob of a run; ``None`` means "from the recipe" (resolved by ``resolve``)."""

    model: str | None = None  # default: the --resume / --finetune file's model, else resnet18
    models_from: list[str] = field(default_factory=list)  # modules imported first: they register models
    # The data fields (DATA_FLAGS): None means DataSpec's default, or on --resume the interrupted run's.
    dataset: str | None = None
    data_path: str | None = None
    image_size: int | None = None
    channels: int | None = None
    val_fraction: float | None = None
    limit_train: int | None = None
    limit_val: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None
    label_smoothing: float | None = None
    clip_grad_norm: float | None = None
    # bf16 | fp16 (True: fp16, the switch it was) | False: float32; None: float32, or on --resume the
    # interrupted run's precision. ``resolve`` leaves bf16, fp16 or None (float32).
    amp: str | bool | None = None
    seed: int | None = None  # a data flag too: it draws the split, the initial weights and the order
    resume: str | None = None
    early_stopping: int | None = None  # None: off, or on --resume the interrupted run's patience
    finetune: str | None = None
    output_dir: str | None = None  # None: DEFAULT_OUTPUT_DIR, or on --resume the resume file's directory
    name: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    dist_timeout: float | None = None  # seconds a torchrun collective waits; None: torch's default
    augment: bool | None = None  # None: on, or on --resume the interrupted run's choice
    hflip: bool | None = None  # None: the dataset's default (on for CIFAR-10 only)
    debug_rank_hashes: str | None = None
    progress: bool = True


# Flags that choose the data (DataSpec's fields, --seed among them): a resumed run takes the interrupted
# run's when unset, from its resume file's ``data``; a value given that differs is refused before the
# data is read (classify_resume.check_resumable), since the run must go on with the same split and order.
DATA_FLAGS = tuple(f.name for f in dataclasses.fields(DataSpec))
DATA_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DataSpec)}


def family_of(model: str) -> str:
    """The recipe family of a registry name: its longest prefix in ``RECIPES`` (``resnet18`` -> ``resnet``);
    a model a user module registered is its own family, whatever its name starts with."""
    if not get_entry(model).in_zoo:
        return model
    matches = [family for family in RECIPES if model.startswith(family)]
    return max(matches, key=len) if matches else model


def recipe_for(model: str) -> Recipe:
    """The family's recipe, or ``DEFAULT_RECIPE`` for a family without one."""
    return RECIPES.get(family_of(model), DEFAULT_RECIPE)


def recipe_model_args(model: str) -> dict[str, Any]:
    """The recipe's constructor arguments that ``model``'s config takes (a family's recipe may set
    fields only some of its members have)."""
    fields = {f.name for f in dataclasses.fields(get_entry(model).config_cls)}
    return {k: v for k, v in recipe_for(model).model_args.items() if k in fields}


def augment_config(config: TrainConfig) -> AugmentConfig:
    """The run's augmentation: the dataset default, ``--hflip`` override, or none at all."""
    if not config.augment:
        return AugmentConfig.none()
    aug = default_augment(config.dataset)
    return aug if config.hflip is None else dataclasses.replace(aug, hflip=config.hflip)
