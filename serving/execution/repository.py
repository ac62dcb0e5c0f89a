"""Read a Triton model repository (contract 2): its entries, the state of each and why one is not served.

The gateway only ever serves names found here, so a model name from a URL is looked up in a dict and
never joined into a path. A broken entry is logged and reported as not ready instead of stopping the
whole gateway (as Triton does). Reading an entry's files is in :mod:`serving.execution.entry_config`
(config.pbtxt, kiln.json), :mod:`serving.execution.label_files` and
:mod:`serving.execution.model_versions`.
"""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from kiln.versions import changes_since, current_version
from serving.errors import ModelNotFound
from serving.execution.base import ModelMetadata, TensorMeta
from serving.execution.config_json import config_json
from serving.execution.datatypes import CONFIG_TYPE_TO_DATATYPE
from serving.execution.entry_config import read_config, read_kiln
from serving.execution.label_files import entry_labels
from serving.execution.model_versions import (
    dangling_links,
    dangling_versions,
    is_version,
    is_version_name,
    link_target,
    select_versions,
)
from serving.execution.version_policy import policy_versions

log = logging.getLogger(__name__)

ONNX_PLATFORMS = ("onnxruntime_onnx", "onnxruntime")


@dataclass
class RepositoryEntry:
    """One model directory: its parsed config, Kiln metadata, labels and selected versions."""

    name: str
    path: Path
    config: model_config_pb2.ModelConfig
    kiln: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, list[str]] = field(default_factory=dict)  # output name -> labels
    versions: list[str] = field(default_factory=list)  # ascending, as selected by version_policy
    kiln_read: str = ""  # the kiln.json read with the config, as canonical JSON (``check_not_replaced``)

    @property
    def platform(self) -> str:
        return self.config.platform or self.config.backend

    @property
    def task(self) -> str:
        return str(self.kiln.get("task", ""))

    @property
    def max_batch_size(self) -> int:
        return int(self.config.max_batch_size)

    def resolve_version(self, version: str = "") -> str:
        """The version to serve: the latest when empty; unknown versions are a 404."""
        if not self.versions:
            raise ModelNotFound(f"model {self.name!r} has no servable version")
        if not version:
            return self.versions[-1]
        if version not in self.versions:
            raise ModelNotFound(f"model {self.name!r} {self._unserved(version)}; available: {self.versions}")
        return version

    def _unserved(self, version: str) -> str:
        """Why ``version`` is not served: none such, or a directory its ``version_policy`` leaves out
        (a rolled-back version still on disk: the policy, not the directory, is what to change), or one
        written since the repository was loaded that the policy would serve (a restart serves it)."""
        directory = self.path / version
        try:
            if not (is_version_name(version) and is_version(directory) and any(directory.iterdir())):
                return f"has no version {version!r}"
            found = [int(p.name) for p in self.path.iterdir() if is_version(p) and any(p.iterdir())]
        except OSError:  # gone, or unreadable, since it was looked at
            return f"has no version {version!r}"
        policy = self.config.version_policy
        chosen = policy_versions(
            found, policy.WhichOneof("policy_choice"), policy.latest.num_versions, policy.specific.versions
        )
        if int(version) in chosen:  # written since start-up (export --version next): the policy serves it
            return (
                f"has version {version!r} on disk, written since the gateway loaded the repository (it "
                "serves the versions it found at start): restart the gateway to serve it"
            )
        return (
            f"does not serve version {version!r}: its{_policy_text(self.config.version_policy)} leaves it out"
        )

    def model_file(self, version: str) -> Path:
        """The version's model file. An ONNX model's named file may be a directory holding a
        ``model.onnx`` (beside its external weights): Triton's onnxruntime backend loads that one.
        The name is joined under the version directory, an absolute one too, as Triton's ``JoinPath``
        joins it (``/srv/x.onnx`` is the version's ``srv/x.onnx``): Python's ``/`` took an absolute
        ``default_model_filename`` as is, so the gateway served a graph from outside the repository
        that Triton refuses to load."""
        filename = (self.config.default_model_filename or "model.onnx").lstrip("/")
        path = self.path / self.resolve_version(version) / filename
        return path / "model.onnx" if self.platform in ONNX_PLATFORMS and path.is_dir() else path

    def metadata(self, version: str = "") -> ModelMetadata:
        """Its KServe metadata as its config declares it (``version``, where given, must be one of its)."""
        if version:
            self.resolve_version(version)
        return ModelMetadata(self.name, list(self.versions), self.platform, self.inputs(), self.outputs())

    def inputs(self) -> list[TensorMeta]:
        return [self._meta(t) for t in self.config.input]

    def outputs(self) -> list[TensorMeta]:
        return [self._meta(t) for t in self.config.output]

    def config_dict(self) -> dict[str, Any]:
        """The config as Triton's HTTP endpoint shows it (proto field names)."""
        return config_json(as_triton_shows(self.config))

    def role(self, role: str) -> str | None:
        """The tensor name kiln.json gives a role ("images", "logits", ...), if any."""
        for name, tensor_role in self.kiln.get("roles", {}).items():
            if tensor_role == role:
                return name
        return None

    def _meta(self, tensor: Any) -> TensorMeta:
        dims = [int(d) for d in tensor.dims]
        shape = [-1, *dims] if self.max_batch_size > 0 else dims
        return TensorMeta(
            tensor.name,
            CONFIG_TYPE_TO_DATATYPE.get(model_config_pb2.DataType.Name(tensor.data_type), "BYTES"),
            shape,
        )


