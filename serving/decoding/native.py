"""The compiled decode kernels (``beam_step.c``: the beam step and the cache gather-grow) through ctypes,
or ``None`` where they cannot be built.

Built on first use with the machine's C compiler (``$CC``, else ``cc``; ``$CC`` may carry arguments, as
make takes it: ``CC="gcc -fsanitize=address,undefined"``) into a per-user cache named by a hash of the
source, the flags and that command, so every process of a gateway reuses one build; no Python headers are
needed, and the file works under any Python or numpy (Triton's numpy-1 environment too). Where no
compiler exists or the build fails, a build of the same sources already in the cache runs (an
image's, docs/deploy.md); with none, :func:`load` returns ``None`` once with a warning and the numpy
step runs: the same decisions, slower (and caches grow by numpy copies). ``KILN_NATIVE=0`` turns
the compiled kernels off.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import platform
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("beam_step.c")
# the decoder step over ONNX Runtime's C API (serving.decoding.native_decoder) and the fused attention
# operators of the Transformer's step graph (attention.c), built into the same library
SOURCES = (SOURCE, Path(__file__).with_name("ort_step.c"), Path(__file__).with_name("attention.c"))
# the step graph whose attentions are kiln.ai custom operators (export writes it beside model.onnx)
FUSED_GRAPH = "model.fused.onnx"
# IEEE arithmetic as numpy does it: no fast-math, no fused multiply-add contraction.
FLAGS = ("-O3", "-std=c99", "-fPIC", "-shared", "-fno-fast-math", "-ffp-contract=off")
MAX_BEAM = 32  # the kernel's per-sentence scratch
# Another build in the cache is removed by a build only once unused this long: the cache is shared by
# whatever shares the home (another Kiln version, a Triton python model's copy of these sources,
# another machine's build on an NFS home), and each removing the others' current builds rebuilt them at
# every start and could remove one between its maker's build and its load.
SWEEP_AFTER_S = 30 * 24 * 3600
# What a build failed of when its cache has no room left (a full disk, a home over its quota).
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
# The entry points of the sanitizer runtimes a sanitized build links (ASan, TSan, MSan, HWASan)
SANITIZER_ENTRIES = (b"__asan_init", b"__tsan_init", b"__msan_init", b"__hwasan_init")
# How long a build may take (~0.5 s plain, seconds sanitized) before its compiler is taken as hung.
BUILD_TIMEOUT_S = 120
# The name's start of a build's working directory in the cache (:func:`build`).
BUILD_DIR_PREFIX = "building-beam_step-"
# The file in a build's working directory whose lock (flock) its build holds (:func:`_building`).
BUILD_LOCK = ".building"

_lock = threading.Lock()
_loaded: list[ctypes.CDLL | None] = []  # [] until the first load() decides
_loaded_path: list[Path] = []  # the file load() opened


def cache_dir() -> Path:
    """``$KILN_CACHE_DIR``, else ``$XDG_CACHE_HOME/kiln``, else ``~/.cache/kiln``; where no home can be
    named (``HOME`` unset and a user id without a passwd entry: a container run as an arbitrary user),
    :func:`temp_cache_dir`."""
    if os.environ.get("KILN_CACHE_DIR"):
        return Path(os.environ["KILN_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "kiln"
    try:
        return Path.home() / ".cache" / "kiln"
    except RuntimeError:  # "Could not determine home directory": every translator failed to load
        return temp_cache_dir()


def temp_cache_dir() -> Path:
    """This user's cache in the temporary directory, where a build goes when :func:`cache_dir` cannot
    take one: a container's home is often missing or read-only (``HOME=/nonexistent``, a read-only
    root filesystem) while its temporary directory is a writable volume."""
    return Path(tempfile.gettempdir()) / f"kiln-cache-{os.getuid()}"


def compiler() -> str | None:
    """The command to compile with: ``$CC`` (with its arguments, e.g. ``gcc -fsanitize=address``) or
    ``cc``, its program resolved to a path; None if that program does not exist."""
    command = os.environ.get("CC", "").strip() or "cc"  # set but empty (``export CC=``): unset
    try:
        words = shlex.split(command)
    except ValueError:  # unbalanced quotes: word by word, as before
        words = command.split()
    program = shutil.which(words[0])
    return shlex.join([program, *words[1:]]) if program else None


def _source_digest() -> str:
    """What names a build of these sources with these flags for this machine, whatever compiled it."""
    digest = hashlib.sha256(b"".join(source.read_bytes() for source in SOURCES))
    digest.update(" ".join((*FLAGS, platform.machine())).encode())
    return digest.hexdigest()[:16]


def library_path(cc: str) -> Path:
    """Where the build of this source with these flags and this compiler command (:func:`compiler`, its
    arguments included: a sanitized build is not a plain one) lives."""
    compiled_by = hashlib.sha256(cc.encode()).hexdigest()[:8]
    return cache_dir() / f"beam_step-{_source_digest()}-{compiled_by}.so"


def prebuilt() -> Path | None:
    """A build of these sources already in the cache, by any compiler: what an image without one runs
    (built when the image was made, ``KILN_CACHE_DIR`` pointing into it)."""
    builds = _builds()
    return builds[0] if builds else None


def _builds() -> list[Path]:
    """The builds of these sources in the cache, by any compiler command, newest first, but for those that
    would end this process when opened (:func:`_opens_here`)."""
    builds = sorted(cache_dir().glob(f"beam_step-{_source_digest()}-*.so"), key=_mtime, reverse=True)
    return [path for path in builds if _opens_here(path)]


def _opens_here(path: Path) -> bool:
    """Whether opening ``path`` leaves this process running: a build by ``CC="gcc -fsanitize=address"``
    (a sanitized test run's, in the same per-user cache) loads its sanitizer's runtime, which ends a
    process started without it ("ASan runtime does not come first in initial library list", exit 1),
    where any other build that cannot load is an OSError. Such a build opens where the process has that
    runtime already (``LD_PRELOAD``, as a sanitized run starts)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    process = ctypes.CDLL(None)
    return all(hasattr(process, name.decode()) for name in SANITIZER_ENTRIES if name in data)


def build(cc: str, target: Path) -> Path:
    """Compile into ``target`` atomically (a concurrent build of the same file is harmless), then delete
    the other builds no process has loaded for :data:`SWEEP_AFTER_S` (a process that loaded one keeps
    its mapping; :func:`_load` marks a build it loads as used), and the working directories of builds
    whose process was killed (:func:`_sweep_killed_builds`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_killed_builds(target.parent)
    with tempfile.TemporaryDirectory(prefix=BUILD_DIR_PREFIX, dir=target.parent) as tmp, _building(Path(tmp)):
        out = Path(tmp) / target.name
        _compile([*shlex.split(cc), *FLAGS, "-o", str(out), *map(str, SOURCES), "-lm", "-lpthread"])
        os.replace(out, target)
    for old in target.parent.glob("beam_step-*.so"):
        if old != target and _unused_for(old, SWEEP_AFTER_S):
            old.unlink(missing_ok=True)
    return target


def _sweep_killed_builds(cache: Path) -> None:
    """Remove the working directories in ``cache`` that builds killed outright left (SIGKILL, the OOM
    killer, during the compile: its directory and the library in it stayed in the cache for good, one
    more at each kill). A live build's is never that old by a steady clock (its compiler is killed at
    :data:`BUILD_TIMEOUT_S`), but a clock stepped forward, a build frozen (``docker pause``, a suspended
    VM) or a cache over NFS whose server's clock runs behind made one look old, and it was removed under
    its compiler (that worker then decoded with the numpy step): one whose lock is held is kept."""
    for left in cache.glob(f"{BUILD_DIR_PREFIX}*"):
        old = left.is_dir() and not left.is_symlink() and _unused_for(left, 2 * BUILD_TIMEOUT_S)
        if old and not _held_build(left):
            shutil.rmtree(left, ignore_errors=True)


@contextlib.contextmanager
def _building(directory: Path) -> Iterator[None]:
    """Hold the lock of the build working in ``directory`` for the block (:func:`_held_build`); the
    kernel drops it when the process ends, however it ends. A file, opened for writing: NFS takes an
    flock as a lock on a file opened so, and refuses one on a directory. Where no lock can be had the
    build goes on without, its directory told by its age alone."""
    fd = os.open(directory / BUILD_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def _held_build(directory: Path) -> bool:
    """Whether a live build holds ``directory``'s lock (:func:`_building`). False without a lock file (a
    build killed before it made one) or once the lock can be had; True where it cannot be told."""
    try:
        fd = os.open(directory / BUILD_LOCK, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _compile(command: list[str]) -> None:
    """Run ``command``, its messages kept (a CalledProcessError's ``stderr``), in a process group of its
    own that is killed whole where it outlasts :data:`BUILD_TIMEOUT_S` or this call is interrupted: a
    compiler is a driver over its passes (``cc1``, ``as``, ``ld``), and killing the driver alone left
    a hung pass running, one more at every start of every worker."""
    env = {**os.environ, "LC_ALL": "C"}  # its messages untranslated: _no_room reads them
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=BUILD_TIMEOUT_S)
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):  # a pass that left the group keeps its pipes
            said = process.communicate(timeout=5)
            if isinstance(exc, subprocess.TimeoutExpired):
                exc.stdout, exc.stderr = said
        process.kill()
        process.wait()
        raise
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command, out, err)


def _unused_for(path: Path, seconds: float) -> bool:
    """Whether no process has built or loaded ``path`` for ``seconds`` (its mtime, see :func:`_mark_used`)."""
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:  # swept meanwhile
        return False


def _mark_used(path: Path) -> None:
    """Note that ``path`` was loaded now, so that no other build sweeps it (a read-only cache: never swept)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def _open(path: Path) -> ctypes.CDLL:
    # PyDLL: the kernels run holding the GIL. They take microseconds; a CDLL call releases the GIL and
    # must win it back from the event-loop thread after each one (gateway at c=32, interleaved:
    # +2-3 % sentences/s over CDLL).
    lib = ctypes.PyDLL(str(path))
    fn = lib.kiln_beam_step_packed  # kiln_beam_step's arguments packed in one int64 array
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_void_p]
    fn = lib.kiln_gather_grow
    fn.restype = None
    fn.argtypes = [ctypes.c_int64] * 6 + [ctypes.c_void_p] * 4
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled step's library, built if needed; ``None`` (decided once per process) if unavailable."""
    with _lock:
        if not _loaded:
            _loaded.append(_load())
        return _loaded[0]


