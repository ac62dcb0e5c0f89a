"""Triton python-backend model of a translator entry ``<name>``: tokenize, beam search, detokenize.

Copied by the exporter as ``<name>/<version>/model.py``, with ``serving/decoding/beam_search.py``
and ``serving/decoding/stepper.py`` beside it (``<version>/serving/decoding/``); those copies are
imported, so the search Triton runs is the one the entry was exported and parity-checked with. The encoder and decoder run as
BLS calls to the ``<name>_encoder`` / ``<name>_decoder`` entries named in kiln.json. Requests of one
``execute`` call that ask for the same decoding options are decoded together (all their beams in each
decoder call), in chunks that fit the encoder's and decoder's ``max_batch_size``.

Decoding options come from request parameters (``beam_size``, ``n_best``, ``max_length``,
``length_penalty``, ``alpha``); ``translation`` is BYTES ``[batch, n_best]``.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the serving/ copies beside model.py

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from serving.decoding import beam_search as bs  # noqa: E402
from serving.decoding import stepper  # noqa: E402

DEFAULTS = {"beam_size": 4, "n_best": 1, "max_length": 64, "length_penalty": "average", "alpha": 1.0}
LIMITS = {"beam_size": 16, "texts": 64, "chars": 1000}


def _tensor(name: str, array: np.ndarray):
    """A pb_utils.Tensor (the stub runs in the numpy-1 Triton python environment, see serving.triton)."""
    return pb_utils.Tensor(name, np.ascontiguousarray(array))


def _array(tensor) -> np.ndarray:
    """A request or BLS-response tensor as numpy."""
    return tensor.as_numpy()


def bls_runner(model: str, inputs: list[str], outputs: list[str]):
    """A stepper Runner calling another Triton model through BLS with only the inputs it declares.

    A per-row scalar (``tokens``, ``positions``: shape [rows]) is declared ``dims: [1]`` with an empty
    reshape, since a batched Triton input needs at least one dim: it travels as [rows, 1].
    """

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = []
        for name in inputs:
            value = feed[name]
            tensors.append(_tensor(name, value[:, None] if value.ndim == 1 else value))
        request = pb_utils.InferenceRequest(model_name=model, requested_output_names=outputs, inputs=tensors)
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{model}: {response.error().message()}")
        return {name: _array(pb_utils.get_output_tensor_by_name(response, name)) for name in outputs}

    return run


def _read_json(path: str) -> dict:
    with open(path) as handle:
        return json.load(handle)


def parse_options(raw: str | None) -> dict:
    """Decoding options from the request's JSON parameters, checked against the limits."""
    params = json.loads(raw) if raw else {}
    options = dict(DEFAULTS)
    for key, default in DEFAULTS.items():
        if key in params:
            value = params[key]
            options[key] = type(default)(value) if not isinstance(default, str) else str(value)
    if not 1 <= options["beam_size"] <= LIMITS["beam_size"]:
        raise ValueError(f"beam_size must be in [1, {LIMITS['beam_size']}], got {options['beam_size']}")
    return options