class Repository:
    """All entries of a model repository directory, loaded once at start-up."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {self.root} is not a directory")
        self.entries: dict[str, RepositoryEntry] = {}
        self.errors: dict[str, str] = {}
        for link in dangling_links(self.root):  # not listed below: ``is_dir()`` is False for them
            log.warning(
                "%s: a link to nothing (%s): not served", _shown(str(link)), _shown(link_target(link))
            )
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not (directory / "config.pbtxt").is_file():
                log.warning("%s", unconfigured(directory))
                continue
            if _shown(directory.name) != directory.name:  # every protocol's names are UTF-8 text
                shown = _shown(directory.name)
                self.errors[shown] = (
                    "its directory name is not valid UTF-8, which no protocol can name: rename it"
                )
                log.error("model %s: cannot load its repository entry: %s", shown, self.errors[shown])
                continue
            try:
                self.entries[directory.name] = load_entry(directory)
            except (OSError, ValueError, text_format.ParseError) as exc:
                log.error("model %s: cannot load its repository entry: %s", directory.name, exc)
                self.errors[directory.name] = str(exc)
        stale = sorted(name for name, entry in self.entries.items() if exported_before(entry))
        if stale:
            changes = sorted({c for name in stale for c in _changes(self.entries[name])})
            log.warning(
                "%s exported by an older Kiln: served as written, but without what export has done since "
                "(export version %s); `make export` (python -m export CHECKPOINTS --repository %s) rebuilds "
                "them (docs/kiln-json.md)",
                ", ".join(stale),
                "; ".join(changes),
                shlex.quote(str(self.root)),  # python -m export alone writes ./model_repository
            )

    def names(self) -> list[str]:
        return sorted([*self.entries, *self.errors])

    def get(self, name: str) -> RepositoryEntry:
        """The entry called ``name``; anything not listed in the repository is a 404."""
        entry = self.entries.get(name)
        if entry is not None:
            return entry
        if name in self.errors:
            raise ModelNotFound(f"model {name!r} failed to load: {self.errors[name]}")
        raise ModelNotFound(f"unknown model {name!r}; available: {_listed(self.names())}")

    def metadata(self, name: str, version: str = "") -> ModelMetadata:
        """The entry's metadata (its versions), as a backend answers it: a 404 as :meth:`get`'s."""
        return self.get(name).metadata(version)


# The backend Triton names for a platform's models, as it fills in an unset ``backend``
PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}
# The model file Triton names for a backend's models, as it fills in an unset ``default_model_filename``
MODEL_FILENAMES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "python": "model.py"}


def as_triton_shows(config: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
    """A copy of ``config`` with what Triton fills in before it shows one (its ``NormalizeModelConfig``):
    a platform's backend and model file name, the default ``version_policy`` (latest 1), a batching model's
    ``preferred_batch_size`` (``[max_batch_size]`` where none is given, the batches formed here too),
    pinned input and output memory, and each instance group's name (``<model>_<i>``) and count (1), so
    clients read the same fields from the gateway as from Triton (``config["instance_group"][0]["name"]``,
    ``config["version_policy"]["latest"]``)."""
    shown = model_config_pb2.ModelConfig()
    shown.CopyFrom(config)
    if not shown.backend:
        shown.backend = PLATFORM_BACKENDS.get(shown.platform, "")
    shown.default_model_filename = shown.default_model_filename or MODEL_FILENAMES.get(shown.backend, "")
    if not shown.HasField("version_policy"):
        shown.version_policy.latest.num_versions = 1
    batching = shown.dynamic_batching
    if shown.HasField("dynamic_batching") and not batching.preferred_batch_size and shown.max_batch_size > 0:
        batching.preferred_batch_size.append(shown.max_batch_size)
    if not shown.HasField("ensemble_scheduling"):
        for pinned in ("input_pinned_memory", "output_pinned_memory"):
            if not shown.optimization.HasField(pinned):
                getattr(shown.optimization, pinned).enable = True
    for i, group in enumerate(shown.instance_group):
        group.name = group.name or f"{shown.name}_{i}"
        group.count = max(1, group.count)
    return shown


NAMES_LISTED = 20  # a 404 names this many models at most: a large repository's would be kilobytes


def _listed(names: list[str]) -> str:
    """``names`` for an error message, the first :data:`NAMES_LISTED` of a long list and a count."""
    if len(names) <= NAMES_LISTED:
        return str(names)
    more = len(names) - NAMES_LISTED
    return f"{names[:NAMES_LISTED]} and {more} more (POST /v2/repository/index lists them all)"


def load_entry(directory: Path) -> RepositoryEntry:
    """Parse one model directory; its kiln.json first, so that ``check_not_replaced`` also tells a
    config.pbtxt read after an export replaced the entry."""
    kiln_path = directory / "kiln.json"
    kiln = read_kiln(kiln_path) if kiln_path.is_file() else {}
    config = read_config(directory)
    return RepositoryEntry(
        directory.name,
        directory,
        config,
        kiln,
        entry_labels(directory, config, kiln),
        select_versions(directory, config),
        _canonical(kiln) if kiln else "",
    )


def _canonical(kiln: dict[str, Any]) -> str:
    return json.dumps(kiln, sort_keys=True)


def check_not_replaced(entry: RepositoryEntry) -> None:
    """Raise once the entry's kiln.json differs from the one read with its config: an export replaced
    the entry after the gateway read it, so the files opened since (its graph, a translator's
    tokenizers) may be the new export's under the old config and kiln.json, a new decoder beside an old
    encoder. Call it after opening them: kiln.json lists every file's sha256, so an unchanged one
    means the files opened were the ones read with it. An entry without kiln.json is not checked."""
    read = getattr(entry, "kiln_read", "")  # a backend's own entry type may keep none
    if not read:
        return
    try:
        now = _canonical(read_kiln(entry.path / "kiln.json"))
    except (OSError, ValueError):
        now = ""
    if now != read:
        raise ValueError(
            f"{entry.path} was replaced while the gateway loaded it (an export wrote it meanwhile), so "
            "its files may not match the config and kiln.json read before: restart the gateway to "
            "serve the new export"
        )


def exported_before(entry: RepositoryEntry, version: int | None = None) -> bool:
    """Whether Kiln's export wrote ``entry`` at an export version below ``version``, by default the
    version that last changed what export writes for its model (``kiln.versions.CHANGED``). Foreign
    entries, without a kiln.json, never are."""
    written = _written_version(entry)
    if written is None:
        return False
    return written < (current_version(_model_name(entry)) if version is None else version)


def _written_version(entry: RepositoryEntry) -> int | None:
    written = entry.kiln.get("export", {}).get("export_version") if isinstance(entry.kiln, dict) else None
    return written if isinstance(written, int) else None


def _model_name(entry: RepositoryEntry) -> str | None:
    model = entry.kiln.get("model") if isinstance(entry.kiln, dict) else None
    return model.get("name") if isinstance(model, dict) else None


def _changes(entry: RepositoryEntry) -> list[str]:
    return changes_since(_written_version(entry) or 0, _model_name(entry))


def _policy_text(policy: Any) -> str:
    """A config's ``version_policy`` in words, with a leading space ("" where it sets none: latest 1)."""
    kind = policy.WhichOneof("policy_choice")
    if kind == "specific":
        return f" version_policy specific {sorted(policy.specific.versions)}"
    if kind == "latest":
        return f" version_policy latest num_versions {policy.latest.num_versions}"
    return " version_policy all" if kind == "all" else " default version_policy (latest 1)"


