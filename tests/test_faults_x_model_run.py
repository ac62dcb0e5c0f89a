"""A model run that ONNX Runtime fails for another reason than its input (out of memory, a kernel's own
error): its requests are answered a 500 naming the model and ONNX Runtime's error, as Triton's
onnxruntime backend answers it, and the model serves the next request."""

from __future__ import annotations

from pathlib import Path

from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

from serving.execution import loaded_model
from tests.repo_fixtures import repository_client
from tests.test_repo_g_preprocessing import GOOD, _entry

ORT_ERROR = (
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Mul node. "
    "Failed to allocate memory for requested buffer of size 1024"
)
BODY = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 4, 4, 1], "data": [1] * 16}]}


def test_a_run_onnx_runtime_fails_is_a_500_naming_the_model_and_the_error_and_the_next_request_runs(
    tmp_path: Path, monkeypatch
) -> None:
    """It was ``internal error: RuntimeException``, what the gateway answers for a bug of its own, with
    ONNX Runtime's reason in the log alone."""
    _entry(tmp_path, "m", GOOD)
    real = loaded_model.LoadedModel._run
    failures = [RuntimeException(ORT_ERROR)]

    def fails_once(self, instance, inputs):
        if failures:
            raise failures.pop()
        return real(self, instance, inputs)

    monkeypatch.setattr(loaded_model.LoadedModel, "_run", fails_once)
    with repository_client(tmp_path) as client:
        failed = client.post("/v2/models/m/infer", json=BODY)
        served = client.post("/v2/models/m/infer", json=BODY)
        metrics = client.get("/metrics").text
    assert failed.status_code == 500
    assert (
        failed.json()["error"] == f"model 'm': ONNX Runtime failed to run it: RuntimeException: {ORT_ERROR}"
    )
    assert served.status_code == 200
    assert 'kiln_request_failures_total{model="m",status="500"} 1.0' in metrics
