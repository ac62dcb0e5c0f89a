"""What a request to an ONNX entry must look like, checked before it is queued (a 400 naming the input).

The per-entry tables are built once at load (:func:`input_rules`), so the hot path only compares
(and, for a decoder's ``row_place``, reads one value per row).
An input or output with a ``reshape`` in its config is reshaped as Triton reshapes it: a client sends
and receives the config's ``dims`` (what the metadata lists), the model sees its ``reshape.shape``
(export writes a per-row scalar, a ``[batch]`` tensor, as ``dims: [1]`` reshaped to ``[]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.errors import BadRequest, PayloadTooLarge
from serving.execution.base import InferRequest
from serving.execution.datatypes import datatype_of, numpy_dtype
from serving.execution.repository import RepositoryEntry


@dataclass(frozen=True, slots=True)
class InputRule:
    """What one input must look like, read from the config once at load (not per request)."""

    datatype: str
    dtype: np.dtype
    shape: tuple[int, ...]  # -1: any size
    reshape: tuple[int, ...] | None = None  # the shape the model takes instead, batch axis left out
    nonempty: tuple[tuple[int, str], ...] = ()  # (position, graph axis name) a request may not make 0
    axes: tuple[tuple[int, str], ...] = ()  # (position, name) of each named axis after the batch axis
    longest: int = 0  # the most a named axis may hold (a translator step's max_positions); 0: no bound
    places: str | None = None  # an input whose axis 0 this one's values index (a decoder's row_place)
    ids: str = ""  # what its values index from 0 ("token id", "position"): a negative one is refused


def input_rules(entry: RepositoryEntry, graph_shapes: dict[str, list] | None = None) -> dict[str, InputRule]:
    """The validation table of an entry's inputs. ``graph_shapes`` (each input's shape as the ONNX graph
    names it, ``["batch", "src_len"]``) adds the axes a request may not leave empty (:func:`nonempty_axes`)
    and the named axes inputs must agree on (:func:`named_axes`)."""
    reshapes = {
        t.name: tuple(int(d) for d in t.reshape.shape) for t in entry.config.input if t.HasField("reshape")
    }
    graph_shapes = {} if graph_shapes is None else graph_shapes
    longest, places, ids = longest_axis(entry), place_inputs(entry), id_inputs(entry)
    rules = {}
    for meta in entry.inputs():
        shape = None if meta.name in reshapes else graph_shapes.get(meta.name)
        rules[meta.name] = InputRule(
            meta.datatype,
            numpy_dtype(meta.datatype),
            tuple(meta.shape),
            reshapes.get(meta.name),
            nonempty_axes(entry, shape),
            named_axes(entry, shape),
            longest,
            places.get(meta.name),
            ids.get(meta.name, ""),
        )
    return rules


ID_ROLES = {"tokens": "token id", "positions": "position"}  # decoder inputs whose values index a table


def id_inputs(entry: RepositoryEntry) -> dict[str, str]:
    """``{input: what its values are}`` of a translator step's inputs that index an embedding table
    from 0 (kiln.json ``step_spec``): the encoder's inputs (its source token ids) and the decoder's
    ``tokens`` and ``positions``. ONNX's Gather reads a negative index from the table's end, so a
    token id of -1 (a padding sentinel elsewhere) was embedded as the vocabulary's last token and
    answered 200, on either backend; a value past the table is ONNX Runtime's own 400 already."""
    spec = entry.kiln.get("step_spec") or {}
    encoder = (spec.get("encoder") or {}).get("inputs") or []
    decoder = (spec.get("decoder") or {}).get("inputs") or []
    ids = {name: "token id" for name in encoder if isinstance(name, str)}
    ids.update(
        (i.get("name"), ID_ROLES[i.get("role")])
        for i in decoder
        if isinstance(i, dict) and i.get("role") in ID_ROLES and isinstance(i.get("name"), str)
    )
    return ids


def longest_axis(entry: RepositoryEntry) -> int:
    """The most positions a translator's encoder or decoder step takes on any named axis (its source
    tokens, its cache entries): the model's ``max_positions`` (kiln.json ``step_spec``), 0 where none.
    The translator refuses longer texts; a KServe request to the step entry is refused alike, since
    past it the outputs only grow (a GRU encoder's memory: 1280 bytes a token for 8 sent) or, for the
    Transformer's, ONNX Runtime refuses the positions only after the embeddings of every token were
    built (GBs from a request under the body limit, held by its arena after)."""
    longest = (entry.kiln.get("step_spec") or {}).get("max_positions")
    return longest if isinstance(longest, int) and not isinstance(longest, bool) and longest > 0 else 0


