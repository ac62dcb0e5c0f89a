"""KServe v2 HTTP infer bodies: JSON tensors plus the binary tensor data extension, both directions.

A request body is a JSON header (``Inference-Header-Content-Length`` bytes long when binary data
follows) and then each binary input's bytes in input order; responses mirror it. Every malformed
body is a :class:`BadRequest` naming what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.errors import BadRequest
from serving.execution.base import InferRequest, InferResponse, model_parameters
from serving.execution.datatypes import datatype_of, numpy_dtype
from serving.protocol.request_values import parse_json, stated_size, unicode_text
from serving.protocol.tensors import from_bytes, from_json_data, to_bytes, to_json_data

HEADER_LENGTH = "Inference-Header-Content-Length"
SERVER_NAME = "kiln"
# what the server metadata names, over HTTP and gRPC alike (serving.protocol.statistics: "statistics"),
# each a Triton extension the gateway serves as Triton does: "schedule_policy" the ``priority`` and
# ``timeout`` request parameters, "parameters" a request's own (a translator's decoding options), as
# Triton names them; not "sequence", "model_repository" (no load or unload), shared memory, trace, logging
EXTENSIONS = [
    "classification",
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "schedule_policy",
    "parameters",
]
MAX_TIMEOUT_US = 2**63 - 1  # Triton reads the ``timeout`` parameter as an int64 of microseconds
# Triton reads an output's ``classification`` count as gRPC's int64_param (its HTTP frontend ignored
# one past it), and ``--backend triton`` forwards it in one: a larger count was a 500 there
MAX_CLASSIFICATION = 2**63 - 1
# Triton's extensions the gateway does not serve, each with what a client should do instead: their
# HTTP routes answer 501 and their gRPC methods UNIMPLEMENTED with it (a bare "Not Found" or "Method
# not found" left perf_analyzer --shared-memory users guessing)
NOT_SERVED = {
    "shared_memory": "the gateway has no shared-memory extension (its server metadata lists those it "
    "has): send the tensors in the request (perf_analyzer: without --shared-memory)",
    "model_load": "the gateway loads no models while it runs: it serves the repository it started with "
    "(the repository index lists them; restart it to change them)",
    "trace": "the gateway has no trace extension (its metrics are at GET /metrics)",
    "logging": "the gateway has no logging extension: its log level is --log-level at start",
}


def server_version() -> str:
    """The installed kiln package's version ("0" where it is not installed, e.g. a bare checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kiln")
    except PackageNotFoundError:
        return "0"


@dataclass
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0


@dataclass
class ParsedInfer:
    request: InferRequest
    outputs: list[RequestedOutput] | None  # None: every output, in binary when binary_default
    binary_default: bool


def parse_infer(body: bytes, header_length: str | None, model: str, version: str) -> ParsedInfer:
    """Decode an infer request body into an :class:`InferRequest`."""
    header, tail = _split(body, header_length)
    if not isinstance(header, dict):
        raise BadRequest("infer request must be a JSON object")
    params = _dict(header.get("parameters"), "parameters")
    check_parameter_values(params)
    inputs, offset = {}, 0
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("infer request needs a non-empty 'inputs' list")
    for raw in raw_inputs:
        name, array, offset = _parse_input(raw, tail, offset)
        if name in inputs:
            raise BadRequest(f"input {name!r} is given more than once")
        inputs[name] = array
    if offset != len(tail):
        raise BadRequest(f"{len(tail) - offset} byte(s) of binary data after the last binary input")
    binary_default = _flag(params, "binary_data_output", False, "parameters")
    outputs = _parse_outputs(header.get("outputs"), binary_default)
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise BadRequest(f"'id' must be a string, got {type(request_id).__name__}")
    unicode_text(request_id, "'id'")
    request = InferRequest(
        model=model,
        inputs=inputs,
        version=version,
        outputs=[o.name for o in outputs] if outputs is not None else None,
        parameters=model_parameters(params),  # they reach the backend (e.g. a translator's beam_size)
        request_id=request_id,
        timeout_s=_timeout(params),
        priority=params.get("priority", 0),
        classification={o.name: o.classification for o in outputs or [] if o.classification},
    )
    return ParsedInfer(request, outputs, binary_default)


def encode_infer(response: InferResponse, parsed: ParsedInfer) -> tuple[bytes, int | None]:
    """The response body and, when binary outputs follow the JSON, the JSON header's length."""
    binary = {o.name: o.binary for o in parsed.outputs} if parsed.outputs is not None else {}
    entries, blobs = [], []
    for name, array in response.outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if binary.get(name, parsed.binary_default):
            blob = to_bytes(np.asarray(array))
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = to_json_data(np.asarray(array))
        entries.append(entry)
    header: dict[str, Any] = {"model_name": response.model, "model_version": response.version}
    if parsed.request.request_id:
        header["id"] = parsed.request.request_id
    header["outputs"] = entries
    text = json.dumps(header, allow_nan=False).encode()  # valid JSON only (to_json_data)
    if not blobs:
        return text, None
    return b"".join((text, *blobs)), len(text)  # one copy of a large answer, not two