def version_problem(entry: RepositoryEntry) -> str:
    """Why ``entry`` has no version to serve ("" when it has one): the backend reports it as the
    model's load failure (a model that never loads must not leave the server ready)."""
    if entry.versions:
        return ""
    policy = entry.config.version_policy
    wanted = (
        f"{_policy_text(policy)} and" if policy.WhichOneof("policy_choice") in ("specific", "latest") else ""
    )
    found = sorted(int(p.name) for p in entry.path.iterdir() if is_version(p) and any(p.iterdir()))
    broken = [link_target(link) for link in dangling_versions(entry.path)]
    nowhere = f"; version links to nothing: {'; '.join(broken)}" if broken else ""
    return f"no version to serve in {entry.path}:{wanted} version directories holding files {found}{nowhere}"


def unconfigured(directory: Path) -> str:
    """The start-up warning for a directory without a config.pbtxt, which is not served. One with a
    version directory holding files is a model Triton would serve (its auto-complete writes the config
    from the model file, unless ``--disable-auto-complete-config``), so the warning says the gateway does
    not, and what to do. It is left out of the model list rather than listed as failed: a failed model
    keeps the gateway unready, and a repository Triton serves whole would then never take traffic."""
    shown = _shown(str(directory))
    if not _holds_versions(directory):
        return f"{shown}: no config.pbtxt, so not a model entry: not served"
    return (
        f"{shown}: no config.pbtxt, so not served: the gateway does not complete a config from the model "
        "file as Triton does by default; write one (a Triton serving the model shows its completed config "
        f"at /v2/models/{_shown(directory.name)}/config)"
    )


def _holds_versions(directory: Path) -> bool:
    """Whether ``directory`` has a version directory holding files, as far as it can be read."""
    try:
        return any(is_version(path) and any(path.iterdir()) for path in directory.iterdir())
    except OSError:  # a directory this user cannot read: not one it could serve either
        return False


def _shown(name: str) -> str:
    """``name`` (a file name) with bytes that are not UTF-8, which Python keeps as lone surrogates, as
    backslash escapes: what JSON, protobuf and a log line can carry (a surrogate made the model list,
    the repository index and their log lines fail)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
