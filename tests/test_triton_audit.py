"""Audit of the real-Triton path: the python flavour's models refusing what would crash or mislead them,
and the launcher's flags and shutdown. Nothing here starts Triton: the python models run against a
stand-in for ``triton_python_backend_utils``, the launcher against a stand-in server."""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from serving.decoding import beam_search as bs
from serving.triton import TritonServer, derive_python_flavour, read_config
from tests.test_triton_translator_model import _Error, _Request, _Response, model, stand_in_pb_utils  # noqa: F401 (fixture)


class _TensorRequest:
    """A request to an ONNX entry: named arrays, every output wanted."""

    def __init__(self, **arrays: np.ndarray) -> None:
        self.arrays = arrays

    def requested_output_names(self) -> list[str]:
        return []


def _identity_graph(path: Path) -> None:
    """src [batch, src_len] and past [batch, past_len] (int64) out as they came in."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", axis])
        for name, axis in (("src", "src_len"), ("past", "past_len"))
    ]
    outputs = [
        helper.make_tensor_value_info(f"{name}_out", TensorProto.INT64, ["batch", axis])
        for name, axis in (("src", "src_len"), ("past", "past_len"))
    ]
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name in ("src", "past")]
    graph = helper.make_graph(nodes, "identity", inputs, outputs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.fixture
def onnx_model(monkeypatch: pytest.MonkeyPatch):
    """serving/triton/onnx_model.py bound to a stand-in pb_utils (the module the flavour copies)."""
    utils = stand_in_pb_utils(monkeypatch, lambda request, name: request.arrays[name])
    utils.triton_string_to_numpy = lambda name: {"TYPE_INT64": np.int64}[name]
    monkeypatch.delitem(sys.modules, "serving.triton.onnx_model", raising=False)
    yield importlib.import_module("serving.triton.onnx_model")
    sys.modules.pop("serving.triton.onnx_model", None)


def _onnx_entry(root: Path, kiln: dict | None) -> dict:
    """An entry directory holding the identity graph (and ``kiln``), as Triton's initialize args."""
    (root / "1").mkdir(parents=True)
    _identity_graph(root / "1" / "model.onnx")
    if kiln is not None:
        (root / "kiln.json").write_text(json.dumps(kiln))
    config = {
        "name": "enc",
        "max_batch_size": 8,
        "input": [{"name": n, "data_type": "TYPE_INT64"} for n in ("src", "past")],
        "output": [{"name": n, "data_type": "TYPE_INT64"} for n in ("src_out", "past_out")],
        "parameters": {},
    }
    return {"model_config": json.dumps(config), "model_repository": str(root), "model_version": "1"}


PARITY = {"parity": {"checks": [{"sizes": {"batch": 1, "src_len": 4, "past_len": 0}}]}}


def test_an_empty_axis_export_never_ran_is_refused_before_onnx_runtime_sees_it(onnx_model, tmp_path) -> None:
    """ONNX Runtime aborts the python stub on a GRU encoder fed a source of no tokens ('terminate
    called without an active exception', reproduced with gru_attention_encoder): Triton then answered
    'Stub process is not healthy' (500) to that request and to every later one. An axis export's parity
    checks ran at 0 (a decoder's empty cache) still runs; the request beside it in the batch is answered."""
    instance = onnx_model.TritonPythonModel()
    instance.initialize(_onnx_entry(tmp_path / "enc", PARITY))
    ones = np.ones((1, 2), np.int64)
    empty_source = _TensorRequest(src=np.ones((1, 0), np.int64), past=ones)
    empty_cache = _TensorRequest(src=ones, past=np.ones((1, 0), np.int64))
    refused, answered = instance.execute([empty_source, empty_cache])
    assert refused.error is not None and refused.error.code == _Error.INVALID_ARG
    assert refused.error.message == "model 'enc' cannot run on an empty dimension ('src' of shape [1, 0])"
    assert answered.error is None
    assert [(name, value.shape) for name, value in answered.outputs] == [
        ("src_out", (1, 2)),
        ("past_out", (1, 0)),
    ]


def test_an_onnx_entry_without_kiln_json_runs_empty_axes_as_before(onnx_model, tmp_path) -> None:
    instance = onnx_model.TritonPythonModel()
    instance.initialize(_onnx_entry(tmp_path / "enc", None))
    (answer,) = instance.execute(
        [_TensorRequest(src=np.ones((1, 0), np.int64), past=np.ones((1, 1), np.int64))]
    )
    assert answer.error is None and answer.outputs[0][1].shape == (1, 0)


class _Undecodable(str):
    """A text whose bytes on the wire are not UTF-8."""

    def encode(self, *_: object) -> bytes:
        return b"\xff\xfe"


