"""Read a Triton model repository (contract 2): config.pbtxt, kiln.json, labels and version directories.

The gateway only ever serves names found here, so a model name from a URL is looked up in a dict and
never joined into a path. A broken entry is logged and reported as not ready instead of stopping the
whole gateway (as Triton does).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from kiln.versions import changes_since, current_version
from serving.errors import BadRequest, ModelNotFound
from serving.execution.base import ModelMetadata, TensorMeta
from serving.execution.batch_policy import batching_problems
from serving.execution.config_json import config_json
from serving.execution.datatypes import CONFIG_TYPE_TO_DATATYPE

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
            raise ModelNotFound(f"model {self.name!r} has no version {version!r}; available: {self.versions}")
        return version

    def model_file(self, version: str) -> Path:
        filename = self.config.default_model_filename or "model.onnx"
        return self.path / self.resolve_version(version) / filename

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
                "(export version %s); `make export` rebuilds them (docs/kiln-json.md)",
                ", ".join(stale),
                "; ".join(changes),
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


# The backend Triton names for a platform's models, as it fills in an unset ``backend``
PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}


def as_triton_shows(config: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
    """A copy of ``config`` with what Triton fills in before it shows one: a platform's backend, and
    each instance group's name (``<model>_<i>``) and count (1), so clients read the same fields
    from the gateway as from Triton (``config["instance_group"][0]["name"]``)."""
    shown = model_config_pb2.ModelConfig()
    shown.CopyFrom(config)
    if not shown.backend:
        shown.backend = PLATFORM_BACKENDS.get(shown.platform, "")
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
    """Parse one model directory."""
    config_path = directory / "config.pbtxt"
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(config_path.read_text(), config)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config_path}: not a valid Triton config.pbtxt: {exc}") from None
    if not config.name:
        config.name = directory.name
    if config.name != directory.name:
        raise ValueError(
            f"config.pbtxt names the model {config.name!r} but its directory is {directory.name!r}"
        )
    problems = config_problems(config)
    if problems:
        raise ValueError(f"{config_path}: {'; '.join(problems)} (Triton refuses to load it too)")
    kiln_path = directory / "kiln.json"
    kiln = _read_kiln(kiln_path) if kiln_path.is_file() else {}
    return RepositoryEntry(
        directory.name,
        directory,
        config,
        kiln,
        _entry_labels(directory, config, kiln),
        _select_versions(directory, config),
    )


def _entry_labels(
    directory: Path, config: model_config_pb2.ModelConfig, kiln: dict[str, Any]
) -> dict[str, list[str]]:
    """Each output's labels: its ``label_filename`` (a file Triton cannot read fails the load, as it
    fails Triton's), else kiln.json's ``labels`` file for every output (Triton never reads it, so one
    the gateway cannot read only leaves the classes unnamed, with a warning)."""
    labels = {}
    for output in config.output:
        if output.label_filename:
            labels[output.name] = _read_labels(directory, output.label_filename, f"output {output.name!r}")
            _check_label_count(directory, output.label_filename, labels[output.name], [output])
    named = kiln.get("labels")
    if labels or not isinstance(named, str) or not (directory / named.lstrip("/")).is_file():
        return labels
    try:
        shared = _read_labels(directory, named, "kiln.json")
    except ValueError as exc:
        log.warning("model %s: %s: its classes are answered by index", directory.name, exc)
        return labels
    _check_label_count(directory, named, shared, list(config.output))
    return {output.name: shared for output in config.output}


WILDCARD = -1  # a variable-size dimension


def config_problems(config: model_config_pb2.ModelConfig) -> list[str]:
    """What Triton's model-config validation refuses in ``config``, each naming its field: a hand edit
    that Triton would not load (a zero dimension, a preferred batch size past ``max_batch_size``) is
    refused at load instead of loading READY and failing every request, or batching otherwise."""
    batching = int(config.max_batch_size)
    problems = [] if batching >= 0 else [f"max_batch_size must be 0 or more, got {batching}"]
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for tensor in tensors:
            problems += _tensor_problems(kind, tensor, batching)
    if config.HasField("dynamic_batching"):
        problems += batching_problems(config.dynamic_batching, batching)
    return problems


def _tensor_problems(kind: str, tensor: Any, max_batch_size: int) -> list[str]:
    """Triton's ``ValidateIOShape``: a name, a data_type, dims of sizes >= 1 or -1, and a reshape of
    the same element count."""
    where = f"{kind} {tensor.name!r}"
    if not tensor.name:
        return [f"an {kind} has no name"]
    problems = []
    if tensor.data_type == model_config_pb2.TYPE_INVALID:
        problems.append(f"{where} must specify data_type")
    dims = [int(d) for d in tensor.dims]
    if not dims:
        problems.append(f"{where} must specify dims")
    if any(d < 1 and d != WILDCARD for d in dims):
        problems.append(f"{where} dims {dims}: each must be >= 1, or -1 for a variable size")
    if not tensor.HasField("reshape"):
        return problems
    shape = [int(d) for d in tensor.reshape.shape]
    if not shape and max_batch_size == 0:
        problems.append(
            f"{where} cannot have an empty reshape in a model without batching (max_batch_size 0)"
        )
    elif any(d < 1 and d != WILDCARD for d in shape):
        problems.append(f"{where} reshape {shape}: each must be >= 1, or -1 for a variable size")
    elif _trunks(dims) != (_trunks(shape) if shape else [1]):  # an empty reshape holds one element
        problems.append(f"{where}: dims {dims} and reshape {shape} hold different numbers of elements")
    return problems


def _trunks(dims: list[int]) -> list[int]:
    """The element counts between variable-size dimensions ([2, 4, -1, 6] -> [8, 6]): a reshape keeps them."""
    counts = [1]
    for dim in dims:
        if dim == WILDCARD:
            counts.append(1)
        else:
            counts[-1] *= dim
    return counts


# The kiln.json fields the gateway reads as JSON objects (docs/kiln-json.md); the others it reads
# tolerate any type (a ``labels`` that is no file name is ignored, a non-string ``task`` serves nothing).
KILN_OBJECTS = ("roles", "preprocessing", "export")


def _read_kiln(path: Path) -> dict[str, Any]:
    """Parse a kiln.json; a file that is no JSON object, or a field of the wrong type, names itself
    (instead of an AttributeError stopping the gateway at start-up or a 500 at a request)."""
    try:
        kiln = json.loads(path.read_text())
    except ValueError as exc:  # invalid JSON or not UTF-8
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(kiln, dict):
        raise ValueError(f"{path}: must hold a JSON object, not a {type(kiln).__name__}")
    for key in KILN_OBJECTS:
        if key in kiln and not isinstance(kiln[key], dict):
            raise ValueError(f"{path}: {key!r} must be a JSON object, got {kiln[key]!r}")
    return kiln


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


def _label_path(directory: Path, filename: str) -> Path:
    """Where Triton finds a labels file: joined under the model directory, even an absolute name (so
    ``/etc/hostname`` is the model directory's ``etc/hostname``); ``..`` and links are followed, as
    Triton 2.51 follows them (it loads a model whose labels are ``../other/labels.txt``)."""
    return directory / filename.lstrip("/")


def _read_labels(directory: Path, filename: str, owner: str) -> list[str]:
    """A labels file as Triton's ``LabelProvider`` reads it: a label per line, lines ended by line
    feeds alone, each kept as written (a blank line is a class without a name and keeps its index; a
    carriage return, U+2028 or U+0085 stays inside its label), so the gateway names each class as
    Triton does; what is served otherwise than its writer likely meant is logged."""
    path = _label_path(directory, filename)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"label file {str(path)!r} for {owner} cannot be read: {exc.strerror}") from None
    text = data.decode("utf-8", errors="replace")
    labels = text.split("\n")
    if labels[-1] == "":  # the last line's \n ends it; it starts no label
        labels.pop()
    notes = _label_notes(labels, data)
    if notes:
        log.warning(
            "model %s: %s, read a line a label as Triton reads it: %s", directory.name, path, "; ".join(notes)
        )
    return labels


def _label_notes(labels: list[str], data: bytes) -> list[str]:
    """What in a labels file is served otherwise than a reader of the file would guess."""
    notes = []
    blank = [i for i, label in enumerate(labels) if not label]
    if blank:
        notes.append(f"the lines of classes {_few(blank)} are blank: those classes have no name")
    returns = [i for i, label in enumerate(labels) if label.endswith("\r")]
    if returns:
        notes.append(
            f"the labels of classes {_few(returns)} end in a carriage return (Windows line ends), "
            "which stays in the label: save the file with \\n line ends"
        )
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        bad = [i for i, label in enumerate(labels) if "\ufffd" in label]
        notes.append(
            f"the labels of classes {_few(bad)} are not UTF-8: their stray bytes are served as U+FFFD"
        )
    return notes


def _few(indices: list[int], shown: int = 5) -> str:
    """``indices`` for a log line: the first few and a count."""
    listed = ", ".join(map(str, indices[:shown]))
    return listed if len(indices) <= shown else f"{listed} and {len(indices) - shown} more"


def _check_label_count(directory: Path, filename: str, labels: list[str], outputs: list[Any]) -> None:
    """Warn once when a labels file's lines do not number an output's classes (its last fixed dim):
    the classes past the file are answered by index, and ``GET /v1/models`` counts the lines."""
    classes = sorted({int(o.dims[-1]) for o in outputs if o.dims and o.dims[-1] > 0})
    if classes and len(labels) not in classes:
        log.warning(
            "model %s: %s holds %d labels (a line each, blank ones included, as Triton reads it) but "
            "output %s has %s classes: classes past the file are answered by index, labels past the "
            "classes are unused",
            directory.name,
            directory / filename,
            len(labels),
            ", ".join(repr(o.name) for o in outputs if o.dims and o.dims[-1] > 0),
            " or ".join(map(str, classes)),
        )


def _select_versions(directory: Path, config: model_config_pb2.ModelConfig) -> list[str]:
    """Version directories filtered by the config's version_policy (default: latest 1). As Triton,
    only plain numbers name versions (``01`` or ``v2`` is ignored, with a warning: ``01`` would be
    version 1 at a path that does not exist); an entry left with none is :func:`version_problem`'s."""
    found, ignored = [], []
    for path in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _is_version(path):
            if any(path.iterdir()):
                found.append(int(path.name))
        else:
            ignored.append(path.name)
    found.sort()
    if ignored:
        log.warning(
            "model %s: directories %s in %s are not version numbers (plain digits, no leading zero): ignored",
            directory.name,
            ignored,
            directory,
        )
    policy = config.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        chosen = found
    elif kind == "specific":
        chosen = [v for v in found if v in set(policy.specific.versions)]
        missing = sorted(set(policy.specific.versions) - set(found))
        if missing:
            log.warning(
                "model %s: version_policy specific names versions %s that have no directory holding "
                "files in %s: not served",
                directory.name,
                missing,
                directory,
            )
    else:  # as Triton: latest { num_versions: 0 } selects none (the policy's default is latest 1)
        count = policy.latest.num_versions if kind == "latest" else 1
        chosen = found[-count:] if count > 0 else []
    return [str(v) for v in chosen]


def version_problem(entry: RepositoryEntry) -> str:
    """Why ``entry`` has no version to serve ("" when it has one): the backend reports it as the
    model's load failure (a model that never loads must not leave the server ready)."""
    if entry.versions:
        return ""
    policy = entry.config.version_policy
    kind = policy.WhichOneof("policy_choice")
    wanted = {
        "specific": f" version_policy specific {sorted(policy.specific.versions)} and",
        "latest": f" version_policy latest num_versions {policy.latest.num_versions} and",
    }.get(kind or "", "")
    found = sorted(int(p.name) for p in entry.path.iterdir() if _is_version(p) and any(p.iterdir()))
    return f"no version to serve in {entry.path}:{wanted} version directories holding files {found}"


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
        return any(_is_version(path) and any(path.iterdir()) for path in directory.iterdir())
    except OSError:  # a directory this user cannot read: not one it could serve either
        return False


def _is_version(path: Path) -> bool:
    """A version directory: plain digits, no leading zero (as Triton reads them)."""
    name = path.name
    return path.is_dir() and name.isascii() and name.isdigit() and str(int(name)) == name


MAX_VERSION = 2**63 - 1  # Triton's versions are int64: a larger number is a 400 there, never a version


def parse_version(version: str) -> str:
    """A requested version (an HTTP path segment, a gRPC ``version`` field) in the form versions are
    listed in: digits only, read as the number Triton reads (``01`` is version 1, ``00`` version 0,
    which no model has); anything else, or a number past int64, is a 400."""
    if not version:
        return version
    number = version.lstrip("0") or "0"  # a bounded length before int(): Python refuses 4 301 digits
    if not (number.isascii() and number.isdigit()) or len(number) > 19 or int(number) > MAX_VERSION:
        raise BadRequest(
            f"model version must be a positive integer, at most {MAX_VERSION}, got {version[:40]!r}"
        )
    return number


def _shown(name: str) -> str:
    """``name`` (a file name) with bytes that are not UTF-8, which Python keeps as lone surrogates, as
    backslash escapes: what JSON, protobuf and a log line can carry (a surrogate made the model list,
    the repository index and their log lines fail)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