def place_inputs(entry: RepositoryEntry) -> dict[str, str]:
    """``{row_place input: an encoder input}`` of a decoder step (kiln.json ``step_spec``): row ``r``
    reads the encoder inputs at place ``row_place[r]`` of their axis 0 (docs/translator-interface.md),
    and Kiln's compiled attention answers a place outside them with NaN rows, not an error."""
    inputs = ((entry.kiln.get("step_spec") or {}).get("decoder") or {}).get("inputs") or []
    roles = {i.get("name"): i.get("role") for i in inputs if isinstance(i, dict)}
    store = next((name for name, role in roles.items() if role == "encoder"), None)
    if store is None:
        return {}
    return {name: store for name, role in roles.items() if role == "row_place"}


def named_axes(entry: RepositoryEntry, graph_shape: list | None) -> tuple[tuple[int, str], ...]:
    """(position, name) of the axes after the batch axis that the graph names: one name is one size
    in every input that has it (``past_len`` of a decoder's cache and of its mask), which a request
    must keep. Kiln's compiled attention operators answer inputs that disagree with NaN rows, and
    ONNX Runtime's own with an error or a broadcast."""
    first = 1 if entry.max_batch_size > 0 else 0
    return tuple(
        (position, axis)
        for position, axis in enumerate(graph_shape or ())
        if position >= first and isinstance(axis, str) and axis
    )


def nonempty_axes(entry: RepositoryEntry, graph_shape: list | None) -> tuple[tuple[int, str], ...]:
    """The named dynamic axes of one input, after the batch axis, that a Kiln export never ran at 0.

    An axis may be 0 where the graph takes it (a decoder's cache before its first step, which export's
    parity checks in kiln.json ran); elsewhere (an encoder over a source of no tokens) ONNX Runtime may
    not fail but abort the process, every request in it lost: such a request is refused before it is
    queued. Entries without kiln.json parity checks (not Kiln's exports) refuse nothing here."""
    checks = (entry.kiln.get("parity") or {}).get("checks") or []
    if not checks or not graph_shape:
        return ()
    run_empty = {axis for check in checks for axis, size in check.get("sizes", {}).items() if size == 0}
    return tuple(
        (position, axis) for position, axis in named_axes(entry, graph_shape) if axis not in run_empty
    )


def reshaped(array: np.ndarray, shape: tuple[int, ...], batched: bool) -> np.ndarray:
    """``array`` in ``shape`` (after its batch axis where ``batched``): a view, as Triton's reshape."""
    return array.reshape((array.shape[0], *shape) if batched else shape)


