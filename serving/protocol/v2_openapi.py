"""The KServe v2 infer body as an OpenAPI schema: what ``parse_infer`` accepts, and what infer answers.

Kept beside the codec and written by hand because the body is parsed by hand (the binary tensor data
extension is not JSON); the fields and bounds here are the ones :mod:`serving.protocol.v2_codec` and
:mod:`serving.protocol.tensors` enforce with a 400.
"""

from __future__ import annotations

from typing import Any

from serving.execution.datatypes import DATATYPE_TO_NUMPY
from serving.protocol.limits import CONTENT_ENCODING_PARAMETER
from serving.protocol.tensors import MAX_DIMS
from serving.protocol.v2_codec import HEADER_LENGTH, MAX_CLASSIFICATION, MAX_TIMEOUT_US

_OBJECT: dict[str, Any] = {"type": "object"}
_BINARY: dict[str, Any] = {"type": "string", "format": "binary"}
_SHAPE = {"type": "array", "maxItems": MAX_DIMS, "items": {"type": "integer", "minimum": 0}}

INPUT_TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string", "enum": sorted(DATATYPE_TO_NUMPY)},
        "shape": _SHAPE,
        "parameters": {
            "type": "object",
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
        },
        "data": {"type": "array", "description": "row-major values, flat or nested lists"},
    },
}
REQUESTED_OUTPUT = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "parameters": {
            "type": "object",
            "properties": {
                "binary_data": {"type": "boolean"},
                "classification": {"type": "integer", "minimum": 0, "maximum": MAX_CLASSIFICATION},
            },
        },
    },
}
INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "description": "protocol parameters below; any other reaches the model (e.g. beam_size)",
            "properties": {
                "binary_data_output": {"type": "boolean"},
                "timeout": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": MAX_TIMEOUT_US,
                    "description": "microseconds, as Triton reads them (0: none, its default)",
                },
                "priority": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Triton's priority level where the config has priority_levels (1: the "
                    "highest; 0, or one out of range: the config's default_priority_level)",
                },
            },
            "additionalProperties": {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]},
        },
        "inputs": {"type": "array", "minItems": 1, "items": INPUT_TENSOR},
        "outputs": {"type": "array", "items": REQUESTED_OUTPUT},
    },
}
INFER_BODY: dict[str, Any] = {
    "parameters": [
        {
            "name": HEADER_LENGTH,
            "in": "header",
            "required": False,
            "description": "length of the JSON header when binary tensor data follows it",
            "schema": {"type": "integer", "minimum": 1},
        },
        CONTENT_ENCODING_PARAMETER,
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": INFER_REQUEST},
            "application/octet-stream": {
                "schema": _BINARY,
                "description": f"binary tensor data extension: a JSON header ({HEADER_LENGTH} bytes) "
                "then each binary input's bytes in order",
            },
        },
    },
}
OUTPUT_TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "data": {"type": "array"},
        "parameters": _OBJECT,
    },
}
INFER_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "outputs as JSON, or a JSON header and binary outputs when binary data was asked",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["model_name", "outputs"],
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "id": {"type": "string"},
                        "outputs": {"type": "array", "items": OUTPUT_TENSOR},
                    },
                }
            },
            "application/octet-stream": {"schema": _BINARY},
        },
    }
}
