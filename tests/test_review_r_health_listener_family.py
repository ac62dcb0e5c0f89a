"""The GPU overlay's haproxy sidecar must start on every node the gateway may land on. Its health listener
(the sidecar's startup probe, which holds the gateway back) was ``bind [::]:8404 v4v6``: on a node whose
kernel has IPv6 off (``ipv6.disable=1``) haproxy cannot create an IPv6 socket ("cannot create receiving
socket (Address family not supported by protocol) for [:::8404]") and exits, so the sidecar crash-looped
and the gateway never started. The listener binds the pod's IP (``status.podIP``), which is the address the
kubelet probes, in whichever family the cluster gives pods."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_deploy_b_sidecar_probe import GPU, frontends, probed_port, sidecar


def _health_binds() -> list[str]:
    balancer = sidecar()
    port = str(probed_port(balancer, balancer["startupProbe"]))
    binds = [a for f in frontends((GPU / "haproxy.cfg").read_text()).values() for a in f.get("bind", [])]
    return [a.strip('"') for a in binds if a.strip('"').rsplit(":", 1)[1] == port]


def test_the_probed_listener_needs_no_address_family_the_node_may_lack() -> None:
    binds = _health_binds()
    assert binds == ["${POD_IP}:8404"], (
        f"the sidecar's probed listener binds {binds}: an IPv6 wildcard fails haproxy on a node with IPv6 "
        "off, an IPv4 one is unreachable in an IPv6-only cluster; the pod's own IP is neither"
    )
    env = {e["name"]: e.get("valueFrom") for e in sidecar().get("env", [])}
    assert env.get("POD_IP") == {"fieldRef": {"fieldPath": "status.podIP"}}


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
@pytest.mark.parametrize("pod_ip", ["10.244.1.7", "fd00:10:244::7"])
def test_haproxy_accepts_the_config_with_a_pod_ip_of_either_family(pod_ip: str) -> None:
    """``haproxy -c`` parses each bind address (an IPv6 one unbracketed, its port after the last colon)."""
    checked = subprocess.run(
        ["haproxy", "-c", "-f", str(GPU / "haproxy.cfg")],
        env={**os.environ, "POD_IP": pod_ip, "POD_NAMESPACE": "default"},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).parent,
    )
    assert checked.returncode == 0, checked.stderr
