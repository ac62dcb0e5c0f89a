"""The translator training run behind ``python -m training.translate``: device, mixed precision and
torchrun data parallelism around the teacher-forced loop, validation, and the checkpoint.

Every rank builds the same corpus, tokenizers and initial weights from the seed, trains on its own
share of the length buckets (DistributedDataParallel: gloo on CPU, nccl on CUDA), decodes its share of
the validation split, and follows rank 0's decisions (stop early, out of time), so no rank ever waits
on a collective another has left, nor on one while rank 0 works alone: the ranks leave the process
group before rank 0's test evaluation and checkpoint, however long those take. After every epoch rank
0 writes the run's resume state (``training.translate_resume``), from which ``--resume``, and an
attempt torchrun restarts, continue. The command lives in ``training.translate``, the settings in
``training.translate_config``, the data, model and loss in ``training.translate_setup``.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from training.checkpoint import make_checkpoint, save_checkpoint
from training.data.text_batches import BucketedBatches, TranslationBatch
from training.data.tokenizer import TokenizerPair
from training.dist_timeout import collective_timeouts
from training.divergence import TrainingDiverged, divergence, divergence_advice, weights_divergence
from training.mixed_precision import make_amp, optimizer_step
from training.models import build_model
from training.optim import build_optimizer, build_scheduler, last_step_lr
from training.resume import check_world_size, load_resume, resume_left, start_run
from training.run_lock import run_lock
from training.runtime import (
    Dist,
    all_sum,
    any_rank,
    gather_shards,
    mean_over_ranks,
    rank_errors,
    read_on_every_rank,
    reports_errors,
    show_progress,
    teardown,
    weights_hash,
    wrap_ddp,
)
from training.tracking import EarlyStopping, plot_curves, read_metrics
from training.translate_config import TranslateConfig, model_config
from training.translate_resume import (
    EARLY_STOPPING,
    PERFECT,
    TIME_BUDGET,
    check_same_corpus,
    complete,
    corpus_digest,
    open_metrics,
    restarted,
    restore,
    resume_state,
    rng_state,
    save_resume,
)
from training.translate_setup import build_translator, loss_on, prepare_data
from training.translation_eval import evaluate, score_translations, translate_texts

log = logging.getLogger("training.translate")


class Trainer:
    """The loop: steps, periodic validation, early stopping, best weights, time budget, and the resume
    state after every epoch; ``resume``, an interrupted run's, is continued from where it was written."""

    def __init__(
        self, cfg: TranslateConfig, module: nn.Module, tokenizers, corpus, examples, d: Dist, resume=None
    ) -> None:
        self.cfg, self.module, self.tokenizers, self.corpus, self.dist = cfg, module, tokenizers, corpus, d
        self.digest = corpus_digest(corpus)
        if resume:  # before anything is written: the metrics file below starts at once
            check_same_corpus(cfg, resume, self.digest, main=d.is_main)
        sizes = (tokenizers.src_vocab_size, tokenizers.tgt_vocab_size)
        self.model_args = resume["model_args"] if resume else asdict(model_config(cfg, *sizes))
        self.model = wrap_ddp(module, d)  # what trains; ``module`` is what is evaluated and saved
        self.amp = make_amp(cfg.amp, d.device)
        self.batches = BucketedBatches(
            examples,
            batch_tokens=cfg.batch_tokens,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            rank=d.rank,
            world_size=d.world_size,
        )
        total = cfg.epochs * len(self.batches)
        self.opt = build_optimizer(module, "adam", cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = build_scheduler(
            self.opt, schedule=cfg.schedule, warmup_steps=cfg.warmup_steps, total_steps=total
        )
        self.stopper = EarlyStopping(cfg.patience, mode="max")
        self.metrics, self.records = open_metrics(cfg, d, resume)  # records: those in its file
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best = {"val_bleu": -1.0}
        self.step, self.start, self.train_time = 0, time.monotonic(), 0.0
        self.validated_step = -1  # the step whose weights were last validated
        self.start_epoch, self.finished = 0, False  # a resumed run's: where it goes on, or nothing left
        self.stop: str | None = None  # why the run stopped: rank 0's last validation, or the time budget
        self.carried = (0.0, 0.0)  # this rank's (loss, target tokens) of the last epoch trained
        self.skip = 0  # the batches of epoch ``start_epoch`` a run that stopped in it had trained
        self.line: tuple | None = None  # rank 0's last validation line, not yet logged (``announce``)
        if resume:
            restore(self, resume)
        self.deadline = self.start + 60.0 * cfg.time_budget if cfg.time_budget else float("inf")
        self.val_pairs = corpus.valid[: cfg.val_limit] if cfg.val_limit else corpus.valid

    def elapsed(self) -> float:
        """Seconds the run has trained, an interrupted run's included."""
        return time.monotonic() - self.start

    def validate(self, epoch: float, loss_sum: float, tokens: float) -> bool:
        """Every rank decodes its share of the validation split, rank 0 scores it all and keeps the best
        weights; True on every rank means stop. ``loss_sum`` over ``tokens`` target tokens is this rank's
        share of the training loss since the epoch began: the loss logged is the mean over every rank's
        tokens (not rank 0's alone, nor a mean of per-batch means)."""
        self.validated_step = self.step
        d = self.dist
        reason = weights_divergence(self.module)  # the same weights on every rank: all stop alike
        if reason:
            raise self.diverged(f"at epoch {epoch:.2f}, step {self.step}", reason)
        loss_sum, tokens = all_sum([loss_sum, tokens], d)
        train_loss = loss_sum / max(1.0, tokens)
        share = self.val_pairs[d.rank :: d.world_size]
        hyps = translate_texts(
            self.module, self.tokenizers, [s for s, _ in share], max_length=self.cfg.max_decode_length
        )
        hyps = gather_shards(hyps, d)
        stop = self._score(epoch, train_loss, hyps) if d.is_main else False
        return any_rank(stop, d)

    def _score(self, epoch: float, train_loss: float, hyps: list[str]) -> bool:
        scores = score_translations(hyps, [t for _, t in self.val_pairs])
        record = {
            "epoch": round(epoch, 3),
            "train_loss": round(train_loss, 4),
            "val_bleu": scores["bleu"],
            "val_exact_match": scores["exact_match"],
            "lr": last_step_lr(self.sched),
            "time_s": round(time.monotonic() - self.start, 1),
        }
        self.metrics.log(record)
        self.records += 1
        self.line = (  # logged by ``announce``, once the resume state holding this validation is written
            "epoch %.2f step %d loss %.4f val BLEU %.2f exact %.1f%%",
            epoch,
            self.step,
            train_loss,
            scores["bleu"],
            scores["exact_match"],
        )
        if scores["bleu"] > self.best["val_bleu"]:
            best_epoch = record["epoch"]  # as logged, so the checkpoint's best_epoch finds its record
            self.best = {
                "val_bleu": scores["bleu"],
                "val_exact_match": scores["exact_match"],
                "epoch": best_epoch,
            }
            self.best_state = copy.deepcopy(self.module.state_dict())
        early = self.stopper.step(scores["bleu"])
        self.stop = PERFECT if scores["exact_match"] >= 100.0 else EARLY_STOPPING if early else None
        return self.stop is not None

    def diverged(self, where: str, reason: str) -> TrainingDiverged:
        """The error that stops a diverged run: where, why, and what to try."""
        cfg = self.cfg
        fp16 = "--amp bf16" if cfg.amp == "fp16" else None
        advice = divergence_advice(cfg.lr, "--clip-norm", bool(cfg.clip_norm), fp16)
        return TrainingDiverged(
            f"training diverged {where}: {reason}; stopped without writing a checkpoint from these "
            f"weights; {advice}"
        )

    def train_step(self, batch: TranslationBatch) -> tuple[float, bool]:
        """One optimizer step on one batch, under the run's autocast (fp16 through its GradScaler): its
        loss, and whether the optimizer stepped (an fp16 overflow skips it)."""
        batch = batch.to(self.dist.device)
        with self.amp.autocast():
            loss = loss_on(self.model, batch, self.cfg.label_smoothing)
        self.opt.zero_grad(set_to_none=True)
        self.amp.scaler.scale(loss).backward()
        stepped = optimizer_step(
            self.amp.scaler, self.opt, self.sched, self.module.parameters(), self.cfg.clip_norm
        )
        self.step += 1
        return loss.item(), stepped

    def after_step(self, epoch: int, count: int, loss: float, stepped: bool) -> bool:
        """Stop a diverged run, every rank at the same step; True on every rank once out of time. One
        collective a step: the ranks' mean loss (NaN on all of them if on one) and the deadline."""
        mean_loss, late = mean_over_ranks([loss, float(time.monotonic() > self.deadline)], self.dist)
        reason = divergence(mean_loss, stepped, self.amp.scaler)
        if reason:
            where = f"at epoch {epoch + 1}/{self.cfg.epochs}, step {count}/{len(self.batches)}"
            raise self.diverged(where, reason)
        return late > 0

    def run(self) -> None:
        """Train the epochs left (none where the interrupted run had stopped), each followed by its
        validation (without ``--eval-every``) and its resume state; then validate the steps after the
        last ``--eval-every`` validation."""
        cfg = self.cfg
        loss_sum, tokens = self.carried
        for epoch in range(self.start_epoch, self.start_epoch if self.finished else cfg.epochs):
            stopped, loss_sum, tokens = self.train_epoch(epoch)
            if stopped:
                return
            stop = not cfg.eval_every and self.validate(epoch + 1, loss_sum, tokens)
            self.save_resume(epoch + 1, loss_sum, tokens)
            self.announce()  # after the save: a run stopped during it has not finished the epoch
            if stop:
                return
        if self.validated_step != self.step:  # the steps after the last --eval-every validation
            self.validate(cfg.epochs, loss_sum, tokens)
            self.announce()

    def announce(self) -> None:
        """Log rank 0's last validation line ("epoch N ... val BLEU ..."), where one is pending: called
        after the resume state that holds the validation is written, as the classifier logs its epoch
        after saving, so that a line saying an epoch ended is never followed by a run (Ctrl-C during
        a big model's save) that resumes before it."""
        if self.line is not None:
            line, self.line = self.line, None
            log.info(*line)

    def train_epoch(self, epoch: int) -> tuple[bool, float, float]:
        """One pass over this rank's batches, validating every ``--eval-every`` steps: whether the run
        stops in it (a validation said so, or the time budget is spent), and this rank's summed
        training loss and target tokens."""
        cfg = self.cfg
        self.model.train()
        count, loss_sum, tokens = 0, 0.0, 0
        if self.skip:  # the batches the run had trained in this epoch when it stopped (``restore``)
            (count, (loss_sum, tokens)), self.skip = (self.skip, self.carried), 0
        bar = tqdm(
            itertools.islice(self.batches, count, None),
            total=len(self.batches),
            initial=count,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            dynamic_ncols=True,
            disable=not show_progress(cfg.progress, self.dist),
        )
        for batch in bar:
            (loss, stepped), count = self.train_step(batch), count + 1
            out_of_time = self.after_step(epoch, count, loss, stepped)
            if math.isfinite(loss):  # else a step the fp16 scaler skipped: not trained on
                loss_sum, tokens = loss_sum + loss * batch.n_tokens, tokens + batch.n_tokens
            bar.set_postfix(loss=f"{loss_sum / max(1, tokens):.3f}")
            mid_eval = cfg.eval_every and self.step % cfg.eval_every == 0
            stop = (mid_eval or out_of_time) and self.validate(
                epoch + count / len(self.batches), loss_sum, tokens
            )
            if out_of_time and not stop:
                self.stop = TIME_BUDGET
            if stop or out_of_time:
                # Stopped early, perfect or out of time, mid-epoch or at its end: a resume state saying
                # so, so that --resume finds the run complete, and one given a larger --patience or
                # --time-budget goes on from this very batch.
                done = count % len(self.batches)
                self.save_resume(epoch if done else epoch + 1, loss_sum, tokens, batches=done)
            self.announce()  # a validation's line, after the resume state holding it (where one is)
            if out_of_time and not stop:
                log.info("time budget of %.1f min reached; keeping the best weights", cfg.time_budget)
            if stop or out_of_time:
                return True, loss_sum, tokens
        bar.close()
        return False, loss_sum, tokens

    def save_resume(self, epoch: int, loss_sum: float, tokens: float, batches: int = 0) -> None:
        """After ``epoch`` (and ``batches`` of the next, where a validation in it stopped the run), on
        every rank: the weights checked (none NaN or inf goes into a resume state), every rank's
        generators and the epoch's loss gathered; then rank 0 writes the resume state, having replaced
        an earlier run's files under this name if its first record has not."""
        reason = weights_divergence(self.module)  # the same weights on every rank: all stop alike
        if reason:
            raise self.diverged(f"in epoch {epoch}/{self.cfg.epochs}", reason)
        rngs = gather_shards([rng_state(self.dist.device)], self.dist)
        carried = all_sum([loss_sum, tokens], self.dist)
        if self.dist.is_main:
            started = time.perf_counter()
            self.metrics.begin()
            save_resume(resume_state(self, epoch, self.stop, rngs, carried, batches), self.cfg)
            log.debug("resume state of epoch %d written in %.3f s", epoch, time.perf_counter() - started)


def run(cfg: TranslateConfig) -> Path:
    """Train one resolved config end to end: every rank trains, leaves the process group (if any) with
    the others, then rank 0 alone evaluates on the test split and writes the checkpoint. An attempt
    torchrun restarted continues its job's last finished epoch (``restarted``). A collective that
    outlasts ``--dist-timeout`` ends it with ``CollectiveTimeout``. A resumed run with nothing to train
    whose checkpoint holds its result already writes nothing (``translate_resume.complete``)."""
    left = functools.partial(resume_left, cfg.output_dir, cfg.name, cfg.resume)
    with run_lock(cfg.output_dir, cfg.name, writer=reports_errors(os.environ)):
        with collective_timeouts(cfg.dist_timeout, cfg.device, left):
            d, cfg, path, done = start_run(cfg, restarted, complete)
            if done:
                return path
            trainer, model_args = _train(cfg, d)
            teardown(d)  # before rank 0's test evaluation, and not after an error: see teardown
        if d.is_main:
            _save(cfg, trainer, model_args, path)
    return path


def _train(cfg: TranslateConfig, d: Dist) -> tuple[Trainer, dict[str, Any]]:
    """Data, model and the training loop, on every rank (a resumed run's from its resume state, checked
    before the data is read); the trainer (with its best weights) and the model's constructor arguments."""
    resume = load_resume(cfg.resume, task="translate") if cfg.resume else None
    if resume:
        check_world_size(resume.get("world_size", d.world_size), d.world_size)
    torch.manual_seed(cfg.seed)  # the same corpus split, tokenizers and initial weights on every rank
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tokenizers = TokenizerPair.from_dict(resume["tokenizers"]) if resume else None
    corpus, tokenizers, examples = read_on_every_rank(lambda: prepare_data(cfg, tokenizers), d)
    model = _model(cfg, tokenizers, resume)
    model.to(d.device)
    torch.manual_seed(cfg.seed + d.rank)  # each rank its own dropout masks
    log.info(
        "%s: %d parameters on %s (%d process(es), amp %s), corpus %s",
        cfg.model,
        sum(p.numel() for p in model.parameters()),
        d.device,
        d.world_size,
        cfg.amp or "off",
        corpus.info,
    )
    trainer = Trainer(cfg, model, tokenizers, corpus, examples, d, resume)
    # a validation's line above the epoch's bar, not run on from it; a refusal of one rank's printed by it
    with logging_redirect_tqdm(), rank_errors(d):
        trainer.run()
    trainer.train_time = trainer.elapsed()
    if cfg.debug_rank_hashes:  # the last trained weights, which DDP keeps equal on every rank
        Path(cfg.debug_rank_hashes).mkdir(parents=True, exist_ok=True)
        Path(cfg.debug_rank_hashes, f"rank{d.rank}.sha256").write_text(weights_hash(model), encoding="utf-8")
    return trainer, trainer.model_args


def _model(cfg: TranslateConfig, tokenizers: TokenizerPair, resume: dict | None) -> nn.Module:
    """A new translator for ``tokenizers``, or the interrupted run's, rebuilt with its weights."""
    if resume is None:
        return build_translator(cfg, tokenizers)[0]
    model = build_model(resume["model_name"], **resume["model_args"])
    model.load_state_dict(resume["model"])
    return model


def _save(cfg: TranslateConfig, trainer: Trainer, model_args: dict[str, Any], path: Path) -> Path:
    """The best weights' test BLEU (beam and greedy), then the checkpoint (contract 1) and the curves."""
    model, tokenizers, corpus = trainer.module, trainer.tokenizers, trainer.corpus
    if trainer.best_state is not None:
        model.load_state_dict(trainer.best_state)
    max_len = cfg.max_decode_length
    test = evaluate(model, tokenizers, corpus.test, beam=cfg.test_beam, max_length=max_len)
    greedy = evaluate(model, tokenizers, corpus.test, beam=1, max_length=max_len)
    metrics = {
        "best_val_bleu": trainer.best["val_bleu"],
        "best_val_exact_match": trainer.best.get("val_exact_match"),
        "best_epoch": trainer.best.get("epoch"),
        "steps": trainer.step,
        "train_time_s": round(trainer.train_time, 1),
        "test_bleu": test["bleu"],
        "test_exact_match": test["exact_match"],
        "test_beam": cfg.test_beam,
        "test_bleu_greedy": greedy["bleu"],
        "test_exact_match_greedy": greedy["exact_match"],
        "total_time_s": round(time.monotonic() - trainer.start, 1),
        "device": str(trainer.dist.device),
        "world_size": trainer.dist.world_size,
    }
    data = {
        **corpus.info,
        "vocab_size": {"source": tokenizers.src_vocab_size, "target": tokenizers.tgt_vocab_size},
    }
    ckpt = make_checkpoint(
        task="translate",
        model_name=cfg.model,
        model_args=model_args,
        model=model,
        train_config=asdict(cfg),
        metrics=metrics,
        tokenizers=tokenizers.to_dict(),
        data=data,
    )
    save_checkpoint(ckpt, path)
    # beside the checkpoint and the metrics, as the classifier's: the checkpoint's folder joined with the
    # --name again doubled a --name's folder (--name runs/a wrote runs/runs/a.curves.png)
    curves = Path(cfg.output_dir) / f"{cfg.name}.curves.png"
    plot_curves(read_metrics(trainer.metrics.path), curves, title=cfg.name)
    log.info("saved %s: test BLEU %.2f, exact match %.1f%%", path, test["bleu"], test["exact_match"])
    return path