def json_values(response: InferResponse, parsed: ParsedInfer) -> int:
    """How many values :func:`encode_infer` writes as JSON (the outputs not asked for in binary)."""
    if parsed.outputs is None:
        return 0 if parsed.binary_default else sum(np.size(a) for a in response.outputs.values())
    binary = {o.name: o.binary for o in parsed.outputs}
    return sum(np.size(a) for n, a in response.outputs.items() if not binary.get(n, parsed.binary_default))


def check_requested_output(name: str, parameters: Any) -> None:
    """Refuse an output written to a shared-memory region: Kiln has no shared-memory extension
    (outputs travel in the response)."""
    if "shared_memory_region" in parameters:
        raise BadRequest(
            f"output {name!r}: shared memory is not supported here (outputs travel in the response)"
        )


def is_repeat(name: str, asked: Any, earlier: dict[str, Any]) -> bool:
    """Whether an output was already requested (``earlier``: name to what it asked for). Triton 2.51
    answers an output listed twice alike once, so it is skipped; listed twice asking for different
    things (binary or JSON, a classification count) it is refused, which Triton's HTTP and gRPC
    endpoints each settle their own way (the first entry wins over HTTP, a classification over gRPC)."""
    if name not in earlier:
        earlier[name] = asked
        return False
    if earlier[name] != asked:
        raise BadRequest(f"output {name!r} is requested twice with different parameters")
    return True


def _split(body: bytes, header_length: str | None) -> tuple[Any, memoryview]:
    if header_length is None:
        size = len(body)
    else:
        stated = header_length.strip()
        size = stated_size(stated)  # None: not digits
        if size is None:
            raise BadRequest(f"{HEADER_LENGTH} must be a non-negative integer, got {header_length[:40]!r}")
        if size == 0:  # Triton serves it; "is 0 but the body has N bytes" read as a miscounted header
            raise BadRequest(
                f"{HEADER_LENGTH} 0 is Triton's raw binary request (the whole body one input's data), "
                "which the gateway does not serve: send a JSON header giving each input's binary_data_size"
            )
        if size > len(body):
            shown = stated if len(stated) <= 40 else f"{stated[:40]}... ({len(stated)} digits)"
            raise BadRequest(f"{HEADER_LENGTH} is {shown} but the body has {len(body)} bytes")
    header = parse_json(body[:size] if size < len(body) else body, "infer request header")
    return header, memoryview(body)[size:]  # binary tensors stay views into the body


