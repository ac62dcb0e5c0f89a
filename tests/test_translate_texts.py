"""What REST translate and KServe v2 take and give: one rule for a text (a character that str.strip
keeps), read alike by the published schema's pattern in every regex dialect and by the server (else a
422 on both), and the hypotheses of a search that finished fewer than n_best."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Annotated

import httpx
import pytest
from pydantic import StringConstraints, TypeAdapter, ValidationError

from serving.app import create_app
from serving.protocol.translate import request_schema
from serving.settings import Settings
from tests.repo_fixtures import LiveServer, held_grpc_port
from tests.test_translate_serving import exported_translators

NAME = "transformer"
PATTERN = request_schema()["properties"]["texts"]["items"]["pattern"]  # as the OpenAPI document has it
# Where regex dialects and str.isspace part ways: C0 separators, NEL, BOM, Mongolian vowel separator,
# zero-width space and word joiner, and whitespace every dialect agrees on.
EXOTIC = [
    "\x1c",
    "\x1d",
    "\x1e",
    "\x1f",
    "\x85",
    "\ufeff",
    "\u180e",
    "\u200b",
    "\u2060",
    "\u3000",
    "\u2028",
    "\xa0",
]


def _kept(text: str) -> bool:
    """What the translator takes: a text that is not empty once stripped."""
    return bool(text.strip())


def test_the_schemas_text_pattern_in_python_matches_exactly_the_characters_strip_keeps() -> None:
    refused = [c for c in map(chr, range(0x110000)) if (re.search(PATTERN, c) is not None) != _kept(c)]
    assert refused == []


def test_the_schemas_text_pattern_in_pydantics_regex_matches_exactly_the_characters_strip_keeps() -> None:
    adapter = TypeAdapter(Annotated[str, StringConstraints(pattern=PATTERN)])

    def accepted(text: str) -> bool:
        try:
            adapter.validate_python(text)
        except ValidationError:
            return False
        return True

    candidates = [c for c in map(chr, range(0x3001)) if c.isspace() or not c.isprintable()] + EXOTIC
    assert [hex(ord(c)) for c in candidates if accepted(c) != _kept(c)] == []


@pytest.mark.skipif(shutil.which("node") is None, reason="no node to read the pattern as ECMA-262 does")
def test_the_schemas_text_pattern_in_ecma_262_as_json_schema_reads_it_matches_what_strip_keeps() -> None:
    script = (
        "const re = new RegExp(process.argv[1]); const out = [];"
        "for (let c = 0; c < 0x110000; c++) { if (c >= 0xd800 && c < 0xe000) continue;"
        " if (!re.test(String.fromCodePoint(c))) out.push(c); } console.log(JSON.stringify(out));"
    )
    run = subprocess.run(
        ["node", "-e", script, PATTERN], capture_output=True, text=True, timeout=60, check=True
    )
    refused_by_ecma = set(json.loads(run.stdout))
    refused_by_strip = {c for c in range(0x110000) if not 0xD800 <= c < 0xE000 and not _kept(chr(c))}
    assert sorted(map(hex, refused_by_ecma ^ refused_by_strip)) == []


@pytest.fixture(scope="module")
def gateway(exported_translator_models, tmp_path_factory) -> Iterator[LiveServer]:
    repository = exported_translators(exported_translator_models, tmp_path_factory, "texts", (NAME,))
    with held_grpc_port() as grpc_port:
        settings = Settings(model_repository=repository, grpc_port=grpc_port, reuse_port=True)
        with LiveServer(create_app(settings)) as server:
            yield server


def _rest(server: LiveServer, texts: list[str]) -> httpx.Response:
    body = {"texts": texts, "max_length": 8}
    return httpx.post(f"http://{server.url}/v1/models/{NAME}/translate", json=body, timeout=60)


def _kserve(server: LiveServer, texts: list[str]) -> httpx.Response:
    body = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts), 1], "data": texts}],
        "parameters": {"max_length": 8},
    }
    return httpx.post(f"http://{server.url}/v2/models/{NAME}/infer", json=body, timeout=60)


@pytest.mark.parametrize("protocol", [_rest, _kserve], ids=["rest", "kserve"])
@pytest.mark.parametrize("char", EXOTIC, ids=[hex(ord(c)) for c in EXOTIC])
def test_a_text_of_exotic_characters_is_translated_or_refused_with_422_as_the_schema_says(
    gateway, protocol, char
) -> None:
    reply = protocol(gateway, ["twelve", char * 3])  # the second text: only the exotic character
    if re.search(PATTERN, char):
        assert reply.status_code == 200, reply.text
    else:
        assert reply.status_code == 422, reply.text
        assert reply.json()["error"] == "texts[1] is empty or only whitespace"


def test_rest_returns_the_hypotheses_the_search_found_where_kserve_pads_its_tensors_to_n_best(
    gateway,
) -> None:
    options = {"beam_size": 4, "n_best": 4, "max_length": 1}  # one step: fewer than 4 finish
    rest = httpx.post(
        f"http://{gateway.url}/v1/models/{NAME}/translate",
        json={"texts": ["twelve"], "return_scores": True, **options},
        timeout=60,
    )
    body = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["twelve"]}],
        "outputs": [{"name": "translation"}, {"name": "score"}],
        "parameters": options,
    }
    kserve = httpx.post(f"http://{gateway.url}/v2/models/{NAME}/infer", json=body, timeout=60)
    assert rest.status_code == kserve.status_code == 200, (rest.text, kserve.text)
    hypotheses = rest.json()["translations"][0]["hypotheses"]
    outputs = {o["name"]: o["data"] for o in kserve.json()["outputs"]}
    found = sum(score is not None for score in outputs["score"])
    assert 1 <= len(hypotheses) == found < 4  # what the search found, no padding
    assert all(isinstance(h["score"], float) and isinstance(h["normalized_score"], float) for h in hypotheses)
    assert [h["text"] for h in hypotheses] == outputs["translation"][:found]
    assert outputs["translation"][found:] == [""] * (4 - found)  # KServe's tensors: padded
    schema = httpx.get(f"http://{gateway.url}/openapi.json").json()["components"]["schemas"]
    assert "fewer" in schema["TranslationResult"]["properties"]["hypotheses"]["description"]  # as documented
