"""Triton python-backend model of a translator entry ``<name>``: tokenize, beam search, detokenize.

Copied by the exporter as ``<name>/<version>/model.py``, with ``serving/decoding/beam_search.py``,
``options.py``, ``compiled_step.py``, ``native.py``, ``beam_step.c``, ``ort_step.c`` and
``attention.c`` (the compiled step, built on first use into one library), ``native_decoder.py`` (with
``serving/execution/runner.py``), ``native_batch.py``, ``rows.py``, ``step_spec.py``, ``stepper.py`` and
``offline.py`` beside it
(``<version>/serving/decoding/``); those copies are imported, so the search Triton runs is the one
the entry was exported and parity-checked with. Where the encoder and decoder run is the config's
``steps`` parameter: ``in_process`` (what a CPU export writes) opens the ``<name>_encoder`` /
``<name>_decoder`` entries' graphs (named in kiln.json; the newest version their config's
``version_policy`` serves, as the gateway picks it: ``serving/execution/version_policy.py``, copied
beside ``runner.py``) in this model's own
ONNX Runtime sessions, as the gateway's decode workers do: the fused-attention graph and the
decoder's steps compiled (``native_decoder.py``), one intra-op thread per instance by default
(``intra_op_num_threads``), each instance with its own copy of the weights; ``bls`` (what a GPU export
writes, so that Triton's GPU entries compute) calls those entries through BLS at every step, two
round trips a step with the cache in them. Requests of one
``execute`` call that ask for the same decoding options are decoded together (all their beams in each
decoder call), in batches of similar source lengths that fit the encoder's and decoder's
``max_batch_size`` (:func:`serving.decoding.offline.translate_in_batches`).

Decoding options come from request parameters (``beam_size``, ``n_best``, ``max_length``,
``length_penalty``, ``alpha``); ``translation`` is BYTES ``[batch, n_best]``, ``score`` FP32
``[batch, n_best]`` (each hypothesis's length-normalized log-probability) and ``raw_score`` FP32
``[batch, n_best]`` (its sum of log-probabilities), padded with empty texts scored -inf where a search
found fewer, as the gateway's own translators answer them; a request naming no output gets all three
(KServe v2).
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
from serving.decoding import native_decoder, offline, step_spec  # noqa: E402
from serving.decoding.options import options_from_parameters  # noqa: E402
from serving.execution.version_policy import served_version  # noqa: E402


def _tensor(name: str, array: np.ndarray):
    """A pb_utils.Tensor (the stub runs in the numpy-1 Triton python environment, see serving.triton)."""
    return pb_utils.Tensor(name, np.ascontiguousarray(array))


def _array(tensor) -> np.ndarray:
    """A request or BLS-response tensor as numpy."""
    return tensor.as_numpy()


OUTPUTS = ("translation", "score", "raw_score")  # the gateway's translators' (serving/decoding/translator.py)


def _requested(request) -> set[str]:
    """The outputs ``request`` asks for; every output where it names none (KServe v2's rule)."""
    names = getattr(request, "requested_output_names", lambda: [])()
    return set(names or OUTPUTS)


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


def _text(value: object, index: int) -> str:
    """A BYTES element as text; invalid UTF-8 is the request's mistake, named as the gateway names it."""
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"texts[{index}] is not valid UTF-8") from None


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def tokenizer_path(here: str, block: dict, field: str) -> str:
    """The file kiln.json's ``translator.<field>`` names in the entry directory ``here``, refused as the
    gateway refuses it (``serving.decoding.translator.tokenizer_path``, not copied beside this file): a
    name that is not a relative path inside the entry (absolute, or with a ``..`` part) is a ValueError
    naming kiln.json and the field, where ``os.path.join`` read a file outside the entry."""
    name = block.get(field, f"{field}.json")
    parts = name.replace(os.sep, "/").split("/") if isinstance(name, str) else []
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in parts:
        raise ValueError(
            f"{os.path.join(here, 'kiln.json')}: 'translator.{field}' must name a file in the entry's "
            f"directory (a relative path without '..', as export writes {field}.json), got {name!r}"
        )
    return os.path.join(here, name)