def _load() -> ctypes.CDLL | None:
    if os.environ.get("KILN_NATIVE", "1") == "0":
        log.info("compiled beam step off (KILN_NATIVE=0): numpy step")
        return None
    cc = compiler()
    path: Path | None = None
    try:
        path = library_path(cc) if cc else prebuilt()  # reads the sources: missing ones are a warning
        if path is None:
            log.warning(
                "no C compiler (cc or $CC) and no build in %s: beam search runs its numpy step, ~10 %% slower",
                cache_dir(),
            )
            return None
        # at every start, not at a build only: a restart right after the kill finds its leftover too
        # recent to remove, and builds no more once its own build is cached
        _sweep_killed_builds(path.parent)
        if cc is not None and not path.exists():
            path = _build_target(path)
        try:
            library = _open_cached(cc, path)
        except (OSError, subprocess.SubprocessError) as exc:
            if cc is None or path.parent == temp_cache_dir() or not _no_room(exc):
                raise
            log.info("cache %s is full: building the compiled beam step in %s", path.parent, temp_cache_dir())
            path = _build_target(temp_cache_dir() / path.name)
            library = _open_cached(cc, path)
        _loaded_path[:] = [path]
    except (OSError, subprocess.SubprocessError) as exc:
        found = _prebuilt_instead(path) if cc is not None else None
        if found is not None:
            library, path = found
            log.warning("compiled beam step not built here (%s): running the build in %s", _why(exc), path)
            _loaded_path[:] = [path]
            return library
        compiler_said = (getattr(exc, "stderr", b"") or b"").decode(errors="replace").strip()
        if compiler_said:
            log.warning("compiled beam step unavailable (%s %s): numpy step", exc, compiler_said)
        elif isinstance(exc, subprocess.SubprocessError):  # the compiler failed or hung, saying nothing
            log.warning("compiled beam step unavailable (%s): numpy step; $CC names a working compiler", exc)
        else:
            log.warning(
                "compiled beam step unavailable (%s): numpy step; KILN_CACHE_DIR names a writable cache, "
                "or one holding a build (docs/deploy.md)",
                exc,
            )
        return None
    log.info("compiled beam step: %s", path)
    return library


