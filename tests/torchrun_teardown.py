"""How a two-rank run leaves its process groups, launched by torchrun:
``python -m tests.torchrun_teardown <threads|in-flight> <folder>``.

``threads``: a DDP-wrapped model trains a step, the ranks run the collectives the trainers run from
Python (``all_sum``, ``gather_shards``), then ``teardown``. Each rank writes ``rank<N>.json``: how many
of the default group's gloo worker threads were running before ``teardown`` and how many are left.

``in-flight``: the worst case of a rank ending: an all-reduce of a tensor Python made (and dropped) is
still in the default group's worker when the group is destroyed and the interpreter shuts down. A
worker left running then must take the GIL to free the tensor, and the rank aborts at exit
("terminate called without an active exception"): torchrun's exit code says whether it did.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from training import runtime

GLOO_WORKER = "pt_gloo_runloop"  # the name ProcessGroupGloo gives its worker threads


def gloo_workers() -> set[str]:
    """The thread ids of this process's gloo worker threads."""
    tasks = Path("/proc/self/task")
    return {t.name for t in tasks.iterdir() if (t / "comm").read_text().strip() == GLOO_WORKER}


def started_workers(count: int = 2, timeout_s: float = 30.0) -> set[str]:
    """The gloo worker threads once ``count`` of them run: a thread is named by itself once started, so
    a read right after the first collective could miss one on a loaded machine."""
    deadline = time.monotonic() + timeout_s
    while len(found := gloo_workers()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return found


def main(mode: str, folder: Path) -> None:
    d = runtime.setup_dist("cpu")
    runtime.all_sum([1.0], d)  # the default group's workers start with its first collective
    default_workers = started_workers()
    model = runtime.wrap_ddp(torch.nn.Linear(2, 2), d)
    model(torch.randn(3, 2)).sum().backward()
    if mode == "in-flight":
        dist.all_reduce(torch.ones(1 << 16), async_op=True)  # neither the tensor nor the work is kept
        dist.destroy_process_group()
        return
    runtime.gather_shards([d.rank], d)
    runtime.teardown(d)
    left = default_workers & gloo_workers()
    report = {"before": len(default_workers), "left": len(left), "ddp_alive": model.training}
    (folder / f"rank{d.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
