"""Contract 1: one ``.pt`` file per trained model, loadable with ``torch.load(weights_only=True)``.

Only plain containers, strings, numbers and tensors go in, so loading never unpickles a class and a
checkpoint alone rebuilds the model through the registry (no training script is imported).

Keys:
  format_version  int
  task            "classify" | "translate"
  model           {"name": str, "args": dict}        registry name + config dataclass fields; a model
                  registered outside Kiln's zoo adds "module": str, the module whose import registers
                  it, which ``rebuild_model`` names when the model is not registered (it imports no module itself)
  state_dict      the model's weights
  preprocessing   classify: {"input_size": [H, W], "channels": C, "mean": [...], "std": [...]}
  tokenizers      translate: {"source": json str, "target": json str, "shared": bool}
  labels          classify: class names in index order
  train_config    the CLI arguments / recipe that produced it; its "amp" is the precision the forward
                  trained in: "bf16" | "fp16" (autocast) | None (float32); the weights are float32 alike
                  (a classifier's of Kiln before both trainers took ``--amp bf16|fp16``: True | False)
  metrics         final metrics (e.g. val_accuracy, test_bleu)
  data            what it was trained on (dataset name, sizes, split seed)
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kiln.cli import listed
from training.models.registry import ModelModuleError, build_model, ensure_registered, get_entry

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "task", "model", "state_dict", "train_config", "metrics")


# what a refusal of a file that is no Kiln checkpoint asks for instead
WHAT_TO_GIVE = (
    "give the <name>.pt that python -m training.classify or training.translate writes, which records "
    "the model, its arguments and preprocessing beside the weights (training/checkpoint.py)"
)


class CheckpointError(ValueError):
    """A file is not a usable Kiln checkpoint; the message says why."""


def make_checkpoint(
    *,
    task: str,
    model_name: str,
    model_args: dict[str, Any],
    model: nn.Module,
    train_config: dict[str, Any],
    metrics: dict[str, Any],
    preprocessing: dict[str, Any] | None = None,
    tokenizers: dict[str, Any] | None = None,
    labels: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a checkpoint dict; the weights are copied to CPU so the file loads anywhere."""
    state = {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}
    ckpt: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "model": {"name": model_name, "args": _plain(model_args), **_module_of(model_name)},
        "state_dict": state,
        "train_config": _plain(train_config),
        "metrics": _plain(metrics),
    }
    if preprocessing is not None:
        ckpt["preprocessing"] = _plain(preprocessing)
    if tokenizers is not None:
        ckpt["tokenizers"] = _plain(tokenizers)
    if labels is not None:
        ckpt["labels"] = [str(label) for label in labels]
    if data is not None:
        ckpt["data"] = _plain(data)
    return ckpt


def _module_of(model_name: str) -> dict[str, str]:
    """``{"module": ...}`` for a model a user module registered (export imports it again), else nothing."""
    try:
        entry = get_entry(model_name)
    except KeyError:
        return {}
    return {} if entry.in_zoo else {"module": entry.module}


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename) so an interrupted save never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(path)
    try:
        try:
            torch.save(ckpt, tmp)
        except RuntimeError as exc:  # its writer's failure names neither the file nor the cause
            raise _write_failed(path, exc) from exc
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# Below this much free space, a failed write is taken for a full disk (the write itself filled it).
FULL_BELOW_BYTES = 1 << 20


def _write_failed(path: Path, exc: RuntimeError) -> OSError:
    """torch.save's ``RuntimeError`` ("[enforce fail at inline_container.cc:672] . unexpected pos 704
    vs 598" on a full disk) as an ``OSError`` naming the checkpoint and the free space left, measured
    while the partial file still holds what it took."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    full = free is not None and free < FULL_BELOW_BYTES
    shown = "" if free is None else f"; {free / 2**20:.1f} MiB free on its filesystem"
    reason = "No space left on device" if full else f"writing the checkpoint failed ({exc})"
    return OSError(errno.ENOSPC if full else errno.EIO, f"{reason}{shown}", str(path))


def _new_temp_file(path: Path) -> str:
    """A new empty ``.<name>.<hex>.tmp`` beside ``path``, with the mode any file this process makes gets
    (0o666 & ~umask) and so the checkpoint too: ``tempfile.mkstemp``'s 0600 would lock a group's
    export or bench out of it."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return str(tmp)
    raise FileExistsError(f"cannot create a temporary file beside {path}")


