"""Property-based fuzzing of the gateway's published OpenAPI with schemathesis: every operation, seeded,
no server error, no response outside its documented status, content type or schema, and the gateway
still ready afterwards.

The suite runs a few examples per operation (bounded: well under a minute). The long run, e.g.
``KILN_FUZZ_EXAMPLES=100 pytest tests/test_gateway_openapi.py``, also serves a translator so translate
bodies reach beam search, and generates thousands of cases.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from serving.app import create_app
from serving.settings import Settings
from tests.repo_fixtures import LiveServer, build_classifier_repository

SUITE_EXAMPLES = 5
EXAMPLES = int(os.environ.get("KILN_FUZZ_EXAMPLES", SUITE_EXAMPLES))  # per operation and phase
SEED = int(os.environ.get("KILN_FUZZ_SEED", "1130"))
LONG_RUN = EXAMPLES > SUITE_EXAMPLES

# A schema-valid request may still be refused for what a schema cannot express: image bytes that do
# not decode or tensors that do not fit the model (400), an unknown model (404), a body or image over
# the size limit (413); never with a 422 (that is the schema's job) and never with a 5xx. Translate
# also refuses n_best > beam_size and max_length above the model's own max_positions with a 422.
CONFIG = """
[dictionaries.models]
values = {models}

[parameters]
"path.name" = {{ dictionary = "models", probability = 0.9 }}

[checks]
positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "413"]
negative_data_rejection.expected-statuses = ["400", "404", "405", "413", "415", "422"]

[[operations]]
include-path = "/v1/models/{{name}}/translate"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "413", "422"]
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> LiveServer:
    root = tmp_path_factory.mktemp("fuzz")
    repository = build_classifier_repository(root / "model_repository")
    models = ["lenet"]
    if LONG_RUN:
        from tests.test_translate_serving import build_translator_repository

        build_translator_repository(root, ("transformer",))
        models.append("transformer")
    settings = Settings(model_repository=repository, grpc_port=0, max_body_bytes=1 << 20)
    with LiveServer(create_app(settings)) as live:
        live.models = models
        yield live


def test_fuzzing_the_openapi_finds_no_server_error_and_no_schema_violation(gateway, tmp_path: Path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(models=gateway.models))
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"http://{gateway.url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "60",
        "--generation-database",
        "none",
        "--phases",
        "examples,coverage,fuzzing" + (",stateful" if LONG_RUN else ""),
    ]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=1800)
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    generated = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert generated and generated.group(1) == generated.group(2), report
    print(f"schemathesis: {generated.group(0)} (seed {SEED})")
    assert httpx.get(f"http://{gateway.url}/v2/health/ready").status_code == 200


def test_the_openapi_document_lists_real_statuses_content_types_and_no_phantom_parameter():
    schema = create_app(Settings(grpc_port=0)).openapi()
    operations = {(m.upper(), p): op for p, ops in schema["paths"].items() for m, op in ops.items()}
    for key, operation in operations.items():
        assert not [p for p in operation.get("parameters", []) if p["in"] == "query"], key
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")):
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorBody"
                }, (key, status)
    for probe in ("/v2/health/live", "/v2/health/ready", "/v2/models/{name}/ready"):
        assert not operations[("GET", probe)]["responses"]["200"].get("content"), probe
    assert list(operations[("GET", "/metrics")]["responses"]["200"]["content"]) == [CONTENT_TYPE_LATEST]
    infer = operations[("POST", "/v2/models/{name}/infer")]["responses"]
    assert sorted(infer) == ["200", "400", "404", "413", "415", "422", "429", "503", "504"]
    assert "Retry-After" in infer["429"]["headers"]
    assert "Accept-Encoding" in infer["415"]["headers"]
    texts = operations[("POST", "/v1/models/{name}/translate")]["requestBody"]["content"]["application/json"]
    assert texts["schema"]["properties"]["texts"]["items"]["minLength"] == 1


def test_no_route_runs_a_dependency_or_its_endpoint_on_a_worker_thread():
    """FastAPI runs a plain ``def`` dependency or endpoint on a worker thread: a thread hop per request
    (four on an infer request before they were made async: HTTP c=64 1 353 -> 1 736 infer/s)."""
    import inspect

    from fastapi.routing import APIRoute

    def calls(dependant):
        yield dependant.call
        for sub in dependant.dependencies:
            yield from calls(sub)

    from serving.protocol import health, metrics, translate, v1, v2

    routers = (translate.router, health.router, v2.router, v1.router, metrics.router)  # create_app's
    routes = [r for router in routers for r in router.routes if isinstance(r, APIRoute)]
    assert len(routes) > 10
    threaded = {
        (route.path, getattr(call, "__name__", call))
        for route in routes
        for call in calls(route.dependant)
        if call is not None and not inspect.iscoroutinefunction(call)
    }
    assert not threaded, f"these run on a worker thread per request: {sorted(threaded)}"
