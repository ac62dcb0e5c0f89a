"""What a perf_analyzer run watches on the server it measures: whether the server still runs, how its
workers hold the run's connections, and what memory its processes hold once they have served."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable

from serving import process_tree


def connection_split(metrics_url: str, protocol: str) -> Callable[[], str | None]:
    """``bench.perf_analyzer.run_once``'s ``probe`` for a gateway: its workers' open ``protocol``
    connections (``kiln_open_connections``, one series a worker), most first ("6/5"); None when the page
    cannot be read. Workers hand connections to the one holding fewest (serving/handoff.py); this shows the
    split a run got."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    def read() -> str | None:
        try:
            with urllib.request.urlopen(metrics_url, timeout=2) as answer:
                text = answer.read().decode()
        except OSError:
            return None
        counts = [
            int(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "kiln_open_connections" and sample.labels.get("protocol") == protocol
        ]
        return "/".join(str(n) for n in sorted(counts, reverse=True)) if counts else None

    return read


def process_watch(process: subprocess.Popen | None) -> Callable[[], str | None]:
    """``bench.perf_analyzer.run_once``'s ``alive`` for a server running as ``process``: how it ended,
    once it has."""

    def ended() -> str | None:
        code = None if process is None else process.poll()
        if process is not None and code is None:
            return None
        return "is not running" if code is None else f"ended ({describe_exit(code)})"

    return ended


def describe_exit(code: int) -> str:
    """A Popen return code as words: a signal's name, or the exit status."""
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"signal {-code}, {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


def tree_memory_mib(pid: int | None) -> dict[str, float] | None:
    """Proportional memory (``Pss``: a page shared by n processes counts 1/n to each) summed over
    process ``pid`` and every process under it, in MiB, and how many they are; None where procfs has
    none of it (not Linux, or the process is gone). Resident sizes summed would count a model's pages
    once for every worker that maps them. As the gateway's own ``kiln_process_memory_bytes`` reads it
    (:mod:`serving.process_tree`), for Triton's processes too."""
    use = process_tree.usage(pid)
    if use is None:
        return None
    return {"pss_mib": round(use.pss_bytes / 2**20, 1), "processes": use.processes}
