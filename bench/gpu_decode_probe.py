"""Where a translator's decoder step spends its time on an execution provider, in the variants a GPU
decode path could take: what to build next for translation on a GPU, read off one run.

    python -m bench.gpu_decode_probe REPOSITORY/NAME_decoder/1/model.onnx [--device cuda|cpu]
        [--rows 8,32,128] [--past 8,24] [--src 16] [--repeats 100] [--output probe.json]

For each rows x past shape (random feeds by each input's role: tokens, positions, caches, masks, the
encoder store of ``rows / 4`` sentences and each row's place in it), medians of ``--repeats`` calls, ms:

- ``numpy``: ``session.run`` on numpy feeds, outputs back as numpy (what the decoding engine does
  today: every cache and the encoder store cross to the device at every step, the entries come back);
- ``resident``: every input already on the device (IO binding of OrtValues), the entries left there,
  only ``log_probs`` copied back: the step with a device-resident cache, before its upkeep;
- ``resident_small_in``: the same with the per-step small inputs (tokens, positions, cache mask, row
  places) copied in from numpy at each call, as a device-resident engine would;
- ``advance``: the upkeep such an engine adds, one generated graph (each cache concatenated with its
  entries and gathered by beam origin) on the device;
- ``numpy_growing``: ``numpy`` with the cache one column longer at each call (``past`` .. ``past`` +
  15, cycling), as real steps are: what a new shape costs the provider;
- ``graph``: the decoder with every dimension fixed to this shape, its inputs and outputs bound on the
  device, replayed as a CUDA graph (CUDA only; the reason it could not be captured otherwise).

``--profile`` adds ONNX Runtime's own profile of the ``numpy`` and ``resident`` variants at the middle
shape: nodes per provider and kernel time against the whole run.

    python -m bench.gpu_decode_probe --translate REPOSITORY --checkpoints CHECKPOINTS [--device cuda]
        [--translator transformer] [--sentences 512] [--batches 32,128]

decodes the checkpoint's held-out test sentences (beam 4) in batches of each size through the decode
engine three ways on the provider: the host batch (today's path, every step's cache crossing to the
device), the device-resident batch (:mod:`serving.decoding.resident`) on plain sessions, and the same
replayed as CUDA graphs; sentences/s, target tokens/s and agreement with the host batch's tokens.

The step's variants are :mod:`bench.gpu_decode_step`; ``--gateway-workers`` runs
:mod:`bench.gpu_decode_gateway`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench.gpu_decode_step import ort_module, probe, providers_for, session_options
from serving.execution.placement import load_cuda_libraries


def translate(
    repository: Path, checkpoints: Path, translator: str, device: str, sentences: int, batches: list[int]
) -> dict[str, Any]:
    """The decode engine's three ways over the same held-out sentences (see the module's doc)."""
    from bench.translation_rows import Workload
    from serving.decoding.options import DecodingOptions, config_for
    from serving.decoding.translator import translator_from_entry
    from serving.execution.repository import Repository

    ort = ort_module()
    if device == "cuda":
        load_cuda_libraries(ort)
    entry = Repository(repository).get(translator)
    runner = partial(_runner, ort, repository, entry.kiln["translator"], device)
    encoder, decoder = runner("encoder"), runner("decoder")
    engine = translator_from_entry(entry.path, entry.kiln, encoder, decoder)
    work = Workload.load(checkpoints, translator, sentences)
    ids = [row for i in range(0, len(work.texts), 64) for row in engine.source_ids(work.texts[i : i + 64])]
    spec = engine.spec  # max_length as the gateway's default: 64, or the model's max_positions if lower
    config = config_for(
        DecodingOptions(beam_size=4), eos_id=spec.eos_id, bos_id=spec.bos_id, max_positions=spec.max_positions
    )
    ways = _ways(device)
    result: dict[str, Any] = {"sentences": len(ids), "device": device, "rows": []}
    for size in batches:
        host_tokens = None
        for way, wanted in ways.items():
            run = runner("decoder")
            run.resident = wanted
            try:
                hyps, seconds = _timed(encoder, run, engine.spec, ids, config, size)
            except Exception as exc:  # noqa: BLE001 - reported: which way failed here
                row = {"batch": size, "way": way, "failed": f"{type(exc).__name__}: {str(exc)[:300]}"}
                print(json.dumps(row), flush=True)
                result["rows"].append(row)
                continue
            tokens = [h[0].tokens for h in hyps]
            host_tokens = host_tokens or tokens
            row = _way_row(size, way, run, tokens, host_tokens, seconds, len(ids))
            print(json.dumps(row), flush=True)
            result["rows"].append(row)
    return result


def _runner(ort: Any, repository: Path, block: dict[str, Any], device: str, part: str) -> Any:
    """A session runner of the translator's ``part`` (``encoder``, ``decoder``) on ``device``."""
    from serving.execution.runner import session_runner
    from serving.execution.version_policy import served_version

    # the version the gateway serves (its version_policy's newest), not always 1: export --version
    path = Path(served_version(str(repository / block[part]))) / "model.onnx"
    run = session_runner(ort.InferenceSession(str(path), session_options(), providers=providers_for(device)))
    run.model_file = path
    return run


