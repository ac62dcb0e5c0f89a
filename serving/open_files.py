"""The gateway's open-file limit (``ulimit -n``, ``RLIMIT_NOFILE``), raised and checked as it starts.

Every client connection holds a descriptor. At the limit the event loop (uvloop's libuv) accepts each
new connection and closes it at once, logging nothing: clients saw resets, the gateway said nothing,
and its own files (metrics, the JSON helper, a lazy import) failed in requests on connections it still
held. The soft limit is often far below the hard one (systemd's services: 1024 of 524288; a login
shell's ``ulimit -n``), so the gateway raises it to the hard limit, as Go's runtime and nginx do, and
says once, at start-up, when what it has is still low.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

LOW = 4096  # below this, a busy gateway's clients may hold every descriptor


def raise_open_file_limit() -> tuple[int, int] | None:
    """Raise this process's soft open-file limit to its hard limit (its workers and helpers inherit
    it); the soft and hard limits it has after, or None where the system has no such limit."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard
    if wanted == resource.RLIM_INFINITY:  # Linux refuses a soft limit above fs.nr_open
        wanted = max(soft, _nr_open()) if soft != resource.RLIM_INFINITY else soft
    if soft != resource.RLIM_INFINITY and wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (OSError, ValueError) as exc:
            log.debug("open-file limit: keeping %d (raising it to %d failed: %s)", soft, wanted, exc)
    return soft, hard


def _nr_open() -> int:
    """The kernel's largest open-file limit (``fs.nr_open``), or 1 048 576, its default."""
    try:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as file:
            return int(file.read())
    except (OSError, ValueError):
        return 1 << 20


def check_open_file_limit() -> None:
    """Raise the open-file limit, and say once in a warning when it stays below :data:`LOW`: what
    happens at it, and how to raise it."""
    limits = raise_open_file_limit()
    if limits is None:
        return
    soft, hard = limits
    if soft >= LOW or soft < 0:  # RLIM_INFINITY is -1
        return
    log.warning(
        "the open-file limit is %d (hard limit %d): the gateway holds a descriptor for each client "
        "connection, and at the limit new connections are closed unanswered with nothing more logged; "
        "raise it (ulimit -n, docker run --ulimit nofile=65536, systemd LimitNOFILE=, a container "
        "runtime's default)",
        soft,
        hard,
    )


def open_metric_files(registry: Any) -> None:
    """Open now this process's multiprocess metric files (one per kind of value: ``counter``,
    ``histogram``, ``gauge_<mode>``) for the metrics of ``registry``, as prometheus_client would at
    each kind's first series. Opened then, a worker that met its open-file limit before it served a
    request of some kind failed every step of that kind: a decode step's histogram raised EMFILE, its
    translations waited their whole deadline and were answered 500. Nothing where prometheus_client
    keeps its values otherwise (one process; another version of its value class)."""
    from prometheus_client import values

    reset = getattr(values.ValueClass, "_MmapedValue__reset", None)
    names = getattr(getattr(reset, "__code__", None), "co_freevars", ())
    if "files" not in names or "pid" not in names or reset.__closure__ is None:
        return
    files = reset.__closure__[names.index("files")].cell_contents
    pid = reset.__closure__[names.index("pid")].cell_contents.get("value")
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not isinstance(files, dict) or not directory or pid != os.getpid():  # forked: it reopens them
        return
    for metric in list(getattr(registry, "_collector_to_names", {})):
        kind = getattr(metric, "_type", None)
        if kind not in ("counter", "gauge", "histogram", "summary"):
            continue
        prefix = f"gauge_{metric._multiprocess_mode}" if kind == "gauge" else kind
        if prefix not in files:
            files[prefix] = values.MmapedDict(os.path.join(directory, f"{prefix}_{pid}.db"))