def _prebuilt_instead(failed: Path | None) -> tuple[ctypes.CDLL, Path] | None:
    """A build of these sources by another compiler command in the cache, opened, where this one's
    could not be made or loaded (a compiler that fails, say without the C library's headers; a
    read-only cache and no writable temporary directory), or None. docs/deploy.md's image, built
    with ``gcc`` and run where ``cc`` exists but cannot build, ran the numpy step beside a build
    that loads: that file is named by the same sources, flags and machine, so it is as current."""
    try:
        builds = _builds()
    except OSError:
        return None
    for build_path in builds:
        if build_path == failed:
            continue
        try:
            library = _open(build_path)
        except OSError:
            continue
        _mark_used(build_path)
        return library, build_path
    return None


def _mtime(path: Path) -> float:
    """``path``'s mtime, 0 where it was removed meanwhile (a sweep)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _why(exc: BaseException) -> str:
    """What the compiler said where a build failed, else the exception, on one line."""
    said = (getattr(exc, "stderr", b"") or b"").decode(errors="replace").strip()
    return " ".join(said.split()) or str(exc)


def _build_target(path: Path) -> Path:
    """Where to build ``path``: there, or the same file in :func:`temp_cache_dir` where its directory
    cannot be written (a home that is missing or read-only, as containers run: every translator then
    decoded with the numpy step though ``/tmp`` was writable). The temporary cache must be a directory
    of this user's that no one else may write, since what is built there is loaded as code.

    A build of the same name already there is taken first: an earlier process put it there because
    ``path``'s directory was full, and each later one compiled into that full cache again (~1.4 s, to
    fail) before finding it. The name is the cache key (sources, flags, compiler), so it is as current
    as ``path`` would be, and builds land there by rename, so a file there is whole."""
    fallback = temp_cache_dir()
    if path.parent != fallback and (fallback / path.name).is_file() and _private(fallback):
        return fallback / path.name  # an earlier process's fallback build: no failed build again first
    if path.parent != fallback and _writable(path.parent):
        return path
    fallback.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _private(fallback):
        raise PermissionError(f"{fallback} is not a directory of this user's that only it may write")
    if path.parent != fallback:
        log.info("cache %s cannot be written: building the compiled beam step in %s", path.parent, fallback)
    return fallback / path.name


def _private(directory: Path) -> bool:
    """Whether ``directory`` is a directory (not a link) of this user's that no one else may write."""
    try:
        found = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid() and not found.st_mode & 0o022


