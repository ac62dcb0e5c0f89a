"""Options, per-checkpoint context and per-entry results shared by the classifier and translator exporters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from export import repository, tensorrt
from export.parity import ParityReport
from export.quantize import PRECISIONS
from kiln.labels import line_problem
from kiln.names import model_name

DEVICES = ("cpu", "gpu")
# What the parity checks and the int8 gates ran on when the run's own data could not be read: a
# classifier's images (``parity.data``), a translator's held-out sentences (``parity.beam_source``)
RANDOM_IMAGES_SOURCE, RANDOM_IDS_SOURCE = "random", "random ids"
# The int8 gate thresholds an int8 entry records in ``export``, by task (classifier, translator): a
# classifier's gate reads only the top-1 drop, a translator's only agreement and BLEU drop
INT8_GATE_SETTINGS = (repository.INT8_GATE_KEYS[:1], repository.INT8_GATE_KEYS[1:])


@dataclass(frozen=True)
class ExportOptions:
    """What to build; everything that changes the artifacts is recorded in kiln.json ``export``."""

    precisions: tuple[str, ...] = ("fp32",)
    int8_max_drop: float = 0.5  # classifiers: max validation top-1 drop (points)
    int8_min_agreement: float = 0.995  # translators: min share of sentences token-identical to fp32
    int8_max_bleu_drop: float = 0.2  # translators: max BLEU drop
    tensorrt: str = "auto"
    max_batch_size: int = 64
    force: bool = False
    beam_sentences: int = 200
    beam_size: int = 4
    device: str = "cpu"  # cpu | gpu: where the written configs place their instances
    cudnn_conv_algo_search: str = "EXHAUSTIVE"  # GPU configs only (docs/kiln-json.md)
    cuda_graphs: bool = True  # GPU configs only: each bucket replayed as a CUDA graph (docs/kiln-json.md)
    # the version directory to write (N, or "next": one above the highest present); None: version 1, as
    # export always wrote, replaced without asking while it is the entry's only version
    version: str | None = None
    replace_version: bool = False  # write over a version exported from another checkpoint
    # config.pbtxt's version_policy (latest:N, all, specific:V,...); None: the entry's own, else latest:1
    version_policy: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "precisions", tuple(self.precisions))  # any iterable, kept hashable
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; choose from {DEVICES}")
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            raise ValueError(f"unknown precision(s) {unknown}; choose from {PRECISIONS}")
        if "fp32" not in self.precisions:
            raise ValueError(
                "precisions must include fp32 (the reference every other precision is checked against)"
            )
        if self.max_batch_size < 1:
            raise ValueError(f"max batch size must be >= 1, got {self.max_batch_size}")
        if self.version is not None:
            object.__setattr__(self, "version", str(self.version))
            if self.version != "next" and not (self.version.isdigit() and int(self.version) >= 1):
                raise ValueError(f"version must be a number >= 1 or 'next', got {self.version!r}")
            if self.version != "next":
                object.__setattr__(self, "version", str(int(self.version)))
        if self.version_policy is not None:
            repository.parse_policy(self.version_policy)
        self._check_gates()

    def _check_gates(self) -> None:
        """Refuse gate settings that would measure nothing (no sentences) or no threshold at all."""
        if self.beam_sentences < 1:
            raise ValueError(f"beam sentences must be >= 1, got {self.beam_sentences}")
        if self.beam_size < 1:
            raise ValueError(f"beam size must be >= 1, got {self.beam_size}")
        if not 0.0 <= self.int8_min_agreement <= 1.0:
            raise ValueError(f"int8 min agreement must be in [0, 1], got {self.int8_min_agreement}")
        if not self.int8_max_drop >= 0.0:  # written so that NaN fails too
            raise ValueError(f"int8 max drop must be >= 0 points, got {self.int8_max_drop}")
        if not self.int8_max_bleu_drop >= 0.0:
            raise ValueError(f"int8 max BLEU drop must be >= 0, got {self.int8_max_bleu_drop}")


DEFAULT_OPTIONS = ExportOptions()


@dataclass(frozen=True)
class Entry:
    """A repository entry an exporter may build: its name and the precision its settings depend on."""

    name: str
    precision: str
    engine: bool = False  # a TensorRT plan: tied to the TensorRT version and GPU it is built with


@dataclass
class EntryResult:
    """One repository entry's outcome, as the closing summary table shows it."""

    entry: str
    precision: str
    status: str  # written | up to date | rejected | skipped | stale (an earlier run's, see pipeline)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    top1_agreement: float | None = None
    message: str = ""
    path: Path | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    version: str = repository.VERSION  # the version directory written (or found up to date)

    @classmethod
    def from_report(cls, entry: str, precision: str, report: ParityReport) -> EntryResult:
        agreement = report.metrics.get("top1_agreement", report.metrics.get("beam_agreement"))
        return cls(entry, precision, "", dict(report.outputs), agreement, parity=report.as_dict())


