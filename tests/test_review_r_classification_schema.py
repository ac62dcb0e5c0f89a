"""The KServe v2 OpenAPI document's ``classification`` count says what the server takes: an integer from 0
to int64's largest (``v2_codec.MAX_CLASSIFICATION``); past it the server answers 400 on every backend, so
a schema with no maximum described requests (a generated client's, a fuzzer's) the server refuses."""

from __future__ import annotations

import jsonschema
import pytest

from serving.errors import BadRequest
from serving.protocol.v2_codec import MAX_CLASSIFICATION, classification_count
from serving.protocol.v2_openapi import REQUESTED_OUTPUT


def _schema_allows(count: int) -> bool:
    output = {"name": "probs", "parameters": {"classification": count}}
    return jsonschema.Draft202012Validator(REQUESTED_OUTPUT).is_valid(output)


@pytest.mark.parametrize("count", [0, 3, MAX_CLASSIFICATION, MAX_CLASSIFICATION + 1, 2**70, -1])
def test_the_schema_allows_exactly_the_counts_the_server_takes(count: int) -> None:
    try:
        classification_count("probs", count)
        taken = True
    except BadRequest:
        taken = False
    assert _schema_allows(count) == taken
