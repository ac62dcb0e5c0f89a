"""``python -m serving.triton``: run the real Triton server on the CPU python flavour of a repository."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from kiln.cli import HelpFormatter, directory, log_handler, number
from serving import process_tree
from serving.__main__ import switch_problem
from serving.settings import MAX_THREADS
from serving.triton.install import triton_python_env
from serving.triton.ports import client_host
from serving.triton.server import TritonError, TritonServer, check_workdir

log = logging.getLogger("serving.triton")  # run as __main__

_port = number(int, 0, 65535)  # 0: a free one
# The default work directory's name start, then its maker (serving.process_tree.make_held_dir)
WORKDIR_PREFIX = "kiln-triton-"
# The file marking a work directory kept for reading after a failed server (_tidy): no sweep removes it
KEPT = "KEPT_FOR_READING"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m serving.triton",
        description="Derive the python flavour of a Kiln model repository and serve it with the Triton "
        "Inference Server binary from nvidia-pytriton, bound to --host (127.0.0.1: this machine only).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--model-repository", type=directory, default=Path("model_repository"), help="exported repository"
    )
    parser.add_argument(
        "--workdir",
        type=directory,
        default=None,
        help="where the flavour (WORKDIR/model_repository, replaced; anything else there is refused) and "
        "log go (default: a temp dir, removed when the server stops cleanly); one server at a time",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address Triton's HTTP, gRPC and metrics servers bind: 0.0.0.0 every IPv4 interface (other "
        "machines, a container's published ports), :: every interface (HTTP and metrics then take IPv6 "
        "clients only: Triton binds them IPv6 only), an address, or a name (its first address)",
    )
    parser.add_argument("--http-port", type=_port, default=8100, help="KServe v2 HTTP port (0: a free one)")
    parser.add_argument("--grpc-port", type=_port, default=8101, help="KServe v2 gRPC port (0: a free one)")
    parser.add_argument(
        "--metrics-port", type=_port, default=8102, help="Prometheus metrics port (0: a free one)"
    )
    parser.add_argument(
        "--threads",
        type=number(int, 1, MAX_THREADS),
        default=1,
        help="ONNX Runtime intra-op threads per model instance (translators' own sessions included)",
    )
    parser.add_argument(  # tritonserver takes an int32: past it, it printed its whole usage and exited
        "--log-verbose",
        type=number(int, 0, 2**31 - 1),
        default=0,
        help="tritonserver --log-verbose level (0: off)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=number(float, 0, above=True),
        default=180.0,
        help="seconds to wait for readiness",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    logging.basicConfig(
        level=logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        handlers=[
            log_handler(
                console,
                "%(levelname)s %(name)s: %(message)s",
                rich="%(name)s: %(message)s",
                show_time=False,
                plain_stream=sys.stderr,  # off a terminal, a log of its own (2> log holds it, as before)
            )
        ],
    )
    if not args.model_repository.is_dir():
        what = "is not a directory" if args.model_repository.exists() else "does not exist"
        # markup off (a path may hold "[/x]") and one line however long: the command is copied as printed
        _error(
            f"model repository {args.model_repository} {what}; run `make export` "
            f"(python -m export CHECKPOINTS --repository {shlex.quote(str(args.model_repository))}) first"
        )
        return 2
    temporary = args.workdir is None
    if temporary:
        sweep_workdirs()
    workdir = args.workdir or process_tree.make_held_dir(WORKDIR_PREFIX)
    try:
        server = TritonServer(
            args.model_repository,
            workdir,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            log_verbose=args.log_verbose,
            threads=args.threads,
            ready_timeout_s=args.ready_timeout,
            host=args.host,
        )
        # a usage error as --host's and the ports' are (exit 2), before the "starting" line: refused in
        # start(), it followed "starting tritonserver ... waiting up to 180 s" and exited 1, a failed server's
        check_workdir(workdir)
        if os.environ.get("KILN_TRITON_PYTHON_ENV"):  # a named one refused as a usage error too
            triton_python_env()  # (it was refused after the "starting" line, exit 1, a failed server's)
        # Triton's python translators read KILN_NATIVE and its kin as the gateway's decoders do (the server
        # has this environment): a value they would ignore (KILN_NATIVE=false) is refused as the gateway does
        problem = switch_problem(os.environ)
        if problem:
            raise ValueError(problem)
    except (ValueError, TritonError) as error:
        _error(str(error))
        code = 2
    else:
        _interrupt_on_signals()
        code = _serve(console, server, args.model_repository, args.ready_timeout)
    if temporary:
        _tidy(console, workdir, code)
    return code


def _error(text: str) -> None:
    """An error on stderr, where a script's ``2>`` looks for it (it was on stdout with the ready lines),
    in red on a terminal; markup off: an IPv6 --host in brackets, a path or a log line such as
    "[/models/x]" is no style tag (one ended this in a traceback), and one line however long."""
    Console(stderr=True).print(text, style="red", markup=False, highlight=False, soft_wrap=True)


def _tidy(console: Console, workdir: Path, code: int) -> None:
    """Remove the temporary ``workdir``, unless a server ran and failed (1): its log (and the flavour
    it ran) are kept to read. A failure before any server ran, an empty repository's, leaves nothing."""
    if code == 1 and any(workdir.glob("*.log")):
        with contextlib.suppress(OSError):
            (workdir / KEPT).touch()
        console.print(
            f"kept for reading: the server's log and the flavour it ran, in {workdir}", highlight=False
        )
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    process_tree.release(workdir)