def check_archive(path: str | os.PathLike) -> None:
    """Refuse a zip archive (what ``torch.save`` writes) whose members fail their CRC-32: damaged bytes
    (a broken copy, a bad disk) that ``torch.load`` would read as weights without a word. Files that
    are not zip archives are left to ``torch.load`` to judge."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise CheckpointError(f"{path}: damaged: its zip archive cannot be read ({exc})") from exc
    if bad is not None:  # members sit under a folder named as the file was saved: name the member alone
        raise CheckpointError(
            f"{path}: damaged: {bad.partition('/')[2] or bad} does not match the checksum stored with it "
            "(a broken copy or disk); copy the file again or retrain"
        )


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load with ``weights_only=True`` after checking the archive's checksums (``check_archive``), and
    check the contract's required keys."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    check_archive(path)
    try:
        if zipfile.is_zipfile(path):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        else:  # a plain pickle (not torch.save's zip): torch warns in two lines before it is refused
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a Kiln checkpoint"
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path}: not a PyTorch checkpoint (torch.save writes a zip archive; this is not one, "
                "or a truncated one)"
            ) from exc
        reason = str(exc).rpartition("WeightsUnpickler error:")[2].strip() or str(exc)
        reason = reason.splitlines()[0].split(" was not an allowed")[0].strip()
        raise CheckpointError(
            f"{path}: refused by torch.load(weights_only=True) ({reason}): a Kiln checkpoint holds "
            "only plain containers, strings, numbers and tensors (training/checkpoint.py)"
        ) from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(ckpt).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing and {"model_name", "optimizer"} <= set(ckpt):
        raise CheckpointError(
            f"{path}: a training resume state (for --resume), not a checkpoint: give the checkpoint "
            "the run wrote beside it, <name>.pt"
        )
    if missing and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(
            f"{path}: a bare state_dict (weights only, as torch.save(model.state_dict()) writes), not a Kiln "
            f"checkpoint: {WHAT_TO_GIVE}"
        )
    if missing:
        has = listed(sorted(map(str, ckpt)), 8) or "none"
        raise CheckpointError(
            f"{path}: missing key(s) {missing} (its keys: {has}), not a Kiln checkpoint: {WHAT_TO_GIVE}"
        )
    version = ckpt["format_version"]
    if isinstance(version, bool) or not isinstance(version, (int, float)):  # a hand-made checkpoint's
        raise CheckpointError(
            f"{path}: format_version must be a number (this Kiln writes {FORMAT_VERSION}), got {version!r}"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version} is newer than this Kiln's ({FORMAT_VERSION}): export it with "
            "the Kiln that wrote it, or upgrade this one"
        )
    return ckpt


def rebuild_model(ckpt: dict[str, Any], *, eval_mode: bool = True) -> nn.Module:
    """Rebuild the registered architecture from a checkpoint and load its weights strictly."""
    name, args, module = ckpt["model"]["name"], ckpt["model"]["args"], ckpt["model"].get("module")
    if module is not None and not isinstance(module, str):
        raise CheckpointError(f"model 'module' must be a module name (str), got {module!r}")
    try:
        ensure_registered(name, module)
    except ModelModuleError as exc:
        raise CheckpointError(str(exc)) from exc
    entry = get_entry(name)
    if entry.task != ckpt["task"]:
        raise CheckpointError(
            f"model {name!r} is a {entry.task} model but the checkpoint says {ckpt['task']}"
        )
    model = build_model(name, **args)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.eval() if eval_mode else model


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare module behind DistributedDataParallel / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def _plain(value: Any) -> Any:
    """Convert tuples, paths and numpy scalars into what ``weights_only`` loading accepts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, torch.Tensor):
        return value.item()
    return value