def validate_inputs(
    entry: RepositoryEntry, inputs: dict[str, np.ndarray], rules: dict[str, InputRule] | None = None
) -> dict[str, np.ndarray]:
    """Check names, datatypes, shapes and batch size against the config; errors name the input.

    ``rules`` is the entry's table from :func:`input_rules`, built once at load by the backend.
    """
    expected = rules if rules is not None else input_rules(entry)
    if inputs.keys() != expected.keys():
        missing = sorted(set(expected) - set(inputs))
        extra = sorted(set(inputs) - set(expected))
        raise BadRequest(
            f"model {entry.name!r} expects inputs {sorted(expected)}; missing {missing}, unexpected {extra}"
        )
    batch_sizes, reshape, axis_sizes, placed = set(), False, {}, None
    for name, array in inputs.items():
        rule = expected[name]
        reshape = reshape or rule.reshape is not None
        if array.dtype != rule.dtype and (got := datatype_of(array)) != rule.datatype:
            raise BadRequest(f"input {name!r}: expected datatype {rule.datatype}, got {got}")
        shape = array.shape
        if len(shape) != len(rule.shape) or any(
            e != -1 and e != g for e, g in zip(rule.shape, shape, strict=True)
        ):
            raise BadRequest(f"input {name!r}: expected shape {list(rule.shape)}, got {list(shape)}")
        for position, axis in rule.nonempty:
            if shape[position] == 0:
                raise BadRequest(
                    f"input {name!r}: dimension {position} ({axis}) is empty in shape {list(shape)}: "
                    f"model {entry.name!r} runs on at least one"
                )
        for position, axis in rule.axes:
            if rule.longest and shape[position] > rule.longest:
                raise PayloadTooLarge(
                    f"input {name!r}: dimension {position} ({axis}) holds {shape[position]} in shape "
                    f"{list(shape)}: model {entry.name!r} takes at most {rule.longest}"
                )
            size, first = axis_sizes.setdefault(axis, (shape[position], name))
            if size != shape[position]:
                raise BadRequest(
                    f"inputs {first!r} and {name!r} disagree on the model's {axis} axis: "
                    f"{size} and {shape[position]}"
                )
        if rule.places is not None and rule.places in inputs:
            placed = (name, rule.places)
        if rule.ids and array.size and array.dtype.kind in "iu" and array.min() < 0:
            raise BadRequest(negative_id_refusal(name, rule.ids, int(array.min()), entry.name))
        if entry.max_batch_size > 0:
            batch_sizes.add(shape[0])
    if len(batch_sizes) > 1:
        raise BadRequest(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
    if batch_sizes:
        (batch,) = batch_sizes
        if not 1 <= batch <= entry.max_batch_size:
            raise BadRequest(f"batch size {batch} is outside [1, max_batch_size={entry.max_batch_size}]")
    if placed is not None:
        name, store = placed
        _check_places(name, inputs[name], store, inputs[store].shape[0])
    texts = [name for name in inputs if expected[name].datatype == "BYTES"]
    if texts:
        inputs = {**inputs, **{name: graph_text(name, inputs[name]) for name in texts}}
    if reshape:
        batched = entry.max_batch_size > 0
        return {
            name: array if (shape := expected[name].reshape) is None else reshaped(array, shape, batched)
            for name, array in inputs.items()
        }
    return inputs


def graph_text(name: str, array: np.ndarray) -> np.ndarray:
    """A BYTES input as ONNX Runtime's Python API takes a STRING tensor: ``str`` elements, which it
    hands the graph as their UTF-8 bytes (the bytes Triton's onnxruntime backend hands it). A ``bytes``
    element it would turn into its ``repr`` instead, so ``b"abc"`` ran as the text ``b'abc'``. Bytes
    that are not UTF-8 cannot reach the graph through that API: a 400 naming the element."""
    text = np.empty(array.shape, dtype=object)
    flat = text.reshape(-1)  # a view of ``text``: a fresh array is contiguous
    for index, value in enumerate(array.reshape(-1)):
        try:
            flat[index] = value.decode("utf-8") if isinstance(value, bytes | bytearray) else str(value)
        except UnicodeDecodeError as exc:
            raise BadRequest(
                f"input {name!r}: element {index} is not UTF-8 text ({exc.reason} at byte {exc.start}), "
                "and the embedded ONNX Runtime backend passes a STRING tensor's elements as UTF-8 text"
            ) from None
    return text


def negative_id_refusal(name: str, what: str, value: int, model: str) -> str:
    """The 400 of a negative token id or position (the python flavour's model says the same words)."""
    return (
        f"input {name!r}: {what} {value} is negative; model {model!r} takes {what}s from 0 (a "
        "negative one would be read from the end of its embedding table)"
    )


def _check_places(name: str, places: np.ndarray, store: str, count: int) -> None:
    """Every value of ``places`` indexes one of the ``count`` places of ``store``'s axis 0."""
    if places.size and not (places.min() >= 0 and places.max() < count):
        bad = places[(places < 0) | (places >= count)].flat[0]
        raise BadRequest(
            f"input {name!r}: place {int(bad)} is outside the {count} places of input {store!r} (0 to {count - 1})"
        )


def classification_counts(request: InferRequest) -> dict[str, int]:
    """The outputs' classification counts, each a positive integer. Any output may be asked, whatever
    its dims: a batch row (unbatched, the whole tensor) is one set of classes, as Triton flattens it."""
    counts = request.classification
    for name, count in counts.items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise BadRequest(
                f"output {name!r}: classification count must be a positive integer, got {count!r}"
            )
    return counts
