"""A classifier run's passes over its data: a training epoch over this rank's shard (augmented, under
``--amp``'s autocast, the optimizer stepped through the fp16 scaler, the run stopped with
``TrainingDiverged`` at the step its loss goes NaN or inf on any rank) and an evaluation without
augmentation, each all-reduced over the ranks so that every rank decides on the same numbers.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from training.classify_run import Run
from training.data.images import ImageDataset, normalize
from training.data.loader import eval_batches, stream_seed, train_batches
from training.divergence import TrainingDiverged, divergence, divergence_advice
from training.mixed_precision import optimizer_step
from training.runtime import all_sum, check_all_trained, mean_over_ranks, show_progress

DROPOUT_SEED_OFFSET = 0x5EED_D20F  # keeps the dropout stream apart from the augmenter's
AUX_LOSS_WEIGHT = 0.3  # of each auxiliary classifier's loss, as in the GoogLeNet paper


def train_epoch(run: Run, epoch: int) -> tuple[float, float]:
    """One pass over this rank's shard; returns the all-reduced (mean loss, accuracy) over the split's
    examples, each counted once (the sampler's padding copies left out: see ``sampler_padding``), and
    over the batches whose loss was finite (a batch that overflowed fp16 was skipped, not trained on).
    Stops the run (``TrainingDiverged``) at the step its loss goes NaN or inf on any rank."""
    cfg, d = run.config, run.dist
    run.model.train()
    run.augmenter.train()
    seed = cfg.seed * 1_000_003 + epoch * d.world_size + d.rank
    run.augmenter.generator.manual_seed(stream_seed(seed))
    # Dropout draws from the global generator: seeded per epoch too (apart from the augmenter's), so a
    # resumed run draws the masks the uninterrupted run would have drawn from this epoch on.
    torch.manual_seed(stream_seed(seed + DROPOUT_SEED_OFFSET))
    batches = train_batches(
        run.train_ds, cfg.batch_size, epoch=epoch, seed=cfg.seed, rank=d.rank, world_size=d.world_size
    )
    total_loss, correct, seen, offset = 0.0, 0, 0, 0
    bar = tqdm(
        batches,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        leave=False,
        disable=not show_progress(cfg.progress, d),
    )
    for step, idx in enumerate(bar, 1):
        images = run.train_ds.images[idx].to(d.device).float() / 255.0  # (B, C, H, W) in [0, 1]
        labels = run.train_ds.labels[idx].to(d.device)  # (B,)
        x = normalize(run.augmenter(images), run.mean, run.std)  # (B, C, H, W)
        with run.amp.autocast():
            logits, losses = example_losses(run.model(x), labels, cfg.label_smoothing)  # (B, classes), (B,)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(losses.mean()).backward()
        if step == 1:
            check_all_trained(run.module, d)
        stepped = optimizer_step(
            run.scaler, run.optimizer, run.scheduler, run.model.parameters(), cfg.clip_grad_norm
        )
        loss = float(losses.detach().mean())
        reason = divergence(mean_over_ranks([loss], d)[0], stepped, run.scaler)
        if reason:
            raise diverged(run, f"at epoch {epoch + 1}/{cfg.epochs}, step {step}/{len(batches)}", reason)
        real = ~sampler_padding(len(run.train_ds), d.rank, d.world_size, offset, len(idx))  # (B,)
        offset += len(idx)
        if not math.isfinite(loss):  # a step the fp16 scaler skipped: the weights did not train on it
            continue
        on_device = real.to(d.device)
        total_loss += float(losses.detach()[on_device].sum())
        correct += int((logits.argmax(1) == labels)[on_device].sum())
        seen += int(real.sum())
        if seen:  # a rank's first batches may be all padding (a split smaller than the processes)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
    total_loss, correct, seen = all_sum([total_loss, correct, seen], d)
    return (total_loss / seen, correct / seen) if seen else (math.nan, math.nan)


def diverged(run: Run, where: str, reason: str) -> TrainingDiverged:
    """The error that stops a diverged run: where, why, and what to try."""
    cfg = run.config
    advice = divergence_advice(
        cfg.lr, "--clip-grad-norm", bool(cfg.clip_grad_norm), "--amp bf16" if cfg.amp == "fp16" else None
    )
    return TrainingDiverged(
        f"training diverged {where}: {reason}; stopped without writing a checkpoint from these weights; "
        f"{advice}"
    )


def sampler_padding(n: int, rank: int, world_size: int, start: int, count: int) -> torch.Tensor:
    """Bool[count]: which of positions ``start ..`` of this rank's epoch order are ``DistributedSampler``
    padding, the copies it appends so every rank gets as many examples. They are trained on like the
    rest, but the epoch's train metrics leave them out, so they average each example of the split once,
    as a single process's do (the sampler strides its padded order: rank r's position p is p*W + r)."""
    return rank + (start + torch.arange(count)) * world_size >= n


def example_losses(
    output: torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]], labels: torch.Tensor, smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits and each example's loss of a training forward (their mean is the training loss). A
    model with auxiliary classifiers (GoogLeNet's ``aux_logits``) returns ``(logits, [aux, ...])`` in
    training: each aux loss counts ``AUX_LOSS_WEIGHT``."""
    logits, aux = split_training_output(output)
    losses = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing, reduction="none")  # (B,)
    for extra in aux:
        losses = losses + AUX_LOSS_WEIGHT * F.cross_entropy(
            extra.float(), labels, label_smoothing=smoothing, reduction="none"
        )
    return logits, losses