def entry_name(path: Path) -> str:
    """A Triton-safe entry name from a checkpoint's file name."""
    name = model_name(path.stem)
    if name is None:
        raise ValueError(f"{path}: cannot derive a model name from this file name")
    return name


def label_problem(labels: Any) -> str | None:
    """Why a checkpoint's ``labels`` cannot be written to labels.txt, or None (None or [] is fine: the
    classes are then named by index); each label is one line of it (:func:`kiln.labels.line_problem`)."""
    if labels is None:
        return None
    if not isinstance(labels, (list, tuple)):
        return f"'labels' must be a list of class names, got {type(labels).__name__}"
    for index, label in enumerate(labels):
        if not isinstance(label, str):
            return f"label {index} is {label!r}, not a string"
        why = line_problem(label)
        if why:
            return f"label {index} {label!r} {why}; rename that class and train again"
    return None


@dataclass
class ExportContext:
    """One checkpoint being exported: its content, rebuilt model, target repository and options."""

    path: Path
    ckpt: dict[str, Any]
    model: nn.Module
    sha256: str
    repository: Path
    options: ExportOptions
    name: str
    on_step: Callable[[str], None] | None = None
    accuracy_hook: Callable[[Any], Any] | None = None  # replaces a GateResult / TranslationGate
    validation: Any = None
    data_path: Any = None  # export's --data-path, when given: where the run's data is now

    @property
    def source(self) -> dict[str, str]:
        """The checkpoint an entry was written from, and the model name it was exported as (which owns
        the entry: ``export.entry_plan``; not always the file's name, where ``name=`` gave another)."""
        return {"path": str(self.path), "sha256": self.sha256, "model": self.name}

    def step(self, what: str) -> None:
        if self.on_step is not None:
            self.on_step(f"{self.name}: {what}")

    def settings(self, precision: str, engine: bool = False) -> dict[str, Any]:
        """Export settings an entry depends on (a TensorRT plan's ``engine``: its target too); a change
        makes the entry stale."""
        out: dict[str, Any] = {
            "export_version": repository.EXPORT_VERSION,
            "max_batch_size": self.options.max_batch_size,
        }
        if precision == "int8":  # its own task's gate only: another's threshold must not rebuild it
            for key in INT8_GATE_SETTINGS[self.ckpt.get("task") == "translate"]:
                out[key] = getattr(self.options, key)
        if self.options.device == "gpu":  # absent on CPU, so CPU entries written before stay up to date
            out["device"] = "gpu"
            out["cudnn_conv_algo_search"] = self.options.cudnn_conv_algo_search
            out["cuda_graphs"] = self.options.cuda_graphs
            if precision == "int8" and self.ckpt.get("task") != "translate":
                # its config has no TensorRT accelerator (triton_config.TRT_PRECISION_MODES): one written
                # with the INT8 accelerator, whose uint8 activations TensorRT clipped, is stale
                out["tensorrt_accelerator"] = False
        if engine:
            out["tensorrt"] = tensorrt.engine_target()
        if self.options.version_policy is not None:  # asked for: an entry written with another is rebuilt
            out["version_policy"] = self.options.version_policy
        if self.ckpt.get("task") == "translate":
            out.update(self._beam_settings(precision))
        return out

    def _beam_settings(self, precision: str) -> dict[str, int]:
        """A translator's beam settings where they differ from the defaults (so entries written at the
        defaults stay current): ``beam_size`` sizes the decoder's max_batch_size (max batch x beam), and
        with ``beam_sentences`` it decides the int8 gate, so a change of either must rebuild."""
        changed = {"beam_size": self.options.beam_size}
        if precision == "int8":
            changed["beam_sentences"] = self.options.beam_sentences
        return {k: v for k, v in changed.items() if v != getattr(DEFAULT_OPTIONS, k)}

    def needs_rebuild(self, entry: Entry) -> bool:
        """Stale unless written, or refused by its gate, from this checkpoint and these settings."""
        if self.options.force:
            return True
        if self.measured_without_data(entry):
            return True
        settings = self.settings(entry.precision, entry.engine)
        model = self.ckpt["model"]["name"]
        if repository.refusal(self.repository, entry.name, self.sha256, settings, model) is not None:
            return False
        return not repository.is_up_to_date(self.repository / entry.name, self.sha256, settings, model)

    def measured_without_data(self, entry: Entry) -> bool:
        """Whether ``--data-path`` now says where the data is and ``entry`` (written, or refused by its
        gate) was checked on random inputs for want of it: the warning of that run advised the flag,
        and the rerun must measure on the validation / test split, not find the entry current."""
        if self.data_path is None or not Path(self.data_path).exists():
            return False  # nothing there to measure on: checked again, they would be random once more
        refused = repository.read_refusal(self.repository, entry.name) or {}
        written = repository.read_kiln_json(self.repository / entry.name) or {}
        recorded = [meta.get("parity") or {} for meta in (refused, written)]
        return any(
            p.get("data") == RANDOM_IMAGES_SOURCE or p.get("beam_source") == RANDOM_IDS_SOURCE
            for p in recorded
        )

    def skipped(self, entry: Entry) -> EntryResult:
        """The result of an entry ``needs_rebuild`` found current (written, or refused by its gate)."""
        refused = repository.read_refusal(self.repository, entry.name)
        meta = refused or repository.read_kiln_json(self.repository / entry.name) or {}
        meta = meta if refused else repository.version_record(meta, repository.writing()) or meta
        parity = meta.get("parity", {})
        diffs = {k: v.get("max_abs_diff") for k, v in parity.get("outputs", {}).items()}
        agreement = parity.get("top1_agreement", parity.get("beam_agreement"))
        message = f"refused by its gate earlier ({refused['message']}); --force re-gates" if refused else ""
        path = None if refused else self.repository / entry.name
        return EntryResult(entry.name, entry.precision, "up to date", diffs, agreement, message, path)

    def refuse(self, entry: Entry, report: ParityReport, reason: str) -> EntryResult:
        """Remove a stale ``entry`` that its gate now refuses and remember why (see ``needs_rebuild``);
        an entry holding other versions than the one written keeps them, served, and loses only that
        version where it holds one (written by an earlier run: a stricter gate, or ``--data-path``, now
        refuses it; kept, it was served on as the newest)."""
        version = repository.writing()
        kept = [v for v in repository.entry_versions(self.repository / entry.name) if v != version]
        removed = False
        if not kept:
            repository.remove_entry(self.repository, entry.name)
        else:
            removed = repository.remove_version(self.repository, entry.name, version)
        result = EntryResult.from_report(entry.name, entry.precision, report)
        result.status, result.message = "rejected", reason
        if kept:
            done = "removed" if removed else "not written"
            result.message += f" (version {version} {done}; version(s) {', '.join(kept)} kept)"
        record = {"source_checkpoint": self.source, "export": self.settings(entry.precision, entry.engine)}
        record.update(precision=entry.precision, message=reason, parity=report.as_dict())
        repository.remember_refusal(self.repository, entry.name, record)
        return result

    def labels(self, classes: int) -> list[str]:
        labels = self.ckpt.get("labels") or [str(i) for i in range(classes)]
        if len(labels) != classes:
            raise ValueError(f"{self.path}: {len(labels)} labels for a model with {classes} classes")
        return list(labels)
