"""A :data:`~serving.execution.base.Runner` over an ONNX Runtime session: the gateway's backend, the
decoding engine and Triton's ``<name>`` translate model (a copy of this module, beside its
``serving/decoding`` copies) all run graphs through it. Imports nothing of the gateway."""

from __future__ import annotations

from typing import Any

import numpy as np

# ONNX Runtime's run option: the devices whose memory arenas shrink at the end of that run
ARENA_SHRINKAGE = "memory.enable_memory_arena_shrinkage"


def session_runner(session: Any, occupancy: Any = None) -> Any:
    """A :data:`~serving.decoding.step_spec.Runner` over an ONNX Runtime session.

    Inputs the graph does not declare (e.g. ones the exporter pruned as unused) are not fed. The
    runner's ``first_axes`` (input name -> its first axis: a name where dynamic) tells the decoding
    engine whether a decoder graph takes indexed rows (:func:`serving.decoding.step_spec.takes_indexed_rows`).
    With ``occupancy`` (:class:`serving.execution.occupancy.Occupancy`), each run is counted in it.
    """
    input_names = [i.name for i in session.get_inputs()]
    output_names = [o.name for o in session.get_outputs()]

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [name for name in input_names if name not in inputs]
        if missing:
            raise ValueError(f"the ONNX graph needs inputs {missing}; got {sorted(inputs)}")
        feeds = {name: inputs[name] for name in input_names}
        if occupancy is None:
            results = session.run(output_names, feeds)
        else:
            occupancy.enter()
            try:
                results = session.run(output_names, feeds)
            finally:
                occupancy.leave()
        return dict(zip(output_names, results, strict=True))

    def shrink(inputs: dict[str, np.ndarray]) -> None:
        """:func:`shrink_arena` over ``inputs`` (an idle decode worker's release)."""
        shrink_arena(session, output_names, {name: inputs[name] for name in input_names})

    run.shrink = shrink  # type: ignore[attr-defined]
    run.first_axes = {i.name: i.shape[0] if i.shape else None for i in session.get_inputs()}  # type: ignore[attr-defined]
    run.session = session  # type: ignore[attr-defined]
    run.occupancy = occupancy  # type: ignore[attr-defined]
    return run


def shrink_arena(session: Any, output_names: list[str], feeds: dict[str, np.ndarray]) -> None:
    """One run of ``session`` over ``feeds`` (small ones) after which ONNX Runtime's CPU arena hands
    back every region it no longer uses: what larger runs grew it to, kept otherwise for the
    session's life (the idle releases of decode workers and batch instances)."""
    import onnxruntime as ort  # lazy: nothing heavy at import time

    options = ort.RunOptions()
    options.add_run_config_entry(ARENA_SHRINKAGE, "cpu:0")
    session.run(output_names, feeds, options)