class TritonPythonModel:
    """Beam search over the ``<name>_encoder`` / ``<name>_decoder`` entries through BLS."""

    def initialize(self, args: dict) -> None:
        """Read kiln.json, the tokenizers and the sibling entries' tensors and batch limits."""
        here = args["model_repository"]  # this entry's directory
        kiln = _read_json(os.path.join(here, "kiln.json"))
        block = kiln["translator"]
        self.spec = stepper.parse_step_spec(block["step_spec"])
        self.source = Tokenizer.from_file(os.path.join(here, block["source_tokenizer"]))
        self.target = Tokenizer.from_file(os.path.join(here, block["target_tokenizer"]))
        parent = os.path.dirname(here)
        encoder = _read_json(os.path.join(parent, block["encoder"], "kiln.json"))
        decoder = _read_json(os.path.join(parent, block["decoder"], "kiln.json"))
        self.max_sentences = int(encoder.get("max_batch_size") or 64)
        self.max_rows = int(decoder.get("max_batch_size") or 256)
        self.run_encoder = bls_runner(
            block["encoder"], [t["name"] for t in encoder["inputs"]], list(self.spec.encoder_outputs)
        )
        self.run_decoder = bls_runner(
            block["decoder"],
            [t["name"] for t in decoder["inputs"]],
            list(self.spec.decoder_outputs),
        )

    def execute(self, requests: list) -> list:
        """Group requests by options, decode each group batched, answer each request (or its error)."""
        responses: list = [None] * len(requests)
        groups: dict[str, list[tuple[int, list[str]]]] = {}
        for i, request in enumerate(requests):
            try:
                options = parse_options(request.parameters())
                texts = self._texts(request)
                config = self._config(options)
            except Exception as error:  # noqa: BLE001 - a bad request gets its own error
                responses[i] = self._error(error)
                continue
            groups.setdefault(json.dumps(options, sort_keys=True), []).append((i, texts, config))
        for members in groups.values():
            config = members[0][2]
            texts = [t for _, ts, _ in members for t in ts]
            try:
                translations = self._translate(texts, config)
            except Exception as error:  # noqa: BLE001 - report to every request of the group
                for i, _, _ in members:
                    responses[i] = self._error(error)
                continue
            offset = 0
            for i, ts, _ in members:
                rows = translations[offset : offset + len(ts)]
                offset += len(ts)
                out = np.array([[h.encode() for h in hyps] for hyps in rows], dtype=np.object_)  # [b, n_best]
                responses[i] = pb_utils.InferenceResponse(output_tensors=[_tensor("translation", out)])
        return responses

    def _texts(self, request) -> list[str]:
        values = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
        texts = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
        for i, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"text[{i}] is empty")
            if len(text) > LIMITS["chars"]:
                raise ValueError(f"text[{i}] has {len(text)} characters; the limit is {LIMITS['chars']}")
        return texts

    def _config(self, options: dict) -> bs.BeamConfig:
        return bs.BeamConfig(
            beam_size=options["beam_size"], n_best=options["n_best"], max_length=options["max_length"],
            length_penalty=options["length_penalty"], alpha=options["alpha"],
            eos_id=self.spec.eos_id, bos_id=self.spec.bos_id,
        )  # fmt: skip

    def _translate(self, texts: list[str], config: bs.BeamConfig) -> list[list[str]]:
        """n_best texts per input, decoding as many sentences together as the entries allow."""
        ids = [e.ids for e in self.source.encode_batch(texts)]
        cap = self.spec.max_positions
        for i, row in enumerate(ids):
            if cap and len(row) + 1 > cap:
                raise ValueError(f"text[{i}] is {len(row) + 1} tokens long; the model takes {cap}")
        chunk = max(1, min(self.max_sentences, self.max_rows // config.beam_size))
        out: list[list[str]] = []
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            results = stepper.translate_ids(self.run_encoder, self.run_decoder, self.spec, part, config)
            out += [[self._detokenize(h.tokens) for h in self._padded(hyps, config)] for hyps in results]
        return out

    @staticmethod
    def _padded(hyps: list, config: bs.BeamConfig) -> list:
        missing = config.n_best - len(hyps)
        return hyps + [bs.Hypothesis([], float("-inf"), float("-inf"))] * max(0, missing)

    def _detokenize(self, tokens: list[int]) -> str:
        spec = self.spec
        kept = bs.output_tokens(tokens, eos_id=spec.eos_id, pad_id=spec.pad_id, bos_id=spec.bos_id)
        return self.target.decode(kept, skip_special_tokens=True)

    @staticmethod
    def _error(error: Exception):
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(error)))

    def finalize(self) -> None:
        self.run_encoder = self.run_decoder = None