def _no_room(exc: BaseException) -> bool:
    """Whether a build failed for want of room in its cache: a full ``~/.cache`` (a home over its quota)
    left every translator on the numpy step, as an unwritable one did before it fell back to
    :func:`temp_cache_dir`."""
    if isinstance(exc, OSError):
        return exc.errno in NO_ROOM
    said = (getattr(exc, "stderr", b"") or b"").decode(errors="replace")
    return any(os.strerror(code) in said for code in NO_ROOM)


def _writable(directory: Path) -> bool:
    """Whether ``directory`` exists or can be made, and this process may create files in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK | os.X_OK)


def _open_cached(cc: str | None, path: Path) -> ctypes.CDLL:
    """The library at ``path``, built first where absent. A file there that does not open because it is
    incomplete (truncated by a crash before it reached the disk, or removed by another build between
    the check and the open) is built again, once, where there is a compiler: it stayed in the cache,
    and every process after ran the numpy step. One that is whole but does not load (a cache on a
    noexec mount) is not: building it again would not help, and would cost every start a compile."""
    if cc is not None and not path.exists():
        build(cc, path)
    try:
        library = _open(path)
    except OSError as exc:
        if cc is None or not _incomplete(path):
            raise
        log.warning("compiled beam step %s does not load (%s): building it again", path, exc)
        build(cc, path)
        library = _open(path)
    _mark_used(path)
    return library


def _incomplete(path: Path) -> bool:
    """Whether ``path`` is not a whole 64-bit ELF file: absent, shorter than its header, or ending before
    the section headers its header places (what a write cut short leaves)."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(64)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return True
    if len(header) < 64 or header[:5] != b"\x7fELF\x02":
        return True
    order = "little" if header[5] == 1 else "big"
    sections = int.from_bytes(header[0x28:0x30], order)
    entry, count = int.from_bytes(header[0x3A:0x3C], order), int.from_bytes(header[0x3C:0x3E], order)
    return size < sections + entry * count


def loaded_path() -> Path | None:
    """The library file :func:`load` opened (built here, or found prebuilt), or None."""
    return _loaded_path[0] if load() is not None else None


def register_kernels(options: Any) -> bool:
    """Register the compiled ``kiln.ai`` attention operators (``attention.c``) on ``options`` (an
    ``onnxruntime.SessionOptions``); False where the library is unavailable."""
    path = loaded_path()
    if path is None:
        return False
    options.register_custom_ops_library(str(path))
    return True


def graph_to_open(model_file: Path) -> Path:
    """The graph a CPU session should open for the encoder or decoder entry file ``model_file``: its
    fused-attention twin (:data:`FUSED_GRAPH`, beside it) where export wrote one and the compiled
    operators load (a session opening it needs :func:`register_kernels`), else ``model_file``.
    ``KILN_FUSED_ATTENTION=0`` keeps ``model_file`` (to compare, or to rule the operators out)."""
    fused = Path(model_file).with_name(FUSED_GRAPH)
    if os.environ.get("KILN_FUSED_ATTENTION", "1") == "0":
        return Path(model_file)
    return fused if fused.is_file() and load() is not None else Path(model_file)


def session_options(path: Path, options: Any) -> Any:
    """``options`` (an ``onnxruntime.SessionOptions``) ready to open ``path``: with the compiled
    operators registered when it is a :data:`FUSED_GRAPH`."""
    if Path(path).name == FUSED_GRAPH and not register_kernels(options):
        raise RuntimeError(f"{path} needs Kiln's compiled attention operators, which could not be built")
    return options
