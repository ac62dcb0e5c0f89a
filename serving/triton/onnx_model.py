"""Triton python-backend model that runs ONNX Runtime on ``<version>/model.onnx`` (the CPU python flavour).

Copied as ``<version>/model.py`` next to the ONNX file by :mod:`serving.triton.flavour`; it runs inside
Triton's python stub, so it imports only numpy, onnxruntime and ``triton_python_backend_utils``. Requests
of one ``execute`` call (a dynamic batch) are concatenated along the batch axis and run in one session
call, the way Triton's onnxruntime backend batches them.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _array(tensor) -> np.ndarray:
    """A request tensor as numpy (the stub runs in the numpy-1 Triton python environment)."""
    return tensor.as_numpy()


def _graph_text(array: np.ndarray) -> np.ndarray:
    """A BYTES input as ONNX Runtime's Python API takes a STRING tensor: ``str`` elements, handed to the
    graph as their UTF-8 bytes (a ``bytes`` element it hands over as its repr: ``b"abc"`` ran as the
    text ``b'abc'``); ``array`` itself where an element is not UTF-8 (refused by ``_text_refusal``)."""
    try:
        texts = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
    except UnicodeDecodeError:
        return array
    text = np.empty(array.shape, dtype=object)
    text.reshape(-1)[:] = texts
    return text


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _tensor(name: str, array: np.ndarray):
    """A pb_utils.Tensor from a contiguous numpy array."""
    return pb_utils.Tensor(name, np.ascontiguousarray(array))


def _read_kiln(kiln_json: str) -> dict | None:
    """The entry's kiln.json, None where it has none (not a Kiln export)."""
    try:
        with open(kiln_json, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def _axes_run_empty(kiln: dict | None) -> set[str] | None:
    """The named graph axes export's parity checks ran at size 0 (a decoder's cache before its first
    step): the only ones a request may leave empty; None where the entry has no kiln.json."""
    if kiln is None:
        return None
    checks = (kiln.get("parity") or {}).get("checks") or []
    return {axis for check in checks for axis, size in check.get("sizes", {}).items() if size == 0}


def _longest_axis(kiln: dict | None) -> int:
    """The most positions a translator's encoder or decoder takes on any named axis (kiln.json
    ``step_spec.max_positions``, the gateway's limit too), 0 where none. Past it a GRU encoder still
    runs, its memory output growing ~1.3 kB a token (a 64 MB request asks for ~10 GB of the stub's
    memory), and a Transformer's position lookup fails with an error that names no limit."""
    longest = ((kiln or {}).get("step_spec") or {}).get("max_positions")
    return longest if isinstance(longest, int) and not isinstance(longest, bool) and longest > 0 else 0


def _place_inputs(kiln: dict | None) -> dict[str, str]:
    """``{row_place input: an encoder input}`` of a decoder step (kiln.json ``step_spec``, as the
    gateway's ``serving.execution.validation.place_inputs`` reads it): row ``r`` reads the encoder
    inputs at place ``row_place[r]`` of their axis 0."""
    inputs = (((kiln or {}).get("step_spec") or {}).get("decoder") or {}).get("inputs") or []
    roles = {i.get("name"): i.get("role") for i in inputs if isinstance(i, dict)}
    store = next((name for name, role in roles.items() if role == "encoder"), None)
    return {} if store is None else {name: store for name, role in roles.items() if role == "row_place"}


ID_ROLES = {"tokens": "token id", "positions": "position"}  # decoder inputs whose values index a table


def _id_inputs(kiln: dict | None) -> dict[str, str]:
    """``{input: what its values are}`` of a translator step's inputs that index an embedding table
    from 0 (kiln.json ``step_spec``), as the gateway's ``serving.execution.validation.id_inputs``
    reads them: the encoder's inputs and the decoder's ``tokens`` and ``positions``."""
    spec = (kiln or {}).get("step_spec") or {}
    encoder = (spec.get("encoder") or {}).get("inputs") or []
    decoder = (spec.get("decoder") or {}).get("inputs") or []
    ids = {name: "token id" for name in encoder if isinstance(name, str)}
    ids.update(
        (i.get("name"), ID_ROLES[i.get("role")])
        for i in decoder
        if isinstance(i, dict) and i.get("role") in ID_ROLES and isinstance(i.get("name"), str)
    )
    return ids


class TritonPythonModel:
    """One ONNX Runtime session per model instance, with the inputs and outputs of config.pbtxt."""

    def initialize(self, args: dict) -> None:
        """Open the session and read tensor names, dtypes and max_batch_size from the model config."""
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_num_threads", "1") or 1)
        options.inter_op_num_threads = 1
        # joined under the version directory, an absolute name too, as Triton's JoinPath joins it (and
        # the gateway, RepositoryEntry.model_file): os.path.join took "/srv/x.onnx" as is
        onnx_file = (params.get("onnx_file") or "model.onnx").lstrip("/")
        path = os.path.join(args["model_repository"], args["model_version"], onnx_file)
        if os.path.isdir(path):  # the model.onnx inside, beside its external weights, as Triton reads it
            path = os.path.join(path, "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.name = config.get("name", "")
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.axes = {i.name: list(i.shape) for i in self.session.get_inputs()}
        kiln = _read_kiln(os.path.join(args["model_repository"], "kiln.json"))
        self.may_be_empty, self.longest = _axes_run_empty(kiln), _longest_axis(kiln)
        self.places, self.ids = _place_inputs(kiln), _id_inputs(kiln)
        self.quiet = ort.RunOptions()  # a refused run is the client's answer, not a line in Triton's log
        self.quiet.log_severity_level = 4
        self.inputs = {t["name"]: t["data_type"] for t in config["input"]}
        self.outputs = {t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in config["output"]}

    def execute(self, requests: list) -> list:
        """Run all requests of a dynamic batch at once when their shapes allow, else (or when the merged
        run fails: one request's values may be what the graph refuses) one by one, so each request gets
        its own answer or its own error, as the gateway's batcher answers them."""
        responses: list = [None] * len(requests)
        runnable: dict[int, dict[str, np.ndarray]] = {}
        for i, request in enumerate(requests):
            feed = self._feeds(request)
            refused = self._text_refusal(feed) or self._refused_axes(feed)
            if refused:
                responses[i] = self._refusal(refused)
            else:
                runnable[i] = feed
        if self._answered_merged(requests, runnable, responses):
            return responses
        for i, feed in runnable.items():
            try:
                responses[i] = self._response(self._run(feed), requests[i])
            except Exception as error:  # noqa: BLE001 (a bad request must not take the model down)
                responses[i] = self._error(error)
        return responses

    def _answered_merged(
        self, requests: list, feeds: dict[int, dict[str, np.ndarray]], responses: list
    ) -> bool:
        """Answer ``feeds`` from one merged run where they stack and it succeeds; False otherwise."""
        if self.max_batch_size <= 0 or len(feeds) < 2 or not self._stackable(list(feeds.values())):
            return False
        if self.places:  # each request's row places index its own rows, not the merged batch's
            return False
        merged = {name: np.concatenate([f[name] for f in feeds.values()]) for name in self.inputs}
        try:
            results = self._run(merged)
        except Exception:  # noqa: BLE001 - one request's values may have failed it: each runs alone
            return False
        bounds = np.cumsum([0, *(next(iter(f.values())).shape[0] for f in feeds.values())])
        for i, lo, hi in zip(feeds, bounds[:-1], bounds[1:], strict=True):
            responses[i] = self._response({k: v[lo:hi] for k, v in results.items()}, requests[i])
        return True

    def _feeds(self, request) -> dict[str, np.ndarray]:
        feed = {name: _array(pb_utils.get_input_tensor_by_name(request, name)) for name in self.inputs}
        return {name: _graph_text(a) if a.dtype == np.object_ else a for name, a in feed.items()}

    @staticmethod
    def _text_refusal(feed: dict[str, np.ndarray]) -> str:
        """A BYTES input holding bytes that are not UTF-8, named as the gateway names it ("" if none):
        ONNX Runtime's Python API cannot hand them to the graph as they are."""
        for name, array in feed.items():
            for index, value in enumerate(array.reshape(-1) if array.dtype == np.object_ else ()):
                if isinstance(value, bytes) and not _is_utf8(value):
                    return (
                        f"input {name!r}: element {index} is not UTF-8 text, and ONNX Runtime's Python API "
                        "passes a STRING tensor's elements as UTF-8 text"
                    )
        return ""

    def _refused_axes(self, feed: dict[str, np.ndarray]) -> str:
        """Why the gateway would refuse ``feed`` for its axes or indices, "" if it would not: an empty
        axis, a named one longer than the model takes, one name at two sizes, a row place outside its
        rows, or a negative token id or position (see each check)."""
        empty = self._empty_axes(feed)
        if empty:
            return f"model {self.name!r} cannot run on an empty dimension ({empty})"
        return self._named_axes_refusal(feed) or self._places_refusal(feed) or self._ids_refusal(feed)

    def _ids_refusal(self, feed: dict[str, np.ndarray]) -> str:
        """A negative token id or position, named as the gateway names it ("" if none): ONNX Runtime's
        Gather reads it from the end of the embedding table, another token's answer given for it."""
        for name, what in self.ids.items():
            array = feed.get(name)
            if array is not None and array.size and array.dtype.kind == "i" and array.min() < 0:
                return (
                    f"input {name!r}: {what} {int(array.min())} is negative; model {self.name!r} takes "
                    f"{what}s from 0 (a negative one would be read from the end of its embedding table)"
                )
        return ""

    def _places_refusal(self, feed: dict[str, np.ndarray]) -> str:
        """A row place outside its encoder inputs' rows, named as the gateway names it ("" if none):
        ONNX Runtime's Gather reads a negative place from the end, another sentence's encoder output
        answered as this row's."""
        for name, store in self.places.items():
            if name not in feed or store not in feed or not feed[name].size:
                continue
            places, count = feed[name], feed[store].shape[0]
            outside = places[(places < 0) | (places >= count)]
            if outside.size:
                return (
                    f"input {name!r}: place {int(outside.flat[0])} is outside the {count} places of "
                    f"input {store!r} (0 to {count - 1})"
                )
        return ""

    def _empty_axes(self, feed: dict[str, np.ndarray]) -> str:
        """The inputs with a zero-length axis after the batch axis that export never ran empty, named
        with their shapes ("" if none): ONNX Runtime aborts the whole stub on some graphs (a GRU over a
        source of no tokens), which leaves the model dead for every later request. Without kiln.json
        (not a Kiln export) nothing is refused here."""
        if self.may_be_empty is None:
            return ""
        skip = 1 if self.max_batch_size > 0 else 0
        refused = []
        for name, array in feed.items():
            axes = self.axes.get(name, [])
            for position, size in enumerate(array.shape[skip:], start=skip):
                axis = axes[position] if position < len(axes) else None
                if size == 0 and axis not in self.may_be_empty:
                    refused.append(f"{name!r} of shape {list(array.shape)}")
                    break
        return ", ".join(refused)

    def _named_axes_refusal(self, feed: dict[str, np.ndarray]) -> str:
        """A named graph axis (after the batch axis) longer than the model's ``max_positions``, or
        sized differently in two inputs (a decoder's cache and its mask: ONNX Runtime broadcast one
        against the other and answered, or failed as INTERNAL), as the gateway names them; "" if none."""
        skip = 1 if self.max_batch_size > 0 else 0
        seen: dict[str, tuple[int, str]] = {}
        for name, array in feed.items():
            axes = self.axes.get(name, [])
            for position, size in enumerate(array.shape[skip:], start=skip):
                axis = axes[position] if position < len(axes) else None
                if not isinstance(axis, str) or not axis:
                    continue
                if self.longest and size > self.longest:
                    return (
                        f"input {name!r}: dimension {position} ({axis}) holds {size} in shape "
                        f"{list(array.shape)}: model {self.name!r} takes at most {self.longest}"
                    )
                first_size, first = seen.setdefault(axis, (size, name))
                if size != first_size:
                    return (
                        f"inputs {first!r} and {name!r} disagree on the model's {axis} axis: "
                        f"{first_size} and {size}"
                    )
        return ""

    def _stackable(self, feeds: list[dict[str, np.ndarray]]) -> bool:
        """True when every request has the same non-batch shape per input."""
        first = feeds[0]
        return all(f[name].shape[1:] == first[name].shape[1:] for f in feeds[1:] for name in self.inputs)

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = list(self.outputs)
        values = self.session.run(names, feed, self.quiet)
        return {
            name: np.asarray(value, dtype=self.outputs[name])
            for name, value in zip(names, values, strict=True)
        }

    def _response(self, results: dict[str, np.ndarray], request):
        wanted = request.requested_output_names() or list(results)
        return pb_utils.InferenceResponse(output_tensors=[_tensor(name, results[name]) for name in wanted])

    @staticmethod
    def _refusal(message: str):
        return pb_utils.InferenceResponse(
            output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
        )

    @staticmethod
    def _error(error: Exception):
        """ONNX Runtime's INVALID_ARGUMENT (a value the graph refuses: the client's) as INVALID_ARG, a
        400 over HTTP, as Triton's onnxruntime backend answers it; anything else INTERNAL."""
        kind = type(error)
        refused = kind.__name__ == "InvalidArgument" and kind.__module__.startswith("onnxruntime")
        code = pb_utils.TritonError.INVALID_ARG if refused else pb_utils.TritonError.INTERNAL
        return pb_utils.InferenceResponse(
            output_tensors=[], error=pb_utils.TritonError(f"onnxruntime: {error}", code)
        )

    def finalize(self) -> None:
        self.session = None