def step_entry(here: str, block: dict, field: str) -> str:
    """The repository entry kiln.json's ``translator.<field>`` (``encoder`` / ``decoder``) names, a
    sibling of the entry directory ``here``, refused unless a plain entry name (a non-empty string, no
    path separator, not ``.`` or ``..``), as the gateway finds it only among the repository's entries
    (``serving.decoding.translator_pool.step_entries``): a ValueError naming kiln.json and the field,
    where ``os.path.join`` read another directory's kiln.json and graph."""
    name = block.get(field)
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or os.sep in name
        or (os.altsep is not None and os.altsep in name)
    ):
        raise ValueError(
            f"{os.path.join(here, 'kiln.json')}: 'translator.{field}' must name an entry of the model "
            f"repository (a directory name without '/', as export writes <name>_{field}), got {name!r}"
        )
    return name


def parse_options(raw: str | None, max_positions: int | None = None) -> bs.DecodingOptions:
    """Decoding options from the request's JSON parameters, checked against the gateway's own limits."""
    options = options_from_parameters(json.loads(raw) if raw else {})
    bs.check_options(options, bs.LIMITS, max_positions)
    return options


STEPS = ("in_process", "bls")


def _cancelled(request) -> bool:
    """Whether the client cancelled ``request`` (a gRPC call it cancelled; the python backend's
    ``is_cancelled``): its beam search would run in full for nobody."""
    return bool(getattr(request, "is_cancelled", lambda: False)())


def _cancellation():
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError("request cancelled", pb_utils.TritonError.CANCELLED)
    )


def _without_cancelled(members: list, requests: list, responses: list) -> list:
    """The ``members`` of a group whose requests are still wanted; the others answered as cancelled."""
    live = []
    for member in members:
        if _cancelled(requests[member[0]]):
            responses[member[0]] = _cancellation()
        else:
            live.append(member)
    return live


