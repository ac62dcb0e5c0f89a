"""Gateway settings: command-line flags or ``KILN_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

import ipaddress
import math
import re
import threading
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# ONNX Runtime takes its thread counts as C ints: a larger one failed every model's load, after the
# start, in pybind11's "incompatible function arguments" (python -m serving.triton's --threads too)
MAX_THREADS = 2**31 - 1


class Settings(BaseSettings):
    """Everything the gateway can be told; each field is also ``KILN_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="KILN_", protected_namespaces=())

    model_repository: Path = Field(Path("model_repository"), description="Triton model repository to serve")
    backend: Literal["onnxruntime", "triton"] = Field(
        "onnxruntime", description="embedded ORT or a Triton server"
    )
    triton_url: str = Field("127.0.0.1:8001", description="Triton server address (triton backend)")
    triton_translate: Literal["scheduler", "triton"] = Field(
        "triton",
        description="triton backend: translate with the gateway's batched beam search over Triton's "
        "encoder/decoder (scheduler) or by calling Triton's <name> python model (triton)",
    )
    host: str = Field(
        "127.0.0.1",
        description="interface to bind: an address (an IPv6 one with or without brackets) or a name, every "
        "address it resolves to; 0.0.0.0 every IPv4 interface, :: every interface of both IPv4 and IPv6 "
        "(a dual-stack pod's)",
    )
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP port")
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC port; 0 disables the gRPC server")
    grpc_server: Literal["kiln", "grpcio"] = Field(
        "kiln",
        description="the gRPC server: Kiln's own HTTP/2 server on the event loop (no hand-offs between "
        "threads a call) or grpcio's grpc.aio (serving/protocol/grpc_h2.py says why)",
    )
    grpc_io: Literal["iomgr", "event-engine"] = Field(
        "iomgr",
        description="gRPC core's socket layer for accepted connections: iomgr reads them on the poller "
        "thread (fewer thread wake-ups a call), event-engine is grpc's own default; only for --grpc-server "
        "grpcio; a GRPC_EXPERIMENTS in the environment wins (serving/protocol/grpc_io.py)",
    )
    intra_op_threads: int = Field(
        1, ge=0, le=MAX_THREADS, description="ONNX Runtime intra-op threads per session (0: ORT default)"
    )
    inter_op_threads: int = Field(
        1,
        ge=0,
        le=MAX_THREADS,
        description="ONNX Runtime inter-op threads per session; above 1 CPU sessions run in ONNX Runtime's "
        "parallel execution mode (a graph's independent branches at once), the only mode that uses them: it "
        "pays only for graphs with parallel branches (Kiln's classifiers and translators are mostly chains) "
        "and each session has its own threads, so keep sessions x threads within the cores",
    )
    lone_request_threads: int | None = Field(
        None,
        ge=0,
        le=MAX_THREADS,
        description="intra-op threads of the session a lone request (one item, nothing waiting) runs "
        "on; default: the cores this process may use; 0 or not above --intra-op-threads: off",
    )
    load_threads: int | None = Field(
        None,
        ge=1,
        description="model versions the embedded backend loads at once at start (each also waits while "
        "the files loading hold 256 MiB); default: the CPUs this process may use, at most 4; 1: one after "
        "another",
    )
    spin_us: int = Field(
        20,
        ge=0,
        description="microseconds an idle ONNX Runtime intra-op thread spins before it sleeps "
        "(bridges one run's operators, stops right after it); 0: never spin",
    )
    lone_spin_us: int = Field(
        1000,
        ge=0,
        description="microseconds the lone-request session's idle threads spin (through the gap to a "
        "lone client's next request; it runs only while nothing else does); 0: never spin",
    )
    share_weights: bool = Field(
        True,
        description="every CPU session of a model (each instance's batch and lone-request sessions, a "
        "translator's decode workers, in every worker) maps one copy of its weights and their pre-packed "
        "forms, optimized once for this machine into a file in the temporary directory about twice as "
        "large as the model (serving/execution/shared_weights.py); --no-share-weights: each session "
        "loads its own",
    )
    max_queue_size: int = Field(
        128,
        ge=1,
        description="waiting requests per model before 429 (and friendly classify requests a process holds "
        "waiting to decode images)",
    )
    cpu_policy: Literal["auto", "batch", "normal"] = Field(
        "auto",
        description="Linux scheduling policy of the gateway's threads: auto (the event loop under "
        "SCHED_BATCH while a translation decodes, so its wake-ups do not preempt decode steps: about a "
        "quarter more translation throughput on 2 cores), batch (every thread always: wake-ups wait "
        "for a time slice, which hurts tails when the cores are full) or normal (SCHED_OTHER); see "
        "serving/threads.py",
    )
    decode_workers: int | None = Field(
        None,
        ge=1,
        description="decode workers (threads, each its own batch and sessions) per translator; default: 2 "
        "for a translator on the CPU in a lone gateway process with 2 cores or more, else 1 (each of "
        "several --workers: 1), as measured on 2 cores (docs/translator-interface.md, 'Decode workers')",
    )
    finish_hold_steps: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,  # the compiled step's plan carries it as an int64: past it every translation failed
        description="decoder steps a finished translation may wait for its batch's compiled call to "
        "end (fewer returns to Python under load: ~1.4x the tokens/s at c=32 on 2 cores, for up to that "
        "many steps of latency); default: 8; 0: answered at the step that finished it "
        "(docs/translator-interface.md, 'Finished sentences held')",
    )
    decode_release_idle_s: float | None = Field(
        None,
        ge=0,
        description="seconds a decode worker with nothing to decode waits before handing back the decode "
        "state its last requests grew (the compiled step's cache buffers: hundreds of MiB after a burst "
        "on a large model); default: 10; 0: kept until the gateway stops",
    )
    batch_release_idle_s: float | None = Field(
        None,
        ge=0,
        description="seconds a batch instance of a CPU model with nothing to run waits before shrinking "
        "the ONNX Runtime memory arena its merged batches grew (hundreds of MiB after batches of 64 "
        "on a 224x224 classifier); default: 10; 0: kept until the gateway stops",
    )
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        description="per-request deadline from its body read, every wait after it included (504 after it)",
    )
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After sent with 429/503")
    max_body_bytes: int = Field(64 << 20, ge=1024, description="request body limit (413 above it)")
    max_inflight_body_bytes: int = Field(
        1 << 30,
        ge=1024,
        description="request body bytes one gateway process may hold at once, over all connections and "
        "both protocols; past it a request is refused (503 with Retry-After, gRPC UNAVAILABLE) and the "
        "rest served; at least --max-body-bytes",
    )
    json_offload_bytes: int = Field(
        256 << 10,
        ge=0,
        description="KServe v2 infer and generate, classify and translate bodies with at least this many "
        "bytes of JSON are parsed in a helper process, off the event loop (a 3 MB JSON image held the loop "
        "~150 ms), and KServe v2 infer answers with about as much JSON are written there; 0: always in place",
    )
    max_images: int = Field(64, ge=1, description="images per friendly classify request")
    max_image_pixels: int = Field(
        4096 * 4096, ge=1, description="decoded pixels per image (decompression bombs)"
    )
    max_request_pixels: int | None = Field(
        None,
        ge=1,
        description="pixels the images of one friendly classify request may declare in all (413 past it, "
        "read from their headers before any is decoded); unset: 16 times --max-image-pixels",
    )
    image_decodes: int | None = Field(
        None,
        ge=1,
        description="friendly classify images one gateway process decodes at once, requests taking turns "
        "(each holds ~5 bytes a pixel while it decodes); unset: the CPUs the process may use",
    )
    max_top_k: int = Field(100, ge=1, description="largest top_k a friendly classify request may ask")
    shutdown_grace_s: float = Field(
        30.0,
        ge=0,
        description="seconds each shutdown step (HTTP drain, gRPC, translators, batchers) waits for work in flight; 0: none",
    )
    keep_alive_s: int = Field(
        75,
        ge=1,
        description="seconds an idle HTTP keep-alive connection stays open: keep it above the idle timeout "
        "of the load balancer or proxy pooling connections to the gateway (AWS ALB, nginx: 60 s; Google "
        "Cloud: 600 s; Envoy/Istio: 1 h) so that it never sends a request on a connection the gateway is "
        "closing",
    )
    read_timeout_s: float = Field(
        30.0,
        gt=0,
        description="seconds an HTTP request's line and headers may take to arrive after its first byte, "
        "and its body may pause between reads (408 after it, the connection closed: slowloris); a gRPC "
        "call's request may pause as long between DATA frames (DEADLINE_EXCEEDED after it)",
    )
    send_timeout_s: float = Field(
        60.0,
        gt=0,
        description="seconds a client may leave the gateway's answers unread once its connection's "
        "buffers are full (none of them taken in that time: the connection is aborted), HTTP and gRPC, "
        "or, over gRPC, grant no flow-control window to answers waiting for it; nginx's send_timeout",
    )
    max_header_bytes: int = Field(
        64 << 10,
        ge=1024,
        description="HTTP request line and headers limit in bytes (414 for a longer request line, 431 for "
        "longer headers), counted from the head's first byte, whether it arrives whole or in pieces",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "info", description="log level (uvicorn's names)"
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="log line format: text (DATE TIME LEVEL [pid] logger: message) or json (one JSON "
        "object a line, for Loki, ELK or Cloud Logging: time, level, severity, logger, message, pid, "
        "exception; access lines' client, method, path, http_version and status as fields too)",
    )
    workers: int = Field(
        1, ge=1, description="gateway processes sharing the ports (SO_REUSEPORT); see serving/workers.py"
    )
    reuse_port: bool = Field(
        False,
        description="bind with SO_REUSEPORT beside sockets already bound so, and skip the busy-port check "
        "(set for each of several workers, and by callers holding the ports for the gateway)",
    )
    balance_connections: bool = Field(
        True,
        description="with several workers, a worker that accepts a connection while another holds fewer "
        "of that protocol (HTTP, or gRPC on Kiln's server) hands it to that one (serving/handoff.py): the "
        "kernel's hash alone can put a client's few long-lived connections all on one worker; "
        "--no-balance-connections: each stays where the kernel put it",
    )
    connection_board: Path | None = Field(
        None, description="the workers' shared connections board (set for each of several workers)"
    )
    worker_board: Path | None = Field(
        None, description="the workers' shared occupancy board (set for each of several workers)"
    )
    worker_index: int = Field(0, ge=0, description="this worker's byte on the occupancy board")
    weights_dir: Path | None = Field(
        None,
        description="the workers' shared directory of optimized models (set for each of several workers)",
    )

    @model_validator(mode="after")
    def _budget_holds_a_body(self) -> Settings:
        if self.max_inflight_body_bytes < self.max_body_bytes:
            raise ValueError(
                f"--max-inflight-body-bytes (or KILN_MAX_INFLIGHT_BODY_BYTES) {self.max_inflight_body_bytes}"
                f" is below --max-body-bytes {self.max_body_bytes}: a body of the largest size would "
                "always be refused"
            )
        return self

    @model_validator(mode="after")
    def _two_ports(self) -> Settings:
        if self.http_port and self.http_port == self.grpc_port:
            raise ValueError(
                f"--http-port (or KILN_HTTP_PORT) and --grpc-port (or KILN_GRPC_PORT) are both {self.http_port}: "
                "the gRPC server would take it and HTTP fail to bind once the models are loaded"
            )
        return self

    @model_validator(mode="after")
    def _workers_share_a_port(self) -> Settings:
        """Several workers share one HTTP port: with port 0 each would draw its own. Refused with the
        flag errors (exit 2); it was a refusal of the start (exit 1) once logging began."""
        if self.workers > 1 and not self.http_port:
            raise ValueError(
                f"--workers (or KILN_WORKERS) {self.workers} needs a fixed --http-port (or KILN_HTTP_PORT), "
                "not 0: each worker would draw its own"
            )
        return self

    @model_validator(mode="after")
    def _triton_url_is_an_address(self) -> Settings:
        """``--backend triton`` with a ``--triton-url`` tritonclient cannot reach (``::1:8001``, an IPv6
        address without its brackets: "Misformatted domain name"; no port: gRPC's 443) started a
        gateway that was never ready, its log repeating why: refused before anything starts."""
        problem = _address_problem(self.triton_url) if self.backend == "triton" else None
        if problem:
            raise ValueError(f"--triton-url (or KILN_TRITON_URL) {self.triton_url}: {problem}")
        return self

    @model_validator(mode="after")
    def _triton_is_not_this_gateway(self) -> Settings:
        """``--backend triton`` pointed at the gateway's own port would forward every request to itself,
        never become ready and loop on "too many calls reset" (the defaults did: 127.0.0.1:8001 is also
        ``--grpc-port``'s): refused before anything starts."""
        if self.backend != "triton":
            return self
        host, port = _host_port(self.triton_url)
        if not port or not _same_host(host, self.host.strip("[]").lower()):
            return self
        for name, kind in (("grpc_port", "gRPC"), ("http_port", "HTTP")):
            if port == getattr(self, name):
                flag = name.replace("_", "-")
                raise ValueError(
                    f"--triton-url (or KILN_TRITON_URL) {self.triton_url} is this gateway's own {kind} "
                    f"address (--host {self.host}, --{flag} (or KILN_{name.upper()}) {port}): the triton "
                    f"backend would forward every request to the gateway itself; point --triton-url at the "
                    f"Triton server, or move --{flag}"
                )
        return self

    @field_validator(
        "decode_release_idle_s",
        "batch_release_idle_s",
        "request_timeout_s",
        "retry_after_s",
        "shutdown_grace_s",
        "read_timeout_s",
        "send_timeout_s",
    )
    @classmethod
    def _seconds_a_thread_can_wait(cls, value: float | None) -> float | None:
        """Seconds are waited on by threads (a batcher's join, a decode worker's wait), which take at
        most ``threading.TIMEOUT_MAX``: ``--shutdown-grace-s inf`` (or 1e300) was taken, and every stop
        then failed in an OverflowError traceback ("timestamp out of range for platform time_t")."""
        if value is not None and not (math.isfinite(value) and value <= threading.TIMEOUT_MAX):
            raise ValueError(f"{value} is not a number of seconds up to {threading.TIMEOUT_MAX:.0f}")
        return value

    @field_validator("model_repository", mode="before")
    @classmethod
    def _repository_named(cls, value: object) -> object:
        """An empty ``KILN_MODEL_REPOSITORY=`` (a template's unset value) is an error, not the current
        directory: ``Path("")`` is ``.``, whose every folder would be read as a model entry."""
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty: name the model repository's directory (make export writes one)")
        return value

    @field_validator("host", mode="before")
    @classmethod
    def _host_named(cls, value: object) -> object:
        """``[::1]`` (an IPv6 address as a URL writes it) is ``::1``: the resolver took the brackets for
        part of a name and refused it. An empty ``KILN_HOST=`` (a template's unset value) is an error:
        uvicorn bound every interface of both families on it, on two different ports with port 0."""
        if not isinstance(value, str):
            return value
        host = value.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host:
            raise ValueError("is empty: name the interface to bind (127.0.0.1, 0.0.0.0, or :: for every one)")
        return host

    @field_validator("triton_url", mode="before")
    @classmethod
    def _triton_url_stripped(cls, value: object) -> object:
        """``KILN_TRITON_URL=" triton:8001"`` (a template's spaces) passed the address check, which reads
        it stripped, and reached tritonclient as given: a leading space is no name gRPC resolves
        ("Misformatted domain name"), and the gateway was never ready."""
        return value.strip() if isinstance(value, str) else value

    @field_validator("connection_board", "worker_board", "weights_dir", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        """An empty variable leaves an optional path unset rather than naming the current directory."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "backend",
        "triton_translate",
        "grpc_server",
        "grpc_io",
        "cpu_policy",
        "log_level",
        "log_format",
        mode="before",
    )
    @classmethod
    def _lower_choice(cls, value: object) -> object:
        """A choice in any case, from a variable as from its flag (which lower-cases it)."""
        return value.lower() if isinstance(value, str) else value


def _host_port(url: str) -> tuple[str, int | None]:
    """The host (lower case, IPv6 without brackets) and port of a ``host:port`` address; no port: None."""
    try:
        parts = urlsplit(f"//{url.strip()}")
        return parts.hostname or "", parts.port
    except ValueError:  # a port out of range or not a number, a bracket unclosed: no address
        return "", None


# gRPC's own target schemes (ipv4:127.0.0.1:8001, dns:///x:8001): tritonclient takes host:port alone.
# A host of such a name with a port alone (dns:8001) is host:port.
GRPC_SCHEME = r"(ipv4|ipv6|dns|unix|unix-abstract|vsock):(?!\d+$).+"


def _address_problem(url: str) -> str | None:
    """Why ``url`` is no ``host:port`` address a client can connect to; None when it is one."""
    text = url.strip()
    if "://" in text or re.fullmatch(GRPC_SCHEME, text, re.IGNORECASE):
        return "is host:port, without a scheme (127.0.0.1:8001)"
    if text.count(":") > 1 and not text.startswith("["):
        return "an IPv6 address is written in brackets before its port ([::1]:8001)"
    host, port = _host_port(text)
    if not host or not port:
        return "is not host:port with a port of 1-65535 (127.0.0.1:8001, [::1]:8001, triton:8001)"
    return None


def _same_host(host: str, bound: str) -> bool:
    """Whether connecting to ``host`` reaches a socket bound to ``bound``: the same name or address, or
    both local ones (loopback, ``localhost``, a wildcard address: a wildcard bind takes every interface,
    and a connect to a wildcard address reaches this machine). Names are not resolved, so another
    interface's address or the machine's own name is not recognised."""
    return host == bound or (_is_local(host) and _is_local(bound))


def _is_local(host: str) -> bool:
    if host in ("", "localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def join_host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (``[::1]:8001``), as a URL or a gRPC target writes it:
    ``::1:8001`` is no address a client or grpcio's server can read."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_dual_stack(host: str) -> bool:
    """Whether ``host`` is the IPv6 wildcard ``::``, which the gateway serves on every IPv4 address too
    (a dual-stack pod's probes and clients come on either family): asyncio, and so uvicorn, bind it
    IPv6 only, where IPv4 clients were refused."""
    try:
        return ipaddress.ip_address(host) == ipaddress.IPv6Address("::")
    except ValueError:
        return False
