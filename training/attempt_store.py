"""The store prefix a torchrun attempt's process group lives under: one that no process of an earlier
attempt of the job wrote under, the same on every rank of every node.

torchrun (its agents share their rendezvous TCPStore with the workers: torch's default) keeps one
store for all the attempts of a job, and torch names a job's process groups alike in every attempt: a
restarted rank read the killed attempt's gloo addresses there ("Gloo connectFullMesh failed ...
Connection refused") or waited on a dead rank. The prefix must be a name every rank agrees on, and
torchrun's restart count is none: each node's agent counts the failures of its own workers, and one
whose workers were healthy restarts them, as another node rejoins, without counting
(torch.distributed.elastic.agent.server.api, ``_invoke_run``). After a rank died on one node, the
other node's ranks read restart count 0 and took the first attempt's prefix, with its stale keys.

So rank 0 of each attempt draws a random token, answers it to whoever connects to a port of its own
(a beacon), and announces port and token in the job's store; every other rank takes the announced
token that the beacon on its port answers. Only a live process answers, and torchrun's c10d
rendezvous stops every worker of an attempt before its agents meet for the next one: an earlier
attempt's beacon has gone with its rank 0 (the connection is refused; a port since taken by another
server answers no such token), so the token that is answered is this attempt's, and the group's
prefix is made of it. torchrun's static rendezvous (``--master-addr`` without ``--rdzv-backend``)
makes no agent wait for the others: the node whose rank died restarts it at once, while the last
attempt's rank 0 may still be alive (busy, not yet failed in a collective). Its group took all the
other ranks already, so a rank counts itself in under the token it takes, and one past the world's
other ranks waits for the next rank 0 instead.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import threading
from collections.abc import Mapping
from datetime import timedelta

import torch.distributed as dist

log = logging.getLogger(__name__)

# In the job's store: how many attempts' rank 0 announced its beacon (a counter), and for the n-th
# (from 1) its "<port> <token>", written before it is counted and again after.
COUNT_KEY = "kiln/attempt_beacons"
# How long a rank waits for an announced port to answer, which a live beacon does at once.
ANSWER_TIMEOUT = timedelta(seconds=30)
# How long a rank whose announced rank 0 did not answer waits for the next one: a restarted attempt's
# rank 0 announces within seconds of the others' start; none by then, the one that did not answer was
# this attempt's, out of this rank's reach.
UNANSWERED_WAIT = timedelta(seconds=120)
# Set to 0: every rank joins under torchrun's restart count (the count differs between nodes after a
# restart: safe on one node only), for networks where MASTER_ADDR reaches only the store's port.
NO_BEACON = "KILN_ATTEMPT_BEACON"


def written_key(n: int) -> str:
    """The n-th announcement, written before the counter reaches n: there whenever the count is n."""
    return f"kiln/attempt_beacon/{n}/written"


def counted_key(n: int) -> str:
    """The n-th announcement, written once the counter reached n: only by the rank 0 that counted n,
    so never a stale value for a rank that read a count below n."""
    return f"kiln/attempt_beacon/{n}/counted"


def joined_key(token: str) -> str:
    """How many ranks took ``token``: at most the world's other ranks, unless its group is an earlier
    attempt's, complete, whose rank 0 lives on (the static rendezvous)."""
    return f"kiln/attempt_beacon/{token}/joined"


def group_prefix(token: str) -> str:
    """The store prefix of the process groups of the attempt whose rank 0 drew ``token``."""
    return f"kiln/attempt_{token}"


def uses_agent_store(env: Mapping[str, str]) -> bool:
    """Whether this process's env:// store is torchrun's agent store, which outlives the attempts (the
    test ``torch.distributed.rendezvous`` makes). Otherwise rank 0 started the store, for this attempt
    only (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, a launch without torchrun): nothing stale is in it."""
    return env.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)


def beacon(token: str) -> socket.socket:
    """A listening socket on a free port of this host, to every connection to which a daemon thread
    answers ``token`` until the socket is shut (for as long as rank 0 lives)."""
    if socket.has_dualstack_ipv6():
        server = socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    else:
        server = socket.create_server(("", 0))
    threading.Thread(target=answer, args=(server, token.encode()), name="kiln-beacon", daemon=True).start()
    return server