class TritonPythonModel:
    """Beam search over the ``<name>_encoder`` / ``<name>_decoder`` graphs, in this process or
    through BLS (the config's ``steps``)."""

    def initialize(self, args: dict) -> None:
        """Read kiln.json, the tokenizers and the sibling entries' tensors and batch limits."""
        here = args["model_repository"]  # this entry's directory
        kiln = _read_json(os.path.join(here, "kiln.json"))
        block = kiln["translator"]
        self.spec = step_spec.parse_step_spec(block["step_spec"])
        self.source = Tokenizer.from_file(tokenizer_path(here, block, "source_tokenizer"))
        self.target = Tokenizer.from_file(tokenizer_path(here, block, "target_tokenizer"))
        # a special token's text typed in a sentence ("</s>") is text, as training and the gateway read
        # it (training.data.tokenizer.literal_specials; the file cannot say so)
        self.source.encode_special_tokens = self.target.encode_special_tokens = True
        parent = os.path.dirname(here)
        block = {**block, **{part: step_entry(here, block, part) for part in ("encoder", "decoder")}}
        encoder = _read_json(os.path.join(parent, block["encoder"], "kiln.json"))
        decoder = _read_json(os.path.join(parent, block["decoder"], "kiln.json"))
        self.max_sentences = int(encoder.get("max_batch_size") or 64)
        self.max_rows = int(decoder.get("max_batch_size") or 256)
        params = {
            k: v.get("string_value", "")
            for k, v in json.loads(args["model_config"]).get("parameters", {}).items()
        }
        self.steps = params.get("steps") or "in_process"
        if self.steps not in STEPS:
            raise ValueError(f"parameter steps must be one of {STEPS}, got {self.steps!r}")
        if self.steps == "in_process":
            threads = int(params.get("intra_op_num_threads") or 1)
            for part in ("encoder", "decoder"):
                graph = os.path.join(served_version(os.path.join(parent, block[part])), "model.onnx")
                runner = native_decoder.open_runner(
                    graph, intra_op_threads=threads, decoder=part == "decoder"
                )
                setattr(self, f"run_{part}", runner)
            return
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
        groups: dict[bs.BeamConfig, list[tuple[int, list[str], bs.BeamConfig]]] = {}
        for i, request in enumerate(requests):
            if _cancelled(request):
                responses[i] = _cancellation()
                continue
            try:
                options = parse_options(request.parameters(), self.spec.max_positions)
                texts = self._texts(request)
                config = bs.config_for(
                    options,
                    eos_id=self.spec.eos_id,
                    bos_id=self.spec.bos_id,
                    max_positions=self.spec.max_positions,
                )
            except Exception as error:  # noqa: BLE001 - a bad request gets its own error
                responses[i] = self._error(error)
                continue
            groups.setdefault(config, []).append((i, texts, config, _requested(request)))
        for members in groups.values():
            live = _without_cancelled(members, requests, responses)  # one cancelled while others decoded
            if live:
                self._answer_group(live, responses)
        return responses

    def _check_rows(self, config: bs.BeamConfig) -> None:
        """Through BLS a sentence's beams go to ``<name>_decoder`` in one call, which Triton refuses
        (an INTERNAL error) above that entry's ``max_batch_size``: a beam that wide is the request's
        mistake, as the gateway's scheduler refuses a beam over its row cap."""
        if self.steps == "bls" and config.beam_size > self.max_rows:
            raise ValueError(
                f"beam_size={config.beam_size} exceeds the decoder entry's max_batch_size={self.max_rows}"
            )

    def _answer_group(self, members: list, responses: list) -> None:
        """Decode one options group's texts together; if that fails, each request alone, so one
        request's texts (too long a text, say) fail that request only, as the gateway answers them."""
        config = members[0][2]
        try:
            translations = self._translate([t for _, ts, _, _ in members for t in ts], config)
        except Exception as error:  # noqa: BLE001 - whose it is, the requests run alone to tell
            if len(members) > 1:
                for member in members:
                    self._answer_group([member], responses)
                return
            responses[members[0][0]] = self._error(error)
            return
        offset = 0
        for i, ts, _, wanted in members:
            rows = translations[offset : offset + len(ts)]
            offset += len(ts)
            outputs = {  # each [b, n_best], as the gateway's own translators answer them
                "translation": np.array(
                    [[t.encode() for t, _, _ in hyps] for hyps in rows], dtype=np.object_
                ),
                "score": np.array([[s for _, s, _ in hyps] for hyps in rows], dtype=np.float32),
                "raw_score": np.array([[r for _, _, r in hyps] for hyps in rows], dtype=np.float32),
            }
            tensors = [_tensor(name, outputs[name]) for name in OUTPUTS if name in wanted]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)

    def _texts(self, request) -> list[str]:
        values = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
        texts = [_text(value, i) for i, value in enumerate(values)]
        if len(texts) > bs.LIMITS.max_texts:
            raise ValueError(f"{len(texts)} texts in one request; the limit is {bs.LIMITS.max_texts}")
        for i, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"texts[{i}] is empty or only whitespace")
            if len(text) > bs.LIMITS.max_chars:
                raise ValueError(f"texts[{i}] has {len(text)} characters; the limit is {bs.LIMITS.max_chars}")
        return texts

    def _translate(self, texts: list[str], config: bs.BeamConfig) -> list[list[tuple[str, float, float]]]:
        """n_best (text, normalized score, raw score) per input, decoding as many sentences together as the
        entries allow; a search that finished fewer has empty texts scored -inf after them."""
        self._check_rows(config)
        ids = [e.ids for e in self.source.encode_batch(texts)]
        cap = self.spec.max_positions
        for i, row in enumerate(ids):
            if cap and len(row) + 1 > cap:
                raise ValueError(f"texts[{i}] is {len(row) + 1} tokens long; the model takes {cap}")
        chunk = max(1, min(self.max_sentences, self.max_rows // config.beam_size))
        results = offline.translate_in_batches(
            self.run_encoder, self.run_decoder, self.spec, ids, config, chunk
        )
        padded = [h for hyps in results for h in self._padded(hyps, config)]
        texts_out = iter(self._detokenize([h.tokens for h in padded]))
        scores = iter([(h.normalized_score, h.score) for h in padded])
        return [[(next(texts_out), *next(scores)) for _ in range(config.n_best)] for _ in results]

    @staticmethod
    def _padded(hyps: list, config: bs.BeamConfig) -> list:
        missing = config.n_best - len(hyps)
        return hyps + [bs.Hypothesis([], float("-inf"), float("-inf"))] * max(0, missing)

    def _detokenize(self, hypotheses: list[list[int]]) -> list[str]:
        """Texts of hypotheses in one batched call (ids up to EOS, without BOS / padding / specials)."""
        spec = self.spec
        kept = [
            bs.output_tokens(t, eos_id=spec.eos_id, pad_id=spec.pad_id, bos_id=spec.bos_id)
            for t in hypotheses
        ]
        return self.target.decode_batch(kept, skip_special_tokens=True)

    @staticmethod
    def _error(error: Exception):
        """A request's own mistake (a ValueError: its options, its texts) as INVALID_ARG, a 400 over
        HTTP as the gateway answers it; anything else INTERNAL."""
        code = (
            pb_utils.TritonError.INVALID_ARG
            if isinstance(error, ValueError)
            else pb_utils.TritonError.INTERNAL
        )
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(error), code))

    def finalize(self) -> None:
        self.run_encoder = self.run_decoder = None