def split_training_output(output: object) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(logits, [aux, ...])`` of a training forward: the logits tensor alone, ``(logits, [aux, ...])``
    as GoogLeNet's, or a tuple of tensors ``(logits, aux, ...)`` as torchvision's Inception returns. Any
    other form is refused in one line: else a model of the user's returning ``(logits, aux)`` had its aux
    rows taken for heads (a cross_entropy shape error), a dict an AttributeError traceback."""
    if isinstance(output, torch.Tensor):
        return output, []
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        parts = [part for part in output[1:] if part is not None]  # torchvision's (x, None): no aux
        aux = [t for part in parts for t in (part if isinstance(part, (list, tuple)) else [part])]
        if all(isinstance(t, torch.Tensor) and t.shape == output[0].shape for t in aux):
            return output[0], aux
    raise ValueError(
        f"the model's training forward returned {describe_output(output)}; a classifier returns its logits "
        "(B, num_classes), or with auxiliary heads (logits, [aux, ...]), each aux of the logits' shape "
        "(README, 'Your own classifier')"
    )


def describe_output(output: object) -> str:
    """A model output's form, for a refusal: its shapes, a dict's keys."""
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    if isinstance(output, dict):
        return f"a dict (keys {', '.join(map(repr, output))})"
    if isinstance(output, (list, tuple)):
        return f"a {type(output).__name__} of " + ", ".join(describe_output(part) for part in output)
    return f"a {type(output).__name__}"


def training_loss(
    output: torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]], labels: torch.Tensor, smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits and the (mean) loss of a training forward: see ``example_losses``."""
    logits, losses = example_losses(output, labels, smoothing)
    return logits, losses.mean()


@torch.no_grad()
def evaluate(run: Run, dataset: ImageDataset) -> tuple[float, float]:
    """All-reduced (mean cross-entropy, accuracy) on ``dataset``, without augmentation."""
    d = run.dist
    if d.world_size > 1:  # every rank evaluates the same weights and BatchNorm statistics
        for buffer in run.module.buffers():
            dist.broadcast(buffer, 0)
    run.module.eval()
    total_loss, correct = 0.0, 0
    for idx in eval_batches(dataset, 256, rank=d.rank, world_size=d.world_size):
        x = normalize(dataset.images[idx].to(d.device), run.mean, run.std)  # (B, C, H, W)
        labels = dataset.labels[idx].to(d.device)  # (B,)
        logits = run.module(x).float()  # (B, classes)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(1) == labels).sum())
    total_loss, correct = all_sum([total_loss, correct], d)
    return total_loss / len(dataset), correct / len(dataset)