def _ways(device: str) -> dict[str, dict[str, Any] | None]:
    """The decode engine's ways, each its decoder runner's ``resident`` setting: the host batch (None),
    the device-resident batch, and on CUDA the same replayed as CUDA graphs."""
    ways = {
        "host": None,
        "resident": {"device": device, "cuda_graphs": False, "providers": providers_for(device)},
        "resident_graphs": {"device": device, "cuda_graphs": True, "providers": providers_for(device)},
    }
    if device != "cuda":
        del ways["resident_graphs"]
    return ways


def _timed(encoder: Any, run: Any, spec: Any, ids: list[Any], config: Any, size: int) -> tuple[Any, float]:
    """Every sentence decoded in batches of ``size``, after one warm batch: the hypotheses, the seconds."""
    from serving.decoding.offline import translate_in_batches

    translate_in_batches(encoder, run, spec, ids[:size], config, size)  # warm: layouts made
    start = time.perf_counter()
    hyps = translate_in_batches(encoder, run, spec, ids, config, size)
    return hyps, time.perf_counter() - start


def _way_row(
    size: int, way: str, run: Any, tokens: list[Any], host_tokens: list[Any], seconds: float, sentences: int
) -> dict[str, Any]:
    """One way's row at one batch size (``sentences`` decoded): its rates, its agreement with the host
    batch, its layouts."""
    return {
        "batch": size,
        "way": way,
        "sentences_per_s": round(sentences / seconds, 1),
        "tokens_per_s": round(sum(len(t) for t in tokens) / seconds, 1),
        "same_as_host": round(
            100.0 * sum(a == b for a, b in zip(tokens, host_tokens, strict=True)) / sentences, 2
        ),
        "layouts": len(getattr(getattr(run, "resident_decoder", None), "layouts", {})),
    }


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_decode_probe", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("decoder", type=Path, nargs="?", help="a translator's decoder entry's model.onnx")
    parser.add_argument("--translate", type=Path, metavar="REPOSITORY", help="decode real sentences instead")
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    parser.add_argument("--translator", default="transformer")
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--batches", type=_ints, default=[32, 128])
    parser.add_argument(
        "--gateway-workers", type=_ints, default=[], help="with --translate: the gateway too, these processes"
    )
    parser.add_argument(
        "--gateway-concurrency",
        type=_ints,
        default=[32, 256],
        help="the gateway's clients (each a run; more than 32 tells a decoder waiting on the device from one "
        "bound by its thread)",
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--rows", type=_ints, default=[8, 32, 128])
    parser.add_argument("--past", type=_ints, default=[8, 24])
    parser.add_argument("--src", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument(
        "--profile", action="store_true", help="add ONNX Runtime's profile at the middle shape"
    )
    parser.add_argument("--output", type=Path, help="write the result as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.translate is not None:
        result = translate(
            args.translate, args.checkpoints, args.translator, args.device, args.sentences, args.batches
        )
        if args.gateway_workers:
            from bench.gpu_decode_gateway import gateway  # the gateway's client side, loaded when asked for

            result["gateway"] = gateway(
                args.translate,
                args.checkpoints,
                args.translator,
                args.sentences,
                args.gateway_workers,
                args.gateway_concurrency,
            )
        if args.output:
            args.output.write_text(json.dumps(result, indent=2), encoding="utf-8")
        return 0
    if args.decoder is None or not args.decoder.is_file():
        parser.error(f"{args.decoder}: no such file (a decoder entry's model.onnx)")
    result = probe(args.decoder, args.device, args.rows, args.past, args.src, args.repeats, args.profile)
    if args.output:
        args.output.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