def test_a_text_that_is_not_utf8_is_named_as_the_gateway_names_it(model) -> None:  # noqa: F811
    """Triton's ``<name>`` answered Python's codec message ("'utf-8' codec can't decode byte 0xff in
    position 0"), which names neither the text nor the rule; the gateway says which text."""
    (response,) = model.execute([_Request(["fine", _Undecodable("x")])])
    assert response.error.code == _Error.INVALID_ARG
    assert response.error.message == "texts[1] is not valid UTF-8"


def test_through_bls_a_beam_wider_than_the_decoder_entry_takes_is_the_requests_mistake(
    model,  # noqa: F811
) -> None:
    """Every beam of a sentence goes to ``<name>_decoder`` in one BLS call, which Triton refuses above
    its max_batch_size: the request failed as INTERNAL (500) after tokenizing; now INVALID_ARG (400)
    naming beam_size, and a beam that fits still decodes."""
    del model._translate  # the real one: the scripted stand-in would decode any beam
    model.steps, model.max_rows = "bls", 8
    model.source = None  # tokenizing must not be reached
    (response,) = model.execute([_Request(["twelve"], beam_size=16)])
    assert response.error.code == _Error.INVALID_ARG
    assert response.error.message == "beam_size=16 exceeds the decoder entry's max_batch_size=8"
    model.steps = "in_process"  # its own sessions: no entry's max_batch_size in the way
    model._check_rows(bs.BeamConfig(beam_size=16, n_best=1))


PYTHON_ENTRY = """name: "tr"
backend: "python"
max_batch_size: 4
input { name: "text" data_type: TYPE_STRING dims: [1] }
output { name: "translation" data_type: TYPE_STRING dims: [-1] }
parameters { key: "steps" value { string_value: "in_process" } }
"""


def test_the_thread_count_reaches_the_translators_own_sessions(tmp_path: Path) -> None:
    """``--threads`` (and the bench's ``TritonServer(threads=...)``) set the ONNX entries' threads only:
    the translator's ``<name>`` model, which runs its encoder and decoder in ONNX Runtime sessions of its
    own, read no ``intra_op_num_threads`` and always ran one thread."""
    entry = tmp_path / "repo" / "tr"
    (entry / "1").mkdir(parents=True)
    (entry / "config.pbtxt").write_text(PYTHON_ENTRY)
    (entry / "1" / "model.py").write_text("# the translator\n")
    report = derive_python_flavour(tmp_path / "repo", tmp_path / "out", threads=3)
    assert report.copied == ["tr"]
    copied = read_config(tmp_path / "out" / "tr" / "config.pbtxt")
    assert copied.parameters["intra_op_num_threads"].string_value == "3"
    assert copied.parameters["steps"].string_value == "in_process"
    copied.parameters.pop("intra_op_num_threads")
    assert copied == read_config(entry / "config.pbtxt")  # nothing else changed
    assert (tmp_path / "out" / "tr" / "1" / "model.py").read_text() == "# the translator\n"


def test_one_port_given_to_two_services_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """Triton exited on it after loading every model ('cannot listen to GRPC requests and metrics
    requests at the same address'), which the start took for a bind failure: three launches on redrawn
    HTTP ports, then its usage text as the error."""
    with pytest.raises(ValueError, match="^--grpc-port and --metrics-port are both 47123"):
        TritonServer(tmp_path, tmp_path / "work", grpc_port=47123, metrics_port=47123)
    TritonServer(tmp_path, tmp_path / "work", grpc_port=0, metrics_port=0)  # drawn: distinct


@pytest.mark.parametrize("port", [70000, -1])
def test_a_port_outside_the_tcp_range_is_refused(tmp_path: Path, port: int) -> None:
    """Triton took --http-port 70000 (bound 70000 mod 65536) and the launcher printed 'Triton ready:
    http 127.0.0.1:70000', an address no client can use."""
    with pytest.raises(ValueError, match=rf"^--http-port must be a port in 0-65535 .* got {port}"):
        TritonServer(tmp_path, tmp_path / "work", http_port=port)


@pytest.mark.parametrize(
    "flags",
    [["--http-port", "70000"], ["--metrics-port", "-5"], ["--threads", "0"], ["--ready-timeout", "-1"]],
)
def test_the_launcher_refuses_out_of_range_flags_as_usage_errors(tmp_path, capsys, flags) -> None:
    from serving.triton.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["--model-repository", str(tmp_path), *flags])
    assert exit_.value.code == 2 and flags[0] in capsys.readouterr().err


