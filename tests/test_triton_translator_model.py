"""The Triton ``<name>`` translator model's answers, driven without Triton: a stand-in for
``triton_python_backend_utils`` and a scripted ``_translate`` (the decoding itself is proved against
the real server in test_translate_triton.py)."""

from __future__ import annotations

import importlib
import json
import sys
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

from serving.decoding import beam_search as bs


class _Error:
    INTERNAL, INVALID_ARG = "INTERNAL", "INVALID_ARG"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        self.message, self.code = message, code


class _Response:
    def __init__(self, output_tensors: list, error: _Error | None = None) -> None:
        self.outputs, self.error = output_tensors, error


class _Request:
    def __init__(self, texts: list[str], outputs: tuple[str, ...] = (), **options) -> None:
        self.texts, self.options, self.outputs = texts, options, list(outputs)

    def parameters(self) -> str:
        return json.dumps(self.options)

    def requested_output_names(self) -> list[str]:
        return self.outputs


def stand_in_pb_utils(monkeypatch: pytest.MonkeyPatch, tensor) -> ModuleType:  # noqa: ANN001
    """``triton_python_backend_utils`` as the python models use it, installed for the test: errors and
    responses recorded, ``get_input_tensor_by_name`` answering ``tensor(request, name)`` as numpy."""
    utils = ModuleType("triton_python_backend_utils")
    utils.TritonError, utils.InferenceResponse = _Error, _Response
    utils.Tensor = lambda name, array: (name, array)
    utils.get_input_tensor_by_name = lambda request, name: SimpleNamespace(
        as_numpy=lambda: tensor(request, name)
    )
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    return utils


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch):
    stand_in_pb_utils(
        monkeypatch, lambda request, name: np.array([[t.encode()] for t in request.texts], dtype=np.object_)
    )
    monkeypatch.setattr(sys, "path", list(sys.path))  # the model puts its own directory first
    monkeypatch.delitem(sys.modules, "serving.triton.translator_model", raising=False)
    module = importlib.import_module("serving.triton.translator_model")  # bound to this stand-in
    instance = module.TritonPythonModel()
    instance.spec = SimpleNamespace(max_positions=64, eos_id=2, bos_id=1)

    def translate(texts: list[str], config: bs.BeamConfig) -> list[list[tuple[str, float, float]]]:
        if "poison" in texts:
            raise ValueError("texts[0] is 99 tokens long; the model takes 64")
        return [[(t.upper(), -0.25 * j, -0.5 * j - 1) for j in range(config.n_best)] for t in texts]

    instance._translate = translate
    yield instance
    sys.modules.pop("serving.triton.translator_model", None)  # nothing else may find it bound to it


def test_a_request_whose_texts_fail_its_group_fails_alone_as_invalid_arg(model) -> None:
    requests = [_Request(["one"]), _Request(["poison"]), _Request(["two", "three"])]
    responses = model.execute(requests)
    assert responses[1].error is not None and responses[1].error.code == _Error.INVALID_ARG
    assert "99 tokens" in responses[1].error.message
    assert [r.error for r in (responses[0], responses[2])] == [None, None]
    assert responses[0].outputs[0][1].tolist() == [[b"ONE"]]
    assert responses[2].outputs[0][1].tolist() == [[b"TWO"], [b"THREE"]]


def test_bad_options_are_invalid_arg_and_leave_the_others_answered(model) -> None:
    responses = model.execute([_Request(["one"], beam_size=99), _Request(["two"])])
    assert responses[0].error.code == _Error.INVALID_ARG and "beam_size" in responses[0].error.message
    assert responses[1].error is None


def test_the_model_answers_translation_and_score_as_the_gateways_translators_do(model) -> None:
    """Triton's ``<name>`` answered ``translation`` alone: a tritonclient user got no ``score`` from
    Triton where the gateway's translators give one. Both, [b, n_best], unless the request names one."""
    from serving.decoding.translator import OUTPUTS

    module = sys.modules["serving.triton.translator_model"]
    assert tuple(name for name, _ in OUTPUTS) == module.OUTPUTS
    both, named = model.execute([_Request(["a", "b"], n_best=2), _Request(["c"], outputs=("score",))])
    answers = dict(both.outputs)
    assert answers["translation"].tolist() == [[b"A", b"A"], [b"B", b"B"]]
    assert answers["score"].dtype == np.float32 and answers["score"].tolist() == [[0.0, -0.25], [0.0, -0.25]]
    assert answers["raw_score"].dtype == np.float32  # the sums, beside the normalized scores
    assert answers["raw_score"].tolist() == [[-1.0, -1.5], [-1.0, -1.5]]
    assert [name for name, _ in both.outputs] == ["translation", "score", "raw_score"]  # none named: all
    assert [name for name, _ in named.outputs] == ["score"]
