"""Warnings Kiln's own code caused on a user's console: a gateway's port guards left to the interpreter
(a ResourceWarning each under ``python -X dev``), and ONNX Runtime's advice to pre-process before
quantizing, logged once per translator int8 entry by ``make export`` where Kiln skips it on purpose."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent

# ``python -m serving`` up to its server, which returns at once (as one stopped by SIGINT does), on a
# port this process holds; its claimed sockets are the real port guards of that port.
GATEWAY = r"""
import sys

import serving.__main__ as cli
import serving.workers
from serving.triton.ports import held_port
from serving.workers import port_guards


class Stopped:
    stopped_loading_by, exit_status = None, 0

    def __init__(self, config):
        pass

    def run(self, sockets=None):
        pass


repository, workers = sys.argv[1], sys.argv[2]
held = [held_port(), held_port()]
ports = [sock.getsockname()[1] for sock in held]
guards = [guard for port in ports for guard in port_guards("127.0.0.1", port)]
cli.claim_ports = lambda settings, *, hold: list(guards)
cli._server_class = lambda: Stopped
serving.workers.run_workers = lambda argv, workers: 0
argv = ["--model-repository", repository, "--host", "127.0.0.1", "--log-level", "error"]
argv += ["--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--workers", workers]
try:
    cli.main(argv)
except SystemExit as stop:
    assert not stop.code, stop.code
assert all(guard.fileno() == -1 for guard in guards), "the gateway returned with its port guards open"
for port in ports:  # the next gateway on these ports is not refused
    port_guards("127.0.0.1", port)[0].close()
for sock in held:
    sock.close()
print("closed")
"""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_stopped_gateway_closes_its_port_guards_and_python_dev_mode_prints_no_resource_warning(
    tmp_path, workers
):
    """Each port guard (and, for ``--workers 2``, each held port) was left open for the interpreter
    to close: ``python -X dev -m serving`` ended every run with "ResourceWarning: unclosed <socket ...
    kiln-gateway-port N>", and a gateway run in-process kept its port guarded after it returned."""
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", GATEWAY, str(tmp_path), workers],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0 and "closed" in done.stdout, done.stderr
    assert "ResourceWarning" not in done.stderr, done.stderr


def _gemm_graph(path: Path) -> Path:
    """y = x @ W + b as one Gemm with a constant weight: what a translator step's projection exports as."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="proj")],
        "step",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 4])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_translator_int8_export_logs_no_advice_to_pre_process_that_kiln_skips_on_purpose(tmp_path, caplog):
    """ONNX Runtime's quantize_dynamic logged "WARNING Please consider to run pre-processing before
    quantization" on the root logger for every translator int8 entry of ``make export``: pre-processing
    would fuse the MatMul + Add of ``gemms_as_matmuls`` back into Gemm, which it leaves unquantized."""
    from export.quantize import to_int8_dynamic

    src = _gemm_graph(tmp_path / "step.onnx")
    with caplog.at_level(logging.WARNING):
        dst = to_int8_dynamic(src, tmp_path / "int8" / "model.onnx")
    assert "MatMulInteger" in {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()], caplog.text
    assert not logging.getLogger().filters  # the filter does not outlive the call


def test_only_onnx_runtimes_advice_is_dropped(caplog):
    """The filter is narrow: another root warning, or the same words from another logger, still show."""
    from export.quantize import PRE_PROCESS_ADVICE, without_pre_process_advice

    with caplog.at_level(logging.WARNING), without_pre_process_advice():
        logging.warning(PRE_PROCESS_ADVICE + ". Refer to example: ...")  # ONNX Runtime's own call
        logging.warning("another root warning")
        logging.getLogger("export").warning(PRE_PROCESS_ADVICE)
    assert [r.getMessage() for r in caplog.records] == ["another root warning", PRE_PROCESS_ADVICE]