def test_a_missing_repository_names_the_command_that_writes_one(tmp_path, capsys) -> None:
    """``make export`` alone meant nothing to a user of the installed wheel, which has no Makefile."""
    from serving.triton.__main__ import main

    missing = tmp_path / "none"
    assert main(["--model-repository", str(missing)]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert f"model repository {missing} does not exist" in said
    assert f"python -m export CHECKPOINTS --repository {missing}" in said


def test_the_launcher_names_two_services_on_one_port(tmp_path, capsys) -> None:
    from serving.triton.__main__ import main

    code = main(["--model-repository", str(tmp_path), "--http-port", "47123", "--grpc-port", "47123"])
    assert code == 2
    assert "--http-port and --grpc-port are both 47123" in " ".join(capsys.readouterr().err.split())


class _StandInServer:
    """What the launcher uses of TritonServer; ``on_stop`` runs inside :meth:`stop`."""

    made: list[_StandInServer] = []
    start_error: Exception | None = None
    signal_in_stop = False
    host = address = "127.0.0.1"
    metrics_url = TritonServer.metrics_url  # the ready line's metrics URL, from metrics_port below

    def __init__(self, repository: Path, workdir: Path, **_: object) -> None:
        self.workdir, self.log_path, self.flavour = Path(workdir), Path(workdir) / "tritonserver.log", None
        self.http_url = self.grpc_url = "127.0.0.1:1"
        self.metrics_port = 47999  # as TritonServer draws it for --metrics-port 0
        self.process = SimpleNamespace(poll=self._poll)
        self.stopped = False
        _StandInServer.made.append(self)

    def start(self) -> None:
        (self.workdir / "model_repository").mkdir(parents=True)
        self.log_path.write_text("log\n")
        if self.start_error is not None:
            raise self.start_error

    def _poll(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while serving

    def stop(self) -> None:
        if self.signal_in_stop:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again while it stops
        self.stopped = True

    def log_tail(self) -> str:
        return "log"


@pytest.fixture
def launcher(monkeypatch: pytest.MonkeyPatch):
    """The launcher's main() over :class:`_StandInServer`, its signal handlers put back afterwards."""
    from serving.triton import __main__ as launcher_module

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setattr(launcher_module, "TritonServer", _StandInServer)
    monkeypatch.setattr(_StandInServer, "made", [])
    monkeypatch.setattr(_StandInServer, "signal_in_stop", False)
    yield launcher_module.main
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_second_ctrl_c_does_not_cut_the_stop_short(launcher, tmp_path: Path) -> None:
    """The second SIGINT raised KeyboardInterrupt inside stop(): a traceback, and the server's SIGKILL
    fallback, its stubs' process group and its shared memory sweep skipped."""
    _StandInServer.signal_in_stop = True
    try:
        code = launcher(["--model-repository", str(tmp_path), "--workdir", str(tmp_path / "work")])
    except KeyboardInterrupt:
        pytest.fail("the second signal escaped the launcher")
    (server,) = _StandInServer.made
    assert code == 0 and server.stopped


def test_the_default_temporary_workdir_goes_when_the_server_stops_and_stays_when_it_failed(
    launcher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each launch without --workdir left a copy of the whole repository in /tmp (69 MB found from one
    earlier run); a failed start keeps it, with the log its error points to."""
    import tempfile

    from serving.triton.server import TritonError

    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    assert launcher(["--model-repository", str(tmp_path / "tmp")]) == 0
    assert not _StandInServer.made[-1].workdir.exists()
    monkeypatch.setattr(_StandInServer, "start_error", TritonError("tritonserver exited"))
    assert launcher(["--model-repository", str(tmp_path / "tmp")]) == 1
    assert (_StandInServer.made[-1].workdir / "tritonserver.log").is_file()
    given = tmp_path / "given"
    monkeypatch.setattr(_StandInServer, "start_error", None)
    assert launcher(["--model-repository", str(tmp_path / "tmp"), "--workdir", str(given)]) == 0
    assert (given / "tritonserver.log").is_file()  # a directory the caller named is the caller's


def test_the_launcher_says_where_its_metrics_are(launcher, tmp_path: Path, capsys) -> None:
    """``--metrics-port 0`` drew a free port that the ready line never named: Triton's metrics could
    not be found."""
    assert launcher(["--model-repository", str(tmp_path), "--workdir", str(tmp_path / "work")]) == 0
    assert "metrics http://127.0.0.1:47999/metrics" in " ".join(capsys.readouterr().out.split())


def test_the_launchers_errors_go_to_stderr_and_nothing_to_stdout(tmp_path, capsys) -> None:
    """A script reading ``2>`` found nothing there: the errors were printed on stdout with the ready lines."""
    from serving.triton.__main__ import main

    assert main(["--model-repository", str(tmp_path / "none")]) == 2
    said = capsys.readouterr()
    assert "does not exist" in said.err and said.out == ""
