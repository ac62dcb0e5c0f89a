"""Run the real Triton Inference Server binary shipped in the nvidia-pytriton wheel, on 127.0.0.1 or
the address its ``host`` names (0.0.0.0 or ``::`` to serve other machines, or from a container).

:class:`TritonServer` derives the repository's python flavour, finds the server and prepares its python
backend and environment (:mod:`serving.triton.install`), waits for readiness and stops cleanly. Its
ports come from :mod:`serving.triton.ports`; what a stopped server leaves in /dev/shm and /tmp is swept
by :mod:`serving.triton.shm_regions`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from kiln.processes import child_options, raise_swallowed_interrupt
from serving import process_tree
from serving.settings import join_host_port
from serving.triton.flavour import FlavourReport, FlavourWriteError, derive_python_flavour
from serving.triton.install import (
    TritonError,
    TritonInstall,
    find_triton,
    prepare_backends,
    triton_environment,
)
from serving.triton.ports import LOOPBACK, bind_address, client_host, free_port
from serving.triton.shm_regions import (
    ENV_DIR,
    SHM_DIR,
    shortage_note,
    sweep_python_envs,
    sweep_shm_regions,
)

log = logging.getLogger(__name__)

BIND_FAILURES = ("already in use", "cannot listen", "failed to bind", "address in use")
START_ATTEMPTS = 3  # a drawn port taken by someone else before Triton binds it: draw again


# How long stop() waits for the process group's stubs to be gone once SIGKILLed (they go in milliseconds)
GROUP_GONE_S = 5.0


def _kill_group(pgid: int, timeout_s: float = GROUP_GONE_S) -> None:
    """SIGKILL process group ``pgid`` and wait until none of it runs (zombies aside), killing again what
    still does. A SIGKILL takes effect after ``killpg`` returns: a stub killed while the server loaded
    still mapped its 1 MiB region in /dev/shm when the sweep looked, so the sweep kept it (a live
    server's), and it stayed for good once the stub was gone, a few more at every Ctrl-C of a start."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        if not _group_running(pgid) or time.monotonic() > deadline:
            return
        time.sleep(0.01)


def _group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (procfs; a zombie has unmapped its memory)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_bytes().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):  # gone meanwhile
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _check_ports(chosen: dict[str, int]) -> None:
    """Refuse a port outside 0-65535 (Triton took 70000 and reported serving there, an address few
    clients can use) and one port given to two services (Triton exits on it after loading every
    model, and drawing new ports for the others, as the start does on a bind failure, cannot cure it)."""
    flags = {name: "--" + name.replace("_", "-") for name in chosen}
    for name, port in chosen.items():
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"{flags[name]} must be a port in 0-65535 (0: a free one), got {port!r}")
    given = [(name, port) for name, port in chosen.items() if port]
    for i, (name, port) in enumerate(given):
        for other, same in given[i + 1 :]:
            if port == same:
                raise ValueError(f"{flags[name]} and {flags[other]} are both {port}: each needs its own port")


def workdir_path_problem(workdir: Path) -> str:
    """What in ``workdir``'s path Triton's python backend cannot start a model under, "" if nothing:
    whitespace (the stubs die reading their arguments, ``std::invalid_argument: stol``) or a character
    outside ASCII (the stubs' isolated Python reads paths as ASCII: ``UnicodeEncodeError`` at load, a
    ``/home/jörg`` or ``TMPDIR=/tmp/données`` included)."""
    shown = str(Path(workdir).absolute())
    if any(c.isspace() for c in shown):
        return "has whitespace in its path"
    outside = sorted({c for c in shown if not c.isascii()})
    return f"has characters outside ASCII in its path ({''.join(outside)})" if outside else ""


def check_workdir(workdir: Path) -> None:
    """Refuse a work directory Triton's python backend cannot load models under (see
    :func:`workdir_path_problem`): the server started, waited for (with whitespace) its whole ready
    timeout of two minutes, and said it was not ready, or exited with a traceback from the stub."""
    problem = workdir_path_problem(workdir)
    if problem:
        raise TritonError(
            f"work directory {str(Path(workdir).absolute())!r} {problem}, under which Triton's python "
            "backend cannot start its models: choose one without (--workdir, or TMPDIR for a temporary one)"
        )


