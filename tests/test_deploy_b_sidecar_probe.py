"""The GPU overlay's haproxy sidecar must pass its startup probe, or the gateway never starts: a native
sidecar's startup probe holds back every container after it. The kubelet probes the pod's IP (a probe's
``host`` defaults to it), never 127.0.0.1, so the probed port must be one haproxy binds on every address,
not the loopback-only gRPC listener the gateway forwards through. Read from the files alone (no kubectl)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import yaml

GPU = Path(__file__).resolve().parents[1] / "deploy" / "overlays" / "gpu"
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def sidecar() -> dict[str, Any]:
    patch = yaml.safe_load((GPU / "gateway-forwards-to-triton.yaml").read_text())
    (balancer,) = patch["spec"]["template"]["spec"]["initContainers"]
    return balancer


def frontends(config: str) -> dict[str, dict[str, list[str]]]:
    """haproxy.cfg's frontends: {name: {"bind": [address:port, ...], "monitor-uri": [uri]}}."""
    found: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in config.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if re.match(r"\S", line):  # a section header
            words = line.split()
            current = found.setdefault(words[1], {}) if words[0] == "frontend" else None
        elif current is not None and line.split() and line.split()[0] in {"bind", "monitor-uri"}:
            keyword, value = line.split()[:2]
            current.setdefault(keyword, []).append(value)
    return found


def reachable_from_the_kubelet(address: str) -> bool:
    """A bind address the pod's IP reaches: a wildcard (``:p``, ``*:p``, ``0.0.0.0:p``, ``[::]:p``), a
    non-loopback address, or the pod's IP itself (``"${POD_IP}:p"``, POD_IP the sidecar's status.podIP)."""
    host = address.strip('"').rsplit(":", 1)[0].strip("[]")
    if host == "${POD_IP}":
        return {"fieldRef": {"fieldPath": "status.podIP"}} in [
            e.get("valueFrom") for e in sidecar().get("env", []) if e["name"] == "POD_IP"
        ]
    return host in {"", "*"} or not ipaddress.ip_address(host).is_loopback


def probed_port(balancer: dict[str, Any], probe: dict[str, Any]) -> int:
    action = probe.get("httpGet") or probe.get("tcpSocket")
    assert action is not None, f"the sidecar's probe is neither httpGet nor tcpSocket: {probe}"
    assert "host" not in action, "a probe's host is the node's view, not the pod's: leave it to the pod IP"
    port = action["port"]
    named = {p["name"]: p["containerPort"] for p in balancer.get("ports", []) if "name" in p}
    return named[port] if isinstance(port, str) else int(port)


def test_the_sidecars_probes_reach_a_listener_bound_where_the_kubelet_connects() -> None:
    balancer = sidecar()
    listeners = frontends((GPU / "haproxy.cfg").read_text())
    probes = [balancer[name] for name in PROBES if name in balancer]
    assert probes, "the sidecar has no probe: the gateway would start before its balancer listens"
    for probe in probes:
        port = probed_port(balancer, probe)
        serving = {
            name: frontend
            for name, frontend in listeners.items()
            if any(address.strip('"').rsplit(":", 1)[1] == str(port) for address in frontend.get("bind", []))
        }
        assert serving, f"no haproxy frontend binds port {port}, which the sidecar's probe asks"
        for name, frontend in serving.items():
            binds = [a for a in frontend["bind"] if a.strip('"').rsplit(":", 1)[1] == str(port)]
            assert all(reachable_from_the_kubelet(a) for a in binds), (
                f"the probe asks port {port}, which frontend {name} binds on {binds} only: the kubelet "
                "connects to the pod's IP, is refused, and the gateway behind the sidecar never starts"
            )
            if "httpGet" in probe:
                assert frontend.get("monitor-uri") == [probe["httpGet"]["path"]], (
                    f"frontend {name} answers {frontend.get('monitor-uri')} itself, the probe asks "
                    f"{probe['httpGet']['path']}"
                )


def test_the_gateway_still_reaches_the_balancer_on_its_own_loopback_listener() -> None:
    """The gRPC listener the gateway forwards through stays on 127.0.0.1: only the pod uses it."""
    patch = yaml.safe_load((GPU / "gateway-forwards-to-triton.yaml").read_text())
    (gateway,) = patch["spec"]["template"]["spec"]["containers"]
    url = next(e["value"] for e in gateway["env"] if e["name"] == "KILN_TRITON_URL")
    grpc = frontends((GPU / "haproxy.cfg").read_text())["triton_grpc"]
    assert grpc["bind"] == [url]
