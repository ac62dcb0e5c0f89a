"""Write Triton model repository entries atomically, with their kiln.json (docs/kiln-json.md).

An entry is staged in a temp directory and renamed into place, so a failure never leaves a
half-written entry; an existing entry is exchanged with its replacement in one ``renameat2`` call where
Linux allows it, so a Triton or gateway polling the repository never finds it missing (``_swap_in``). Staging happens beside the repository, in ``.<repository>.kiln-staging/``
(``staging_area``), not inside it: Triton takes every subdirectory of its repository for a model, hidden
ones too, so a staging directory there fails its load (and a Triton start with it). A directory that
exists without a Kiln ``kiln.json`` is foreign and is never overwritten. Staging directories are named
after the host and process that made them (``.<entry>.tmp-<host>-<pid>-<hex>``), so those of a killed
export are recognised and swept by the next export into the repository (``sweep_all_leftovers``).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import errno
import functools
import glob
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kiln.cli import listed
from kiln.versions import EXPORT_VERSION, current_version  # noqa: F401 - export writes it (results.settings)
from training.checkpoint import file_sha256

log = logging.getLogger(__name__)

KILN_FORMAT = 1
VERSION = "1"  # the version directory export writes unless told another (``--version``, ``writing_version``)
DEFAULT_POLICY = "latest:1"  # the version_policy a new entry gets unless told another: Triton's default
REFUSALS = ".kiln_refused.json"  # entries refused by their gate, so an unchanged checkpoint is not re-gated
LEFTOVER_MAX_AGE_S = 24 * 3600  # a leftover whose owner cannot be checked is swept once this old
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"  # in staging names
STAGING_SUFFIX = ".kiln-staging"  # .<repository name><this>: the staging area beside the repository
_AREAS: dict[Path, Path] = {}  # repository -> its staging area, probed once per process
# entries staged inside ``written_together``, as (staging directory, final path), swapped in at its end
_TOGETHER: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar(
    "_TOGETHER", default=None
)
# the version ``write_entry`` writes and the version_policy it gives the entry (``writing_version``)
_WRITING: contextvars.ContextVar[tuple[str, str | None]] = contextvars.ContextVar(
    "_WRITING", default=(VERSION, None)
)
# what a version written beside others must share with them: the one config.pbtxt and kiln.json serve all
INTERFACE_KEYS = (
    "task", "platform", "inputs", "outputs", "roles", "preprocessing", "labels", "max_batch_size",
    "step_spec", "encoder", "decoder", "source_tokenizer", "target_tokenizer",
)  # fmt: skip
# what each version's own graph applies (export/onnx_export.py ClassifierGraph), read by no server: a
# model retrained on new data (other channel statistics) is served beside the old one as it is
IN_GRAPH_KEYS = {"preprocessing": ("mean", "std")}
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>
# what renameat2(RENAME_EXCHANGE) answers where it cannot exchange: a filesystem without the flag
# (EINVAL, EOPNOTSUPP), a kernel without the call (ENOSYS), or the entry removed meanwhile (ENOENT)
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOENT}


class RepositoryError(RuntimeError):
    """The repository cannot be written as asked (foreign directory, bad entry name...)."""


def read_kiln_json(entry_dir: Path) -> dict[str, Any] | None:
    """The entry's kiln.json, or None when absent, unreadable or not a JSON object (a list, a number:
    not a Kiln export's, and its readers look keys up)."""
    try:
        meta = json.loads((entry_dir / "kiln.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def check_not_foreign(entry_dir: Path) -> None:
    """Refuse to touch a directory that exists but was not written by Kiln."""
    if entry_dir.exists():
        meta = read_kiln_json(entry_dir)
        if not entry_dir.is_dir() or meta is None or meta.get("kiln_format") is None:
            raise RepositoryError(
                f"{entry_dir} exists and is not a Kiln export (no valid kiln.json); refusing to overwrite it"
            )


def check_nothing_unlisted(entry_dir: Path) -> None:
    """Refuse to replace or remove an existing entry holding files its kiln.json does not list: export
    wrote none of them (every file it writes is hashed into ``artifacts``), so they are someone's own,
    most likely a version directory added by hand (``2/model.onnx``, Triton's way to keep version 1
    and serve 2), and replacing the entry whole deleted it without a word."""
    meta = read_kiln_json(entry_dir) or {}
    artifacts = meta.get("artifacts")
    if not entry_dir.is_dir() or not isinstance(artifacts, dict):
        return
    # links too (export writes none): a version directory linked in by hand (``2 -> /models/m/2``),
    # which rglob does not enter and which is no file, was dropped from the entry without a word
    files = (p for p in entry_dir.rglob("*") if (p.is_file() or p.is_symlink()) and p.name != "kiln.json")
    unlisted = sorted(
        rel
        for rel in (p.relative_to(entry_dir).as_posix() for p in files)
        if rel not in artifacts and not _bytecode_cache(rel)
    )
    if unlisted:
        shown = listed(unlisted, 3)
        raise RepositoryError(
            f"{entry_dir} holds files export did not write ({shown}: a version added by hand?), which "
            "replacing the entry would delete: move them to an entry or a repository of their own, then "
            "export again (docs/kiln-json.md, 'Versions')"
        )


def _bytecode_cache(rel: str) -> bool:
    """Whether ``rel`` is in a ``__pycache__``: Python's own, which Triton's python backend writes beside
    a translator's model.py and its beam search modules as it imports them from a writable repository;
    replacing the entry deletes nothing of anyone's (the next import writes it again)."""
    return "__pycache__" in rel.split("/")


def hash_artifacts(entry_dir: Path) -> dict[str, str]:
    """sha256 of every file of the entry except kiln.json, by relative POSIX path."""
    files = sorted(p for p in entry_dir.rglob("*") if p.is_file() and p.name != "kiln.json")
    return {p.relative_to(entry_dir).as_posix(): file_sha256(p) for p in files}


def current_settings(recorded: Any, settings: dict[str, Any], model: str | None) -> bool:
    """Whether an entry of registry model ``model`` written with the export settings ``recorded`` is
    current for ``settings``: the same settings, written at or after the export version that last
    changed what export writes for that model (``kiln.versions.CHANGED``: a bump for the Transformer
    leaves classifiers current)."""
    if not isinstance(recorded, dict):
        return False
    written = recorded.get("export_version")
    if not isinstance(written, int) or written < current_version(model):
        return False
    rest = {
        k: v
        for k, v in recorded.items()
        if k != "export_version" and not _other_gate(k, settings) and not _policy_kept(k, settings)
    }
    return rest == {k: v for k, v in settings.items() if k != "export_version"}


# Every int8 gate threshold; earlier exports recorded all three in each int8 entry, its task's and
# the other's, so an entry of either task was rebuilt when only the other task's gate changed
INT8_GATE_KEYS = ("int8_max_drop", "int8_min_agreement", "int8_max_bleu_drop")


def _policy_kept(key: str, settings: dict[str, Any]) -> bool:
    """Whether ``key`` is a ``version_policy`` an earlier export was given and this one is not: the
    entry keeps it (``_set_policy``), so it is no change of settings."""
    return key == "version_policy" and key not in settings


def _other_gate(key: str, settings: dict[str, Any]) -> bool:
    """Whether ``key`` is another task's int8 gate threshold, recorded by an older export: ignored, as
    that gate never judged this entry (its own task's thresholds are in ``settings``)."""
    return key in INT8_GATE_KEYS and key not in settings and any(k in settings for k in INT8_GATE_KEYS)


def is_up_to_date(entry_dir: Path, source_sha256: str, settings: dict[str, Any], model: str | None) -> bool:
    """True when the entry's version export writes now (``writing``) came from the same checkpoint and
    settings (``current_settings``; its ``versions`` record where kiln.json describes another version)
    and every artifact hashes right."""
    meta = read_kiln_json(entry_dir)
    record = version_record(meta or {}, writing())
    if record is None or (record.get("source_checkpoint") or {}).get("sha256") != source_sha256:
        return False
    recorded = record.get("export")
    if record is not meta and isinstance(recorded, dict):  # config.pbtxt's settings are the entry's
        recorded = _with_entry_settings(recorded, meta.get("export"))
    if not current_settings(recorded, settings, model):
        return False
    artifacts = meta.get("artifacts") or {}
    for rel, digest in artifacts.items():
        path = entry_dir / rel
        if not path.is_file() or file_sha256(path) != digest:
            return False
    return bool(artifacts)


# Export settings config.pbtxt is written with: one config serves every version of an entry, as the
# last export wrote it, so an older version's own record of them says nothing of what is served
ENTRY_SETTINGS = (
    "version_policy", "device", "cudnn_conv_algo_search", "cuda_graphs", "tensorrt_accelerator",
)  # fmt: skip


def _with_entry_settings(recorded: dict[str, Any], entry: Any) -> dict[str, Any]:
    """A version's recorded export settings with the entry's (``entry``: kiln.json's top-level
    ``export``) in place of its ``ENTRY_SETTINGS``, and the older of the two export versions: a version
    written for CPU is not up to date for ``--device cpu`` once a GPU export of another version rewrote
    the config (KIND_GPU), and was reported so while the config stayed the GPU one."""
    entry = entry if isinstance(entry, dict) else {}
    out = {k: v for k, v in recorded.items() if k not in ENTRY_SETTINGS}
    out |= {k: entry[k] for k in ENTRY_SETTINGS if k in entry}
    versions = [v.get("export_version") for v in (recorded, entry)]
    if all(isinstance(v, int) for v in versions):
        out["export_version"] = min(versions)
    return out


def check_repository(repository: Path) -> None:
    """Create ``repository`` if need be and prove it a writable directory, before any export work
    (a read-only one would otherwise be found out after the whole freeze/ONNX/parity run)."""
    try:
        repository.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RepositoryError(f"repository {repository} exists and is not a directory") from None
    except OSError as exc:
        raise RepositoryError(f"cannot create repository {repository}: {exc.strerror or exc}") from None
    if not repository.is_dir():
        raise RepositoryError(f"repository {repository} is not a directory")
    probe = repository / _probe_name()  # a file: Triton takes only directories for models
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as exc:
        raise RepositoryError(f"repository {repository} is not writable: {exc.strerror or exc}") from None


def _probe_name() -> str:
    return f".kiln-probe-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def staging_area(repository: Path) -> Path:
    """Where entries of ``repository`` are staged: ``.<repository>.kiln-staging`` beside it, where no
    Triton looks, when a rename from there reaches the repository (same filesystem and mount); else the
    repository itself (a mount point's root, a read-only parent), with a warning."""
    key = repository.resolve()
    if key not in _AREAS:
        area = _area_path(key)
        if key.parent != key and _reaches(area, key):
            _AREAS[key] = area
        else:
            log.warning(
                "staging entries inside %s (no rename from %s reaches it): a Triton polling the "
                "repository may log a failed load of a staging directory while an export runs",
                key,
                key.parent,
            )
            _AREAS[key] = key
    return _AREAS[key]


def _area_path(repository: Path) -> Path:
    resolved = repository.resolve()
    return resolved.parent / f".{resolved.name}{STAGING_SUFFIX}"


def _reaches(area: Path, repository: Path) -> bool:
    """Whether a file renamed from ``area`` lands in ``repository``: proved by doing it, since a bind
    mount shares its parent's device yet refuses renames across it (EXDEV)."""
    for _ in range(3):  # another export may tidy the area away between its mkdir and the probe
        name = _probe_name()
        try:
            area.mkdir(exist_ok=True)
            (area / name).touch(exist_ok=False)
            os.rename(area / name, repository / name)  # a file: Triton takes only directories for models
            return True
        except FileNotFoundError:
            continue
        except OSError:
            return False
        finally:
            for path in (area / name, repository / name):
                with contextlib.suppress(OSError):
                    path.unlink()
            _tidy(area)
    return False


def _tidy(area: Path) -> None:
    """Remove the staging area once empty (another export's staging keeps it, and it is remade)."""
    with contextlib.suppress(OSError):
        area.rmdir()


def write_entry(
    repository: Path, name: str, fill: Callable[[Path], dict[str, Any]], *, overwrite: bool = True
) -> Path:
    """Stage an entry with ``fill(tmp_dir) -> kiln metadata``, add artifact hashes, then swap it in."""
    if not name or "/" in name or name.startswith("."):
        raise RepositoryError(f"invalid entry name {name!r}")
    repository.mkdir(parents=True, exist_ok=True)
    final = repository / name
    sweep_leftovers(repository, name)
    check_not_foreign(final)
    check_nothing_unlisted(final)
    if final.exists() and not overwrite:
        raise RepositoryError(f"{final} exists; use --force to rebuild it")
    version, policy = _WRITING.get()
    old = (read_kiln_json(final) or {}) if final.is_dir() else {}
    kept = [v for v in entry_versions(final) if v != version]
    area = staging_area(repository)
    staging = _make_staging(area, name)
    together = _TOGETHER.get()
    try:
        try:
            meta = fill(staging)
            for other in kept:  # the entry's other versions, as they are (linked, not rewritten)
                _link_tree(final / other, staging / other)
            meta = {"kiln_format": KILN_FORMAT, "name": name, "version": version, **meta}
            if kept:
                check_same_interface(final, old, meta, staging, version, kept)
            _set_policy(staging / "config.pbtxt", policy, [*kept, version], final)
            meta["versions"] = {**_version_records(old, kept), version: _version_record(meta)}
            _seal(staging, meta)
        except OSError as exc:
            name_path(exc, staging)
            raise
        if together is None:
            _commit(staging, final)
        else:  # swapped in with the others at the end of ``written_together``
            together.append((staging, final))
    finally:
        if staging.exists() and not (together and together[-1][0] == staging):
            shutil.rmtree(staging, ignore_errors=True)
        if area != repository.resolve():
            _tidy(area)
    return final


_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM (which export makes a Ctrl-C) held while entries are swapped in, and raised
    once they all are: a Ctrl-C or ``docker stop`` between a translator's encoder and its decoder left
    the new encoder beside the old decoder, which the gateway refuses (entries of different
    checkpoints), and one between the two renames of ``_swap_in``'s fallback left no entry at all.
    Off the main thread, where Python allows no handler, nothing is changed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    # a handler not set from Python (getsignal: None) could not be put back: that signal is not held
    held = [sig for sig in _HELD_SIGNALS if signal.getsignal(sig) is not None]
    previous = {sig: signal.signal(sig, lambda signum, _frame: caught.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:  # delivered again, to the handler put back (a Ctrl-C's KeyboardInterrupt)
            signal.raise_signal(caught[0])


def _commit(staging: Path, final: Path) -> None:
    """Swap staged entry ``staging`` in as ``final``, its refusal record forgotten first."""
    try:
        with _signals_held():  # forgotten first: a disk too full to rewrite it keeps the entry out
            forget_refusal(final.parent, final.name)
            _swap_in(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s", final)


@contextlib.contextmanager
def written_together(repository: Path) -> Iterator[None]:
    """Entries ``write_entry`` writes inside the block are staged, then swapped in together when it ends
    without error; on an error none is. A translator's encoder, decoder and python entry go together:
    a failure at the decoder (a full disk) left a new encoder beside the old decoder, and the gateway
    refused the translator that served before the export (entries of different checkpoints)."""
    staged: list[tuple[Path, Path]] = []
    token = _TOGETHER.set(staged)
    try:
        try:
            yield
        finally:
            _TOGETHER.reset(token)
        with _signals_held():  # all swapped in, or (an error) those before it: never cut short by a signal
            while staged:
                _commit(*staged.pop(0))
    finally:
        for staging, _ in staged:  # not swapped in: an error staging one, or swapping one in
            shutil.rmtree(staging, ignore_errors=True)
        area = staging_area(repository)
        if area != repository.resolve():
            _tidy(area)


def name_path(exc: OSError, where: Path) -> None:
    """Make ``exc`` name ``where`` when it names no file: a write that fills the disk (ENOSPC, EDQUOT)
    fails in ``write()`` or ``close()``, whose error carries no path, and "export failed: [Errno 28] No
    space left on device" alone does not say which of the filesystems an export writes to is full."""
    if exc.filename is None and exc.errno is not None:
        exc.filename = str(where)


def _make_staging(area: Path, name: str) -> Path:
    """A new ``.<name>.tmp-<host>-<pid>-<hex>`` directory in ``area``, made by a plain mkdir so it gets
    the mode every directory of this process gets (0o777 & ~umask): ``tempfile.mkdtemp``'s 0700 would
    follow the entry into place and lock out a Triton or gateway running as another user."""
    for _ in range(100):
        path = area / f".{name}.tmp-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            area.mkdir(exist_ok=True)
            path.mkdir()
            return path
        except (FileExistsError, FileNotFoundError):  # a name taken, or the area tidied away meanwhile
            continue
    raise RepositoryError(f"cannot create a staging directory for {name!r} in {area}")


def _swap_in(staging: Path, final: Path) -> None:
    """Replace ``final`` by ``staging``: an exchange where the platform has one (the old entry then
    lies in the staging directory, removed once the new one is in place), else two renames (the old
    entry moved out beside the staging directory, removed last), between which ``final`` is absent.
    An entry that is a link to a directory elsewhere is replaced by the new entry, the link removed
    and what it points to left as it is (never written through); rmtree refuses a link, so the
    swapped-out link stayed in the staging area for good, and every later export warned that it
    "removed" it, left by a killed export."""
    if final.is_symlink():
        log.warning(
            "%s was a link to %s: replaced by the exported entry, which is written in the repository; "
            "the linked directory is left as it is",
            final,
            os.readlink(final),
        )
    if final.exists():
        why = _exchange(staging, final)
        if why is None:
            _discard(staging)
            return
        log.debug("replacing %s with two renames (%s): it is absent for an instant between them", final, why)
    old = None
    if final.exists():
        old = staging.with_name(staging.name.replace(".tmp-", ".old-", 1))
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        _discard(old)


def _discard(path: Path) -> None:
    """Delete a swapped-out or left-over entry: a link (an entry linked from elsewhere) is unlinked,
    not followed; a directory is removed with what it holds."""
    if path.is_symlink():
        with contextlib.suppress(OSError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """libc's ``renameat2`` (glibc >= 2.28; Python has no binding), or None off Linux or without it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(a: Path, b: Path) -> str | None:
    """Swap paths ``a`` and ``b`` atomically (``RENAME_EXCHANGE``): None once done, else why it cannot
    be done here; any other failure raises as a rename's would."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return "renameat2 unavailable: not Linux, or a libc older than glibc 2.28"
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return None
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return f"renameat2(RENAME_EXCHANGE) refused: {os.strerror(code)}"
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _owner_gone(path: Path, suffix: str) -> bool:
    """Whether the export that made leftover ``path`` (``suffix``: its name after ``.tmp-``/``.old-``)
    has certainly ended: it names this host and a process that no longer exists (or a zombie: ``_ended``),
    or (another host's, or named as Kilns before this one named them) it has not changed for
    ``LEFTOVER_MAX_AGE_S``."""
    match = re.fullmatch(r"(?P<host>\w+)-(?P<pid>\d+)-[0-9a-f]+", suffix)
    if match and match["host"] == _HOST:
        pid = int(match["pid"])
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # it exists, owned by another user
            return _ended(pid, hidden_is_alive=True)
        return _ended(pid)
    try:
        return time.time() - path.stat().st_mtime > LEFTOVER_MAX_AGE_S
    except OSError:
        return False


def _ended(pid: int, *, hidden_is_alive: bool = False) -> bool:
    """Whether process ``pid``, which ``kill(pid, 0)`` finds, has ended: a zombie, not yet reaped by its
    parent. An export killed while another waited for its lock is one when that other sweeps (the
    kernel lets the lock go as the process exits), and stays one for good under a container's PID 1
    that reaps no orphans: its leftovers, every graph of its working directory, were kept as a live
    export's. ``hidden_is_alive``: ``pid`` is another user's, whose /proc entry a ``hidepid`` mount
    hides (unreadable, or absent though ``kill`` finds it): alive, as ``kill`` says, not swept."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:  # reaped meanwhile: gone; no /proc (not Linux): alive, as far as can be told
        return not hidden_is_alive and Path("/proc/self").exists()
    return stat.rpartition(")")[2].split()[:1] in (["Z"], ["X"])  # the state follows "(comm)"


def sweep_leftovers(repository: Path, name: str) -> list[Path]:
    """Remove the staging (``.<name>.tmp-*``) and swapped-out (``.<name>.old-*``) directories that an
    export killed while writing entry ``name`` left behind (``_owner_gone``), in the staging area and in
    the repository (where earlier Kilns staged); an ``.old-`` one is put back as the entry when the kill
    came between the two renames and left no entry. Returns them."""
    area = _area_path(repository)
    places = [repository, *([area] if area.is_dir() else [])]
    swept = []
    for kind, place in ((kind, place) for place in places for kind in ("tmp", "old")):
        prefix = f".{name}.{kind}-"
        for path in sorted(place.glob(f"{glob.escape(prefix)}*")):
            if not (path.is_dir() or path.is_symlink()) or not _owner_gone(path, path.name[len(prefix) :]):
                continue
            if kind == "old" and not (repository / name).exists() and read_kiln_json(path):
                os.replace(path, repository / name)
                log.warning("restored %s from %s, left by a killed export", name, path.name)
            else:
                _discard(path)
                log.warning("removed %s, left by a killed export", path.name)
            swept.append(path)
    return swept


# staging / swapped out, of any entry name write_entry takes (``name=`` may hold dots, as Triton's may)
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-[^.]+")


def sweep_all_leftovers(repository: Path) -> list[Path]:
    """``sweep_leftovers`` for every entry whose leftovers lie in the staging area or the repository,
    then the area removed once empty. Run by each export before its checkpoint's work: a rerun after a
    kill that finds its entries up to date writes none, and the killed run's staged copy of every
    graph (hundreds of MB for a large model) stayed beside the repository for good; so did that of an
    int8 entry removed (``remove_entry``), whose name may never be written again."""
    area = _area_path(repository)
    names = {
        match["name"]
        for place in (repository, area)
        if place.is_dir()
        for path in place.glob(".*")
        if (match := _LEFTOVER.fullmatch(path.name))
    }
    swept = [path for name in sorted(names) for path in sweep_leftovers(repository, name)]
    if area.is_dir():
        _tidy(area)
    return swept


def remove_entry(repository: Path, name: str) -> bool:
    """Remove a stale Kiln entry (e.g. an int8 entry that now fails its gate); foreign ones are kept.
    The entry leaves the repository in one rename, then is deleted outside it: deleted in place, a
    Triton or gateway loading meanwhile found config.pbtxt without its model, and a deletion that
    failed partway (a file another process holds open on NFS) left a directory without kiln.json,
    which every later export refused to overwrite as foreign. What the deletion leaves is swept later
    (``sweep_leftovers``)."""
    entry = repository / name
    if not entry.exists():
        return False
    check_not_foreign(entry)
    check_nothing_unlisted(entry)
    area = staging_area(repository)
    area.mkdir(exist_ok=True)
    gone = area / f".{name}.tmp-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"
    os.replace(entry, gone)
    if gone.is_symlink():  # an entry linked from elsewhere: the link goes, not what it points to
        gone.unlink()  # (rmtree refuses a link, and its ignored error left the link for good)
    else:
        shutil.rmtree(gone, ignore_errors=True)
    if area != repository.resolve():
        _tidy(area)
    return True


def remove_version(repository: Path, name: str, version: str) -> bool:
    """Take version ``version`` out of Kiln entry ``name`` (its gate now refuses the model it holds), its
    other versions kept as they are (linked, as ``write_entry`` keeps them) and swapped in the same way;
    kiln.json's top level then describes the highest of them where it described ``version``. The entry's
    only version: the entry is removed (``remove_entry``). False where it holds no such version."""
    final = repository / name
    versions = entry_versions(final)
    if version not in versions:
        return False
    rest = [v for v in versions if v != version]
    if not rest:
        return remove_entry(repository, name)
    check_not_foreign(final)
    check_nothing_unlisted(final)
    old = read_kiln_json(final) or {}
    records = old.get("versions") if isinstance(old.get("versions"), dict) else {}
    meta = {k: v for k, v in old.items() if k != "artifacts"}
    if str(old.get("version", VERSION)) == version:  # the fields beside ``versions`` described it
        top = rest[-1]
        meta.update(records.get(top) or {}, version=top)
    meta["versions"] = {v: records[v] for v in rest if v in records}
    area = staging_area(repository)
    staging = _make_staging(area, name)
    try:
        try:
            for path in final.iterdir():  # config.pbtxt, labels.txt, tokenizers: copied, never linked
                if path.is_file() and path.name != "kiln.json":
                    shutil.copy2(path, staging / path.name)
            for other in rest:
                _link_tree(final / other, staging / other)
            _seal(staging, meta)
        except OSError as exc:
            name_path(exc, staging)
            raise
        _commit(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if area != repository.resolve():
            _tidy(area)
    return True


def _refusals(repository: Path) -> dict[str, Any]:
    try:
        return json.loads((repository / REFUSALS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_refusals(repository: Path, refusals: dict[str, Any]) -> None:
    path = repository / REFUSALS
    if not refusals:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f"{REFUSALS}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(refusals, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:  # a full disk: leave the record as it was, and no truncated copy beside it
        tmp.unlink(missing_ok=True)
        name_path(exc, path)
        raise


def remember_refusal(repository: Path, name: str, record: dict[str, Any]) -> None:
    """Record that entry ``name`` was refused by its gate (``record``: source_checkpoint, export settings,
    precision, message, parity) in the repository's hidden ``.kiln_refused.json``."""
    _write_refusals(repository, {**_refusals(repository), name: record})


def forget_refusal(repository: Path, name: str) -> None:
    refusals = _refusals(repository)
    if refusals.pop(name, None) is not None:
        _write_refusals(repository, refusals)


def read_refusal(repository: Path, name: str) -> dict[str, Any] | None:
    """The recorded refusal of entry ``name``, or None."""
    return _refusals(repository).get(name)


def refusal(
    repository: Path, name: str, source_sha256: str, settings: dict[str, Any], model: str | None
) -> dict | None:
    """The recorded refusal of ``name`` when it came from the same checkpoint and settings
    (``current_settings``), else None."""
    record = read_refusal(repository, name)
    if not record or record.get("source_checkpoint", {}).get("sha256") != source_sha256:
        return None
    return record if current_settings(record.get("export"), settings, model) else None


def write_labels(entry_dir: Path, labels: list[str]) -> str:
    (entry_dir / "labels.txt").write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    return "labels.txt"


def _seal(staging: Path, meta: dict[str, Any]) -> None:
    """Record the staged entry's artifacts in ``meta`` and write it as the entry's kiln.json."""
    meta["artifacts"] = hash_artifacts(staging)
    (staging / "kiln.json").write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def version_dir(entry_dir: Path) -> Path:
    """The directory of the version being written (``writing_version``; version 1 by default)."""
    path = entry_dir / writing()
    path.mkdir(parents=True, exist_ok=True)
    return path


def writing() -> str:
    """The version ``write_entry`` writes now (``writing_version``)."""
    return _WRITING.get()[0]


@contextlib.contextmanager
def writing_version(version: str, policy: str | None = None) -> Iterator[None]:
    """Entries ``write_entry`` writes inside the block are written as version ``version`` (its
    directory ``<entry>/<version>/``) beside the entry's other versions, kept as they are, and their
    config.pbtxt gets ``version_policy`` ``policy`` (``parse_policy``); None: the one the entry has
    (latest 1 for a new entry)."""
    if policy is not None:
        parse_policy(policy)
    token = _WRITING.set((str(int(version)), policy))
    try:
        yield
    finally:
        _WRITING.reset(token)


def parse_policy(policy: str) -> tuple[str, list[int]]:
    """``latest:N``, ``all`` or ``specific:V[,V...]`` (export's ``--version-policy``) as (kind, numbers);
    a ValueError names the forms."""
    kind, _, numbers = policy.partition(":")
    try:
        values = [int(n) for n in numbers.split(",")] if numbers else []
    except ValueError:
        values = []
    ok = {"latest": len(values) == 1 and values[0] >= 1, "all": not numbers, "specific": bool(values)}
    if not ok.get(kind) or any(v < 1 for v in values):
        raise ValueError(
            f"version policy {policy!r}: expected latest:N (the N highest versions; Triton's default is "
            "latest:1), all, or specific:V[,V...] (those versions), each number >= 1"
        )
    return kind, values


def _set_policy(config: Path, policy: str | None, versions: list[str], final: Path) -> None:
    """Give staged ``config`` (config.pbtxt) the ``version_policy`` ``policy``; None: the one the entry's
    config has now (``final``'s: a policy chosen once stays until another is), else the one written
    (latest 1). Refused where the policy would serve none of the entry's ``versions``."""
    from export.triton_config import proto_text

    wanted = _wanted_policy(policy, final)
    if wanted is None:
        return
    problem = policy_problem(final, policy, versions)
    if problem:
        raise RepositoryError(
            f"{problem}: name one of them (--version-policy specific:V), or use latest:N or all"
        )
    chosen = wanted.version_policy
    proto = _parsed_config(config)
    if proto is None or proto.version_policy == chosen:
        return
    proto.version_policy.CopyFrom(chosen)
    config.write_text(proto_text(proto), encoding="utf-8")


def _parsed_config(path: Path) -> Any:
    """The config.pbtxt at ``path`` parsed, or None: none yet, or not Kiln's (left as it is)."""
    from google.protobuf import text_format

    from export.triton_config import parse_pbtxt

    try:
        return parse_pbtxt(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, text_format.ParseError):
        return None


def _wanted_policy(policy: str | None, final: Path) -> Any:
    """A config holding the ``version_policy`` entry ``final`` gets: ``policy`` (``parse_policy``), or,
    for None, the one its config.pbtxt has now; None where it has none (the one written stays)."""
    from export.triton_config import parse_pbtxt

    if policy is None:
        wanted = _parsed_config(final / "config.pbtxt")
        return wanted if wanted is not None and wanted.HasField("version_policy") else None
    wanted = parse_pbtxt("")
    kind, values = parse_policy(policy)
    if kind == "latest":
        wanted.version_policy.latest.num_versions = values[0]
    elif kind == "all":
        wanted.version_policy.all.SetInParent()
    else:
        wanted.version_policy.specific.versions.extend(values)
    return wanted


def policy_problem(final: Path, policy: str | None, versions: list[str]) -> str | None:
    """Why entry ``final`` holding ``versions`` would serve none of them with ``policy`` (None: the
    version_policy its config.pbtxt has), or None: a ``specific`` policy that names none of them."""
    wanted = _wanted_policy(policy, final)
    chosen = wanted.version_policy if wanted is not None else None
    if chosen is None or chosen.WhichOneof("policy_choice") != "specific":
        return None
    if {str(v) for v in chosen.specific.versions} & set(versions):
        return None
    return (
        f"{final}: version_policy specific {list(chosen.specific.versions)} serves none of its "
        f"versions ({', '.join(versions)})"
    )


def entry_versions(entry_dir: Path) -> list[str]:
    """The version directories of an existing entry (plain numbers, as Triton names them), ascending."""
    if not entry_dir.is_dir():
        return []
    names = [p.name for p in entry_dir.iterdir() if p.is_dir() and not p.is_symlink()]
    return [str(v) for v in sorted(int(n) for n in names if n.isascii() and n.isdigit() and str(int(n)) == n)]


def _link_tree(source: Path, target: Path) -> None:
    """``source`` (a kept version directory) at ``target``, each file hard-linked: the same bytes and
    inode, nothing copied or rewritten; copied where the filesystem allows no link."""
    for path in sorted(source.rglob("*")):
        if _bytecode_cache(path.relative_to(source).as_posix()):
            continue
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)
    target.mkdir(parents=True, exist_ok=True)


def _top_files(artifacts: Any) -> dict[str, str]:
    """The digests of an entry's files outside its version directories (labels.txt, tokenizers)."""
    if not isinstance(artifacts, dict):
        return {}
    return {rel: d for rel, d in artifacts.items() if "/" not in rel and rel != "config.pbtxt"}


def check_same_interface(
    final: Path, old: dict[str, Any], meta: dict[str, Any], staging: Path, version: str, kept: list[str]
) -> None:
    """Refuse version ``version`` of entry ``final`` when its inputs, outputs, preprocessing, labels or
    tokenizers differ from those its other versions ``kept`` are served with: the entry has one
    config.pbtxt and one kiln.json, so they would serve the old versions with the new model's."""
    differ = [
        d for k in INTERFACE_KEYS if (k in old or k in meta) for d in _differing(k, old.get(k), meta.get(k))
    ]
    new_files = {p.name: file_sha256(p) for p in staging.iterdir() if p.is_file()}
    differ += sorted(
        rel for rel in {*_top_files(old.get("artifacts")), *_top_files(new_files)}
        if _top_files(old.get("artifacts")).get(rel) != _top_files(new_files).get(rel)
    )  # fmt: skip
    if differ:
        raise RepositoryError(
            f"{final}: version {version} would be served beside version(s) {', '.join(kept)} with one "
            f"config.pbtxt and kiln.json, but its {listed(differ, 4)} differ from theirs; a model of "
            "other inputs, outputs, labels or tokenizers needs an entry of its own: export it under "
            "another checkpoint file name or into another repository (docs/kiln-json.md, 'Versions')"
        )


def _differing(key: str, old: Any, new: Any) -> list[str]:
    """``key`` where its old and new values differ, a dict's differing fields named (``preprocessing.
    input_size``) but those its versions' graphs apply themselves (``IN_GRAPH_KEYS``)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [key]
    own = IN_GRAPH_KEYS.get(key, ())
    fields = sorted(f for f in {*old, *new} if f not in own and old.get(f) != new.get(f))
    return [f"{key}.{f}" for f in fields]


def _version_record(meta: dict[str, Any]) -> dict[str, Any]:
    """What kiln.json ``versions`` keeps of the version ``meta`` describes: its source, parity and
    preprocessing (each version's graph normalizes with its own mean and std)."""
    keys = ("source_checkpoint", "precision", "export", "parity", "preprocessing")
    return {k: meta[k] for k in keys if k in meta}


def version_record(meta: dict[str, Any], version: str) -> dict[str, Any] | None:
    """What kiln.json ``meta`` records of version ``version``: its top level where that is the version
    it describes, else its ``versions`` record (an entry rolled back to version 1 still records how 2
    was written, so exporting 2's checkpoint again finds 2 up to date); None where it records none."""
    if not meta:
        return None
    if str(meta.get("version", VERSION)) == version:
        return meta
    records = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
    record = records.get(version)
    return record if isinstance(record, dict) else None


def _version_records(old: dict[str, Any], kept: list[str]) -> dict[str, Any]:
    """The ``versions`` records of the kept versions, from the entry's kiln.json ``old`` (written before
    kiln.json kept them: its top level describes its ``version``)."""
    records = old.get("versions") if isinstance(old.get("versions"), dict) else {}
    if not records and old:
        records = {str(old.get("version", VERSION)): _version_record(old)}
    return {v: records[v] for v in kept if v in records}


def version_source(entry_dir: Path, version: str) -> str | None:
    """The sha256 of the checkpoint version ``version`` of an existing entry was exported from, or None
    where its kiln.json does not say (or it has no such version)."""
    meta = read_kiln_json(entry_dir) or {}
    records = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
    record = records.get(version) or (meta if str(meta.get("version", VERSION)) == version else {})
    source = record.get("source_checkpoint") if isinstance(record, dict) else None
    sha = source.get("sha256") if isinstance(source, dict) else None
    return sha if isinstance(sha, str) else None