class TritonServer:
    """Derive the python flavour of a repository, run Triton on it, and stop it (a context manager)."""

    def __init__(
        self,
        model_repository: Path,
        workdir: Path,
        *,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        log_verbose: int = 0,
        threads: int = 1,
        instances: int | None = None,
        ready_timeout_s: float = 120.0,
        host: str = LOOPBACK,
        keep_repository: bool = True,
    ) -> None:
        """``host``: the address all three services bind (an IP address, 0.0.0.0 or ``::`` for every
        interface, or a name: its first address); ValueError naming it where it cannot be bound here.
        ``keep_repository`` False: a ``with`` block that ends without an exception, on a server that
        ran until it was stopped and then exited 0, removes the flavour it derived into ``workdir``
        and keeps the log (the bench's choice: a flavour kept after each run only fills the disk)."""
        self.model_repository = Path(model_repository)
        self.workdir = Path(workdir)
        chosen = {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port}
        _check_ports(chosen)
        try:
            self.address = bind_address(host)  # Triton's HTTP server reads numeric addresses only
        except OSError as error:  # worded as the gateway's --host refusals
            reason = error.strerror or str(error)
            if not isinstance(error, socket.gaierror) and error.strerror:
                reason = f"cannot be bound ({reason})"
            raise ValueError(f"--host {host.strip() or repr(host)}: {reason}") from None
        self.host = host
        self._drawn = [name for name, port in chosen.items() if not port]  # 0: draw one (see free_port)
        self.http_port = http_port or free_port(self.address)
        self.grpc_port = grpc_port or free_port(self.address)
        self.metrics_port = metrics_port or free_port(self.address)
        self.log_verbose = log_verbose
        self.threads = threads
        self.instances = instances  # None: each entry's exported instance_group count
        self.ready_timeout_s = ready_timeout_s
        self.keep_repository = keep_repository
        self.log_path = self.workdir / "tritonserver.log"
        self.stopped_cleanly = False  # the last stop found the server running and it then exited 0
        self.flavour: FlavourReport | None = None
        self.process: subprocess.Popen | None = None
        self._launched_at: float | None = None  # wall time of the first launch (see sweep_shm_regions)
        self._workdir_lock: int | None = None  # the descriptor holding the workdir (_hold_workdir)

    @property
    def http_url(self) -> str:
        """``host:port`` a client on this machine reaches HTTP at (a wildcard: its loopback, as every URL
        here is: :func:`client_host`)."""
        return join_host_port(client_host(self.address), self.http_port)

    @property
    def grpc_url(self) -> str:
        return join_host_port(client_host(self.address), self.grpc_port)

    @property
    def metrics_url(self) -> str:
        return f"http://{join_host_port(client_host(self.address), self.metrics_port)}/metrics"

    @property
    def repository_path(self) -> Path:
        """Where :meth:`start` derives the python flavour Triton serves."""
        return self.workdir / "model_repository"

    def command(self, install: TritonInstall, repository: Path, backends: Path) -> list[str]:
        """The tritonserver command line: bound to ``host``, fixed model set, exit on any load error. An
        IPv6 address is written as each server reads one: ``ipv6:[::1]`` for HTTP and metrics (libevhtp;
        bare, Triton 2.51 says it started and listens nowhere), ``[::1]`` for gRPC."""
        ipv6 = ":" in self.address
        http = f"ipv6:[{self.address}]" if ipv6 else self.address
        return [
            str(install.binary),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            f"--http-address={http}",
            f"--http-port={self.http_port}",
            f"--grpc-address={f'[{self.address}]' if ipv6 else self.address}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={http}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--model-control-mode=none",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--exit-timeout-secs=5",
            f"--log-verbose={self.log_verbose}",
            "--log-info=true",
        ]

    def start(self) -> TritonServer:
        """Start the server and block until it is ready (or raise :class:`TritonError` with its log).

        When a port this object drew itself was taken before Triton could bind it, Triton exits; the
        start is then retried on freshly drawn ports (ports the caller chose are never changed).
        """
        check_workdir(self.workdir)
        install = find_triton()
        if install is None:
            raise TritonError(
                "the tritonserver binary is missing: install nvidia-pytriton (pip install --no-deps)"
            )
        self._check_chosen_ports()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._hold_workdir()
        repository = self.repository_path
        try:
            self.flavour = derive_python_flavour(
                self.model_repository, repository, threads=self.threads, instances=self.instances
            )
            backends = prepare_backends(install, self.workdir)
        except FlavourWriteError as error:  # a full work directory: one line, not copytree's traceback
            self._release_workdir()
            raise TritonError(
                f"cannot derive the python flavour of {self.model_repository}: {error}"
            ) from None
        except BaseException:
            self._release_workdir()
            raise
        attempt = 1
        while True:
            self._launch(install, repository, backends)
            try:
                self.wait_ready()
                return self
            except TritonError as error:
                self.stop(release=False)
                if attempt == START_ATTEMPTS or not self._redraw_ports(str(error)):
                    self._release_workdir()
                    raise
                log.warning(
                    "tritonserver could not bind its ports (attempt %d); retrying on new ones", attempt
                )
                attempt += 1
            except BaseException:
                self.stop()
                raise

    def _hold_workdir(self) -> None:
        """Hold ``workdir`` (an exclusive lock on the directory, released by :meth:`stop` or at exit),
        refusing one another server holds: two launchers given one ``--workdir`` replaced each other's
        flavour under the running server and its log (the first's log then held the second's lines),
        or, started together, the one deriving second failed on "[Errno 17] File exists"."""
        if self._workdir_lock is not None or process_tree.holds(self.workdir):
            return  # a launcher's temporary one is held already, by its maker (a second lock refused it)
        fd = os.open(self.workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise TritonError(
                f"work directory {self.workdir} is in use by another tritonserver started from it: "
                "give each server its own --workdir (or none: a temporary one)"
            ) from None
        self._workdir_lock = fd

    def _release_workdir(self) -> None:
        fd, self._workdir_lock = self._workdir_lock, None
        if fd is not None:
            os.close(fd)  # the lock goes with the descriptor

    def _launch(self, install: TritonInstall, repository: Path, backends: Path) -> None:
        if self._launched_at is None:
            self._launched_at = time.time() - 1.0  # file times are coarser than the clock
        env = triton_environment(install)  # before the log: a refused environment leaves no log to keep
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                self.command(install, repository, backends),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group (stop() signals it whole)
                **child_options(),  # and stopped with this process, however it dies (a SIGKILL too)
            )
        log.info("tritonserver pid %d: http %s grpc %s", self.process.pid, self.http_url, self.grpc_url)

    def _check_chosen_ports(self) -> None:
        """A port the caller chose that something already listens on is named now, in one line: Triton
        would exit on it after loading, and only drawn ports may be drawn again."""
        for name in ("http_port", "grpc_port", "metrics_port"):
            if name in self._drawn:
                continue
            port = getattr(self, name)
            try:  # a server answers there (a socket only held, not listening, may be shared: left be)
                socket.create_connection((client_host(self.address), port), timeout=1.0).close()
            except OSError:
                continue
            flag = "--" + name.replace("_", "-")
            where = join_host_port(client_host(self.address), port)
            raise TritonError(f"{flag} {port} is already in use: a server listens on {where}")

    def _redraw_ports(self, failure: str) -> bool:
        """New ports for those this object drew, when ``failure`` is a bind failure; False otherwise."""
        if not self._drawn or not any(sign in failure.lower() for sign in BIND_FAILURES):
            return False
        for name in self._drawn:
            setattr(self, name, free_port(self.address))
        return True

    def wait_ready(self) -> None:
        """Poll /v2/health/ready until it answers 200, the process dies or the timeout passes."""
        raise_swallowed_interrupt()  # a Ctrl-C or SIGTERM that came while _launch forked: start() stops it
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise TritonError(
                    f"tritonserver exited with code {code} before it was ready\n{self.log_tail()}"
                    f"{self._shortage()}"
                )
            if self.is_ready():
                return
            time.sleep(0.25)
        raise TritonError(
            f"tritonserver not ready after {self.ready_timeout_s:.0f}s\n{self.log_tail()}{self._shortage()}"
        )

    def _shortage(self) -> str:
        """A last line of an error naming /dev/shm, where the server's log says it was too small."""
        try:
            note = shortage_note(self.log_path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            return ""
        return f"\n{note}" if note else ""

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log, for error messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "\n".join(["--- tritonserver log (tail) ---", *text[-lines:]])

    def stop(self, grace_s: float = 10.0, *, release: bool = True) -> None:
        """SIGTERM the server, SIGKILL it if it outlives ``grace_s``, then its whole process group; then
        (``release``) let another server use the work directory."""
        try:
            self._stop(grace_s)
        finally:
            if release:
                self._release_workdir()

    def _stop(self, grace_s: float) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        self.stopped_cleanly = False
        if process.poll() is None:
            process.terminate()
            try:
                self.stopped_cleanly = process.wait(grace_s) == 0
            except subprocess.TimeoutExpired:
                log.warning("tritonserver ignored SIGTERM for %.0fs; killing it", grace_s)
                process.kill()
                process.wait(5)
        # python-backend stubs left behind by a killed server (or one that died or exited before it
        # was ready) share its process group
        _kill_group(process.pid)
        if self._launched_at is not None:
            left = sweep_shm_regions(self._launched_at)
            if left:
                log.info("removed %d shared-memory region(s) tritonserver left in %s", len(left), SHM_DIR)
            envs = sweep_python_envs(self._launched_at)
            if envs:
                log.info(
                    "removed %d empty python backend directories tritonserver left in %s", len(envs), ENV_DIR
                )

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.stop()
        if kind is None and self.stopped_cleanly and not self.keep_repository:
            shutil.rmtree(self.repository_path, ignore_errors=True)
