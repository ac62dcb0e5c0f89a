"""A training run's mixed precision, the same ``--amp [bf16|fp16]`` flag in both trainers
(``add_amp_flags``), on CUDA and on the CPU alike: ``Amp`` holds the forward's autocast dtype and the
gradient scaler fp16 needs, ``optimizer_step`` steps the optimizer and its schedule through that scaler,
and a resumed run continues it (``restore_scaler``). A precision the device cannot run is refused before
the data is read, and an op the CPU has no kernel of that precision for ends the run with one line
(``AmpUnsupported``), never training in float32 under ``--amp``'s name.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# What a bare ``--amp`` means: fp16, what the classifier's ``--amp`` switch trained with on CUDA before it
# took a precision (``make demo GPU=1`` and older command lines keep their meaning).
AMP_BARE = "fp16"
# oneDNN's words when it has no kernel of the autocast dtype for an op on this CPU (an LSTM under bf16 or
# fp16 on a CPU without AVX512-BF16/AMX): a RuntimeError and a traceback at the first step, else.
ONEDNN_NO_KERNEL = "could not create a primitive"
NATIVE_CPU = {"bf16": "AVX512-BF16 or AMX", "fp16": "AVX512-FP16 or AMX-FP16"}  # the ISA oneDNN runs it in


def add_amp_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, default: str, no_amp: str = "float32"
) -> None:
    """``--amp [bf16|fp16]`` (bare: ``AMP_BARE``) and ``--no-amp``, the same in both trainers; ``default``
    says what an unset flag means, ``no_amp`` what ``--no-amp`` is for (it stores False: float32 even
    where an unset ``--amp`` means another precision)."""
    parser.add_argument(
        "--amp",
        nargs="?",
        const=AMP_BARE,
        choices=sorted(AMP_DTYPES),
        help=f"mixed precision, on CUDA or the CPU: bf16 autocast, or fp16 autocast with a GradScaler; a bare "
        f"--amp is {AMP_BARE}. The CPU runs bf16 fast with AVX512-BF16 or AMX, correctly but slowly without; "
        f"a model with an op the CPU has no kernel of that precision for is refused at its first step "
        f"(default: {default})",
    )
    parser.add_argument("--no-amp", dest="amp", action="store_const", const=False, help=no_amp)


def amp_choice(amp: str | bool | None) -> str | None:
    """A run's precision as ``bf16``, ``fp16`` or None (float32) from a flag's value: False or None is
    float32, and True (the classifier's ``--amp`` switch before it took a precision, in a resume file
    or a config) is ``AMP_BARE``."""
    if amp is None or amp is False:
        return None
    if amp is True:
        return AMP_BARE
    if amp not in AMP_DTYPES:
        raise ValueError(f"unknown --amp {amp!r}; choose from {sorted(AMP_DTYPES)}")
    return amp


class AmpUnsupported(ValueError):
    """Autocast of the chosen dtype cannot run this model on this device: the run stops with one line
    naming ``--amp`` instead of training in float32 under its name, or ending in a traceback."""


@dataclass
class Amp:
    """Mixed precision of a run: autocast dtype (None = float32) and the gradient scaler fp16 needs."""

    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    device_type: str

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The forward's autocast; an op oneDNN has no kernel of this dtype for on this CPU ends the run
        with ``AmpUnsupported`` (``--amp``), not its traceback."""
        if self.dtype is None:
            yield
            return
        try:
            with torch.autocast(self.device_type, dtype=self.dtype):
                yield
        except RuntimeError as exc:
            if self.device_type != "cpu" or ONEDNN_NO_KERNEL not in str(exc):
                raise
            raise AmpUnsupported(no_cpu_kernel(self.dtype, str(exc))) from exc


def no_cpu_kernel(dtype: torch.dtype, error: str) -> str:
    """The line of a run whose model has an op this CPU runs in no ``dtype`` kernel (oneDNN's ``error``)."""
    flag = next(name for name, value in AMP_DTYPES.items() if value is dtype)
    return (
        f"--amp {flag}: this CPU has no {flag} kernel for an operation of this model under autocast "
        f"(oneDNN: {error.split('. ')[0].strip()}); train it here without --amp, or on CUDA, or on a CPU "
        f"with native {flag} instructions ({NATIVE_CPU[flag]})"
    )


def check_autocast(device_type: str, dtype: torch.dtype, flag: str) -> None:
    """Refuse an autocast ``dtype`` torch cannot run on ``device_type``: torch only warns and turns
    autocast off (the run would train in float32 under ``flag``'s name), or raises its own error
    (bf16 on a GPU older than Ampere)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.autocast(device_type, dtype=dtype):
                enabled = torch.is_autocast_enabled(device_type)
        except RuntimeError as exc:
            raise ValueError(f"{flag} on {device_type}: {exc}") from None
    if not enabled:
        said = " ".join(" ".join(str(w.message) for w in caught).split())
        raise ValueError(f"{flag}: torch's autocast does not run {dtype} on {device_type} ({said})")


def make_amp(amp: str | bool | None, device: torch.device) -> Amp:
    """``bf16`` or ``fp16`` autocast on ``device`` (fp16 with a GradScaler), or float32 (see
    ``amp_choice``); a dtype torch's autocast cannot run on that device is refused (``check_autocast``)."""
    choice = amp_choice(amp)
    dtype = AMP_DTYPES[choice] if choice else None
    if dtype is not None:
        check_autocast(device.type, dtype, f"--amp {choice}")
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    return Amp(dtype, scaler, device.type)


def optimizer_step(
    scaler: torch.amp.GradScaler,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    parameters: Iterable[torch.Tensor],
    clip_norm: float | None = None,
) -> bool:
    """Step the optimizer through ``scaler`` (the gradients of ``parameters`` unscaled before clipping
    them to ``clip_norm``), then the schedule; True when the optimizer stepped.

    An fp16 scaler skips the step when the scaled gradients overflowed (and halves its scale): the
    schedule then waits too, else each skipped step spent one of its values (warm-up steps, above all,
    as the first steps are the likely ones to overflow) and torch warned that ``lr_scheduler.step()``
    came before ``optimizer.step()``. Every rank of a DDP run holds the same all-reduced gradients, so
    all skip alike and their schedules stay in step.
    """
    if clip_norm:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(parameters, clip_norm)
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    stepped = scaler.get_scale() >= scale  # an overflow, and only an overflow, lowers the scale
    if stepped:
        scheduler.step()
    return stepped


def restore_scaler(scaler: torch.amp.GradScaler, state: dict) -> None:
    """Continue the interrupted run's gradient scaler. A run that trained without fp16 saved a disabled
    scaler's empty state, which an enabled one refuses (RuntimeError): turning ``--amp`` on when the
    run resumes (on a GPU, after starting on a CPU) starts the scaler from its initial scale instead."""
    if state or not scaler.is_enabled():
        scaler.load_state_dict(state)
    else:
        log.info("the resumed run trained without fp16 gradient scaling: its scaler starts afresh")