def sweep_workdirs(root: Path | None = None) -> list[Path]:
    """Remove the default work directories in ``root`` (TMPDIR) of launchers killed outright (``kill -9``,
    the OOM killer, a container's stop timeout): each a copy of every model of the repository, one more
    at each kill. A launcher holds its own (``process_tree.make_held_dir``) until it ends; one kept for
    reading after a failed server (:data:`KEPT`) stays. Only names ``make_held_dir`` gives are swept:
    a ``--workdir /tmp/kiln-triton-8000`` the user named (or an older launcher's ``mkdtemp`` name whose
    random tail is all digits) read as a dead pid's, and was removed, live or kept. Returns the removed."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    for path in root.glob(f"{WORKDIR_PREFIX}*"):
        tail = path.name[len(WORKDIR_PREFIX) :]
        if process_tree.HELD not in tail.split("-")[1:3]:
            continue
        if _sweepable(path) and process_tree.maker_gone(tail, path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("removed %d work directories of killed launchers from %s", len(removed), root)
    return removed


def _sweepable(path: Path) -> bool:
    """Whether ``path`` is a work directory (no link) not kept for reading (:data:`KEPT`); False where
    that cannot be told: another user's launcher's, private to it (0700), ended every launch by the
    other users of a shared /tmp (a GPU box, a CI host) in a PermissionError traceback before it began."""
    try:
        return not path.is_symlink() and path.is_dir() and not (path / KEPT).exists()
    except OSError:
        return False


def _has_entries(repository: Path) -> bool:
    """Whether ``repository`` holds a model entry, a directory with a ``config.pbtxt`` as export writes."""
    if not repository.is_dir():
        return False
    return any((d / "config.pbtxt").is_file() for d in repository.iterdir() if not d.name.startswith("."))


def _serve(console: Console, server: TritonServer, repository: Path, timeout_s: float) -> int:
    """Start the server, serve until a signal (0) or until it exits on its own (1); 1 where it cannot
    start, 130 where a signal stops the start. What it waits for is a line of its own: a spinner is
    drawn on a terminal only, and a log showed nothing until Triton was ready."""
    console.print(
        f"starting tritonserver on {repository} (log: {server.log_path}); waiting up to {timeout_s:g} s "
        "for it to load every model and answer ready",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    try:
        with console.status("tritonserver is loading the models"):
            server.start()
    except (TritonError, ValueError, FileNotFoundError, FileExistsError) as error:
        empty = isinstance(error, ValueError) and not _has_entries(repository)
        command = f"python -m export CHECKPOINTS --repository {shlex.quote(str(repository))}"
        hint = f": run `make export` ({command}) to write its entries" if empty else ""
        _error(f"{error}{hint}")
        return 1
    except KeyboardInterrupt:
        return 130  # start() already stopped the server
    _print_ready(console, server)
    try:
        while server.process is not None and server.process.poll() is None:
            time.sleep(1.0)
        _error(f"tritonserver exited\n{server.log_tail()}")
        return 1
    except KeyboardInterrupt:
        console.print("stopping tritonserver")
        return 0
    finally:
        server.stop()


# SIGHUP too: a closed terminal or dropped ssh session ended this process at once, its ``finally`` unrun,
# and the temporary work directory (a copy of every model of the repository) stayed in /tmp
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt_on_signals() -> None:
    """The first SIGINT, SIGTERM or SIGHUP (unless nohup ignores it) raises KeyboardInterrupt, even
    where a parent shell made SIGINT ignored; later ones are ignored, so that a second Ctrl-C cannot
    cut the stop it started short (which leaves the server's stubs and shared memory behind, and a
    traceback)."""

    def interrupt(*_: object) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    for sig in STOP_SIGNALS:
        if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
            continue  # started under nohup: a hangup is meant to leave it serving
        signal.signal(sig, interrupt)


def _print_ready(console: Console, server: TritonServer) -> None:
    flavour = server.flavour
    # bound elsewhere than where the URLs point (a wildcard, a name's address): said, for other machines
    local = server.address == server.host == client_host(server.address)
    bound = "" if local else f" (bound to {server.address})"
    urls = f"http {server.http_url}  grpc {server.grpc_url}  metrics {server.metrics_url}"
    console.print(
        f"[green]Triton ready[/]{escape(bound)}: {escape(urls)}  log {escape(str(server.log_path))}",
        soft_wrap=True,  # the URLs and the log's path whole, off a terminal's 80 columns too
    )
    if flavour is not None:
        console.print(
            f"wrapped (ONNX Runtime in python backend): {flavour.wrapped}; copied: {flavour.copied}",
            markup=False,
            soft_wrap=True,
        )
        for name, reason in flavour.skipped.items():
            console.print(f"skipped {name}: {reason}", style="yellow", markup=False, soft_wrap=True)


if __name__ == "__main__":
    raise SystemExit(main())