def answer(server: socket.socket, token: bytes) -> None:
    """``beacon``'s loop: send ``token`` to each connection and close it (a few bytes: never blocks)."""
    while True:
        try:
            conn, _ = server.accept()
        except OSError:  # the socket was shut
            return
        with contextlib.suppress(OSError), conn:  # a peer gone before its answer
            conn.sendall(token)


def announce(job: dist.Store) -> str:
    """Rank 0: start this attempt's beacon and announce it in ``job``; its token. The only live rank
    0 of the job counts the n-th announcement: n is one past the count it reads, written before the
    count (a rank reading count n finds it) and after (a rank waiting for n is told only by the rank
    0 that counted n, even where an earlier rank 0 died after writing it)."""
    token = secrets.token_hex(16)
    value = f"{beacon(token).getsockname()[1]} {token}"
    n = job.add(COUNT_KEY, 0) + 1
    job.set(written_key(n), value)
    job.add(COUNT_KEY, 1)
    job.set(counted_key(n), value)
    return token


def find(job: dist.Store, host: str, world: int) -> str:
    """Any other rank of ``world``: the token of this attempt's rank 0, whose beacon is on ``host``
    (torchrun's ``MASTER_ADDR``, rank 0's node). With the count n read here, this attempt's rank 0
    announces the n-th beacon (it already did) or the (n+1)-th (it has not yet: every earlier rank 0
    is stopped, or, under the static rendezvous, still has all its ranks: ``joined_key``). The n-th
    is this attempt's if it answers and has room; else this rank waits for the (n+1)-th: as long as
    the job's store waits (``--dist-timeout``) behind a live earlier rank 0, at most
    ``UNANSWERED_WAIT`` (or the store's timeout, where shorter) behind one that did not answer (gone,
    or out of reach: ``unreachable``)."""
    n = job.add(COUNT_KEY, 0)
    announced = job.get(written_key(n)) if n else None
    token = answered(host, announced) if announced else None
    if token is not None and job.add(joined_key(token), 1) < world:
        return token
    bound = [min(UNANSWERED_WAIT, job.timeout)] if announced and token is None else []
    try:
        job.wait([counted_key(n + 1)], *bound)
    except dist.DistStoreError as exc:  # no next rank 0: the n-th was this attempt's, out of reach
        raise unreachable(host, announced) from exc
    announced = job.get(counted_key(n + 1))
    if (token := answered(host, announced)) is None:
        raise unreachable(host, announced)
    job.add(joined_key(token), 1)
    return token


def unreachable(host: str, announced: bytes) -> dist.DistNetworkError:
    """Why a rank found no rank 0 to take the token of: its announced port at ``host`` did not answer."""
    return dist.DistNetworkError(
        f"rank 0 of this torchrun attempt does not answer on port {announced.decode().split()[0]} of "
        f"MASTER_ADDR {host}: it stopped, or that address reaches only the store's port of its node (a "
        "firewall, NAT or service between the nodes must pass every port, as gloo and NCCL need too; "
        f"{NO_BEACON}=0 joins by torchrun's restart count instead, which is safe on one node only)"
    )


def answered(host: str, announced: bytes) -> str | None:
    """The token announced as ``<port> <token>`` if the port on ``host`` answers it; None if the port
    refuses the connection (its process is gone) or another server took it since."""
    port, token = announced.decode().split()
    got = b""
    try:
        with socket.create_connection((host, int(port)), timeout=ANSWER_TIMEOUT.total_seconds()) as conn:
            while len(got) < len(token) and (chunk := conn.recv(len(token))):
                got += chunk
    except OSError as exc:  # refused, or a server that answers nothing (socket.timeout)
        log.debug("announced beacon %s:%s does not answer (%s)", host, port, exc)
        return None
    return token if got == token.encode() else None


def attempt_store(job: dist.Store, rank: int, world: int, env: Mapping[str, str]) -> dist.Store:
    """The store the process group of ``rank`` of ``world`` joins: ``job`` (env://'s) itself where rank
    0 started it for this attempt, else ``job`` under the prefix of this attempt's rank 0 (``announce``,
    ``find``), or of torchrun's restart count where ``KILN_ATTEMPT_BEACON=0``."""
    if not uses_agent_store(env):
        return job
    if env.get(NO_BEACON, "").strip() == "0":
        return dist.PrefixStore(f"kiln/attempt_restart_{env.get('TORCHELASTIC_RESTART_COUNT') or 0}", job)
    token = announce(job) if rank == 0 else find(job, env["MASTER_ADDR"], world)
    return dist.PrefixStore(group_prefix(token), job)