def _parse_input(raw: Any, tail: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise BadRequest("each input must be an object with a string 'name'")
    name = raw["name"]
    datatype, shape = raw.get("datatype"), raw.get("shape")
    if not isinstance(datatype, str):
        raise BadRequest(f"input {name!r}: 'datatype' must be a string")
    numpy_dtype(datatype, tensor=name)
    parameters = _dict(raw.get("parameters"), f"input {name!r} parameters")
    if "shared_memory_region" in parameters:  # not "needs 'data'": the client sent it, in a region
        raise BadRequest(f"input {name!r}: shared memory is not supported here (send the data)")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in raw:
            raise BadRequest(f"input {name!r}: needs 'data' or a 'binary_data_size' parameter")
        return name, from_json_data(raw["data"], datatype, shape, tensor=name), offset
    if type(size) is not int or size < 0:  # (a bool is no size either)
        raise BadRequest(
            f"input {name!r}: binary_data_size must be a non-negative integer, got {repr(size)[:40]}"
        )
    if "data" in raw:  # which one the client meant is not ours to guess (Triton refuses both too)
        raise BadRequest(f"input {name!r}: both 'data' and a 'binary_data_size' parameter; send one")
    if offset + size > len(tail):
        raise BadRequest(
            f"input {name!r}: binary_data_size {size!r} does not fit the {len(tail)} bytes of binary data"
        )
    return name, from_bytes(tail[offset : offset + size], datatype, shape, tensor=name), offset + size


def _parse_outputs(raw: Any, binary_default: bool) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadRequest("'outputs' must be a list")
    outputs: list[RequestedOutput] = []
    earlier: dict[str, RequestedOutput] = {}
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest("each requested output must be an object with a string 'name'")
        params = _dict(item.get("parameters"), f"output {item['name']!r} parameters")
        check_requested_output(item["name"], params)
        count = classification_count(item["name"], params.get("classification", 0))
        binary = _flag(params, "binary_data", binary_default, f"output {item['name']!r} parameters")
        wanted = RequestedOutput(item["name"], binary, count)
        if not is_repeat(wanted.name, wanted, earlier):
            outputs.append(wanted)
    return outputs


def classification_count(output: str, count: Any) -> int:
    """An output's ``classification`` count (0: none), over HTTP and gRPC alike: an integer from 0 to
    ``MAX_CLASSIFICATION``, else the client's 400 naming it (2**70 ran here as "every class", and
    through ``--backend triton`` tritonclient.grpc's ValueError was a 500)."""
    if type(count) is not int or not 0 <= count <= MAX_CLASSIFICATION:  # (a bool is no count either)
        raise BadRequest(
            f"output {output!r}: classification must be a non-negative integer within int64 "
            f"(at most {MAX_CLASSIFICATION}), got {repr(count)[:40]}"
        )
    return count


def check_parameter_values(params: dict) -> None:
    """A request parameter is a string, a number or a boolean, as Triton reads them (and as gRPC's
    InferParameter can carry them: an integer within 64 bits): Triton answers any other a 400, and
    through ``--backend triton`` tritonclient could not forward one (a 500). Infer and generate
    requests alike."""
    for key, value in params.items():
        unicode_text(key, f"parameter name {key!r}")
        if isinstance(value, str):
            unicode_text(value, f"parameter {key!r}")
        if not isinstance(value, (str, int, float)):  # (a bool is an int)
            kind = "null" if value is None else type(value).__name__
            raise BadRequest(f"parameter {key!r} must be a string, a number or a boolean, got {kind}")
        if isinstance(value, int) and not -(1 << 63) <= value < 1 << 64:
            digits = str(value)
            shown = digits if len(digits) <= 40 else f"{digits[:40]}... ({len(digits)} digits)"
            raise BadRequest(
                f"parameter {key!r} is past 64 bits (an InferParameter holds int64 or uint64): {shown}"[:200]
            )
    check_priority(params)
    check_sequence(params, signed_ids=False)


def check_sequence(params: dict, *, signed_ids: bool) -> None:
    """Triton's ``sequence_id`` / ``sequence_start`` / ``sequence_end``, refused where Triton refuses
    them (an id that is neither a string nor an integer, over HTTP one below 0 as Triton reads it
    unsigned; a start or end flag that is not a boolean), so a typo such as ``"sequence_end": "true"``
    is named rather than passed over. Well-formed ones are accepted and ignored, as Triton ignores them
    for a model without a sequence batcher (Kiln exports none)."""
    ident = params.get("sequence_id", 0)
    if not isinstance(ident, str) and (type(ident) is not int or (ident < 0 and not signed_ids)):
        lowest = "" if signed_ids else " from 0"
        raise BadRequest(
            f"parameter 'sequence_id' must be a string or an integer{lowest}, got {repr(ident)[:40]}"
        )
    for flag in ("sequence_start", "sequence_end"):
        if not isinstance(params.get(flag, False), bool):
            raise BadRequest(f"parameter {flag!r} must be true or false, got {repr(params[flag])[:40]}")


def check_priority(params: dict) -> None:
    """Triton's ``priority`` parameter, over HTTP and gRPC alike: refused where Triton refuses it
    (anything but an integer from 0), so a client's mistake shows here as it would there. Any other
    is the request's level where its model's config has ``priority_levels`` (0, or one past the last
    level, is the default level, as Triton reads it: :meth:`BatchPolicy.level`)."""
    priority = params.get("priority", 0)
    if type(priority) is not int or priority < 0:
        raise BadRequest(
            f"parameter 'priority' must be an integer from 0 (the default level), got {repr(priority)[:40]}"
        )


def _timeout(params: dict) -> float | None:
    timeout = params.get("timeout")
    return None if timeout is None else timeout_seconds(timeout)


def timeout_seconds(timeout: object) -> float | None:
    """A request's ``timeout`` parameter (Triton's: an integer of microseconds) in seconds, over HTTP
    and gRPC alike; 0 is no timeout, as Triton reads it (its default); anything but an integer from 0
    to ``MAX_TIMEOUT_US`` is refused, naming it."""
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 0 <= timeout <= MAX_TIMEOUT_US:
        raise BadRequest(
            f"parameter 'timeout' must be a number of microseconds from 0 (none) to {MAX_TIMEOUT_US}, "
            f"got {repr(timeout)[:40]}"
        )
    return timeout / 1e6 if timeout else None


def _flag(params: dict, name: str, default: bool, what: str) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{what}: {name!r} must be true or false, got {type(value).__name__}")
    return value


def _dict(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value
