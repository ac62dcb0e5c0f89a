"""`make bench`: every hop side by side in one run; results in bench/results/<timestamp>/.

Profiles: ``quick`` (a few minutes), ``full`` (every batch size and concurrency) and ``gpu`` (the
classifier's CUDA engines: ``bench.gpu``). The machine is shared and noisy, so the report gives
medians and ratios measured in the same run, never absolutes from elsewhere.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import engines, gpu, inputs, perf_analyzer, report, servers
from bench.machine import cpu_ticks, describe_cpu, machine_info, speed_line, speed_probe, steal_share
from bench.targets import best_direct_throughput, targets
from kiln.cli import log_handler
from kiln.processes import stop_on_sigterm

console = Console()
log = logging.getLogger("bench")

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "batches": (1, 8, 64),
        "engine_budget_s": 1.5,
        "concurrency": (1, 16, 64),
        "duration_s": 4.0,
        "beams": (4,),
        "translate_concurrency": (1, 32),
        "sentences": 128,
        "pa_concurrency": (1, 64),
        "pa_rounds": 3,
        "paired_rounds": 5,  # gateway / CTranslate2 alternations behind the translation targets
    },
    "full": {
        "batches": (1, 2, 4, 8, 16, 32, 64, 128, 256),
        "engine_budget_s": 3.0,
        "concurrency": (1, 2, 4, 8, 16, 32, 64, 128, 256),
        "duration_s": 8.0,
        "beams": (1, 4, 8),
        "translate_concurrency": (1, 8, 32, 64),
        "sentences": 256,
        "pa_concurrency": (1, 8, 32, 64),
        "pa_rounds": 5,
        "paired_rounds": 7,
    },
    # CUDA engines only (bench.gpu); says so and measures nothing on a machine without CUDA.
    # and, with --cpu-repository, the gateway on the GPU against the same gateway on this machine's CPU
    # (bench.gpu_serving)
    "gpu": {
        "batches": (1, 8, 64, 256),
        "engine_budget_s": 2.0,
        "serving_workers": None,  # 1, a quarter and half of the cores (1, 4, 8 on 16 cores)
        "serving_concurrency": (1, 64),
        "serving_duration_s": 3.0,
        "client_processes": 8,
        "translate_concurrency": 32,
        "sentences": 256,
    },
}


GPU_PARTS = ("engines", "servers")  # what --only may name with --profile gpu


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="quick",
        help="quick (~10 min on 2 cores), full (every batch, concurrency and beam), gpu (CUDA engines and "
        "the gateway on the GPU against the CPU); default: quick",
    )
    _add_model_options(parser)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["engines", "servers", "translation", "replicas"],
        help="run only these parts (default: all; with --profile gpu: engines, servers)",
    )
    parser.add_argument(
        "--threads",
        type=inputs.positive_int,
        default=engines.default_threads(),
        help="threads per engine and per server (default: the cores this process may use)",
    )
    parser.add_argument(
        "--gateway-workers",
        type=inputs.positive_int,
        default=engines.default_threads(),
        help="gateway processes (SO_REUSEPORT), --threads split among them; measured best: one per core",
    )
    _add_gpu_options(parser)
    parser.add_argument("--output", type=Path, help="default: bench/results/<timestamp>")
    return parser.parse_args(argv)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """What is measured: the repository, its checkpoints and the entries."""
    parser.add_argument(
        "--repository",
        type=Path,
        default=Path("model_repository"),
        help="the exported repository to serve (default: model_repository)",
    )
    parser.add_argument(
        "--checkpoints",
        type=Path,
        default=Path("checkpoints"),
        help="the checkpoints it was exported from: the PyTorch and CTranslate2 rows (default: checkpoints)",
    )
    parser.add_argument(
        "--classifier",
        default="resnet18",
        help="classifier entry to measure, with the precision twins exported from its checkpoint "
        "(default: resnet18)",
    )
    parser.add_argument(
        "--models-from",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first, so that the PyTorch rows can rebuild a classifier of your own that "
        "it registers (repeatable; also KILN_MODELS_FROM, comma-separated; README, 'Your own classifier')",
    )
    parser.add_argument("--translator", default="transformer", help="translator entry to measure")
    parser.add_argument(
        "--identity-translators",
        nargs="*",
        help="translators checked for identity with their PyTorch reference through the gateway and Triton, "
        "trained small and exported when missing (default: every other registered translator; the flag alone: none)",
    )


def _add_gpu_options(parser: argparse.ArgumentParser) -> None:
    """PROFILE=gpu: the gateways on the GPU and on the CPU measured side by side."""
    parser.add_argument(
        "--cpu-repository",
        type=Path,
        help="PROFILE=gpu: the same checkpoints exported with --device cpu, whose gateway is measured "
        "beside the gateway serving --repository on the GPU (default: exported to <repository>-cpu)",
    )
    parser.add_argument(
        "--serving-workers",
        type=inputs.positive_int,
        nargs="+",
        help="PROFILE=gpu: the gateway processes of each layout measured (default: 1, a quarter and half "
        "of the cores)",
    )
    parser.add_argument(
        "--serving-devices",
        nargs="+",
        choices=["gpu", "cpu"],
        default=["gpu", "cpu"],
        help="PROFILE=gpu: the gateways measured, on the GPU repository, the CPU one or both (default: "
        "both; gpu alone exports and measures no CPU side)",
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stop_on_sigterm()  # a stopped bench stops the servers it started (Triton runs in a session of its own)
    logging.basicConfig(
        level="INFO",
        format="%(message)s",
        handlers=[log_handler(console, "%(asctime)s %(levelname)s %(message)s")],
    )
    for noisy in ("httpx", "matplotlib"):  # one line per request / plot would bury the progress
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import_model_modules(args.models_from)
    profile = PROFILES[args.profile]
    if args.profile == "gpu":
        return run_gpu_profile(args, profile)
    wanted = set(args.only or ["engines", "servers", "translation", "replicas"])
    problem = inputs.cpu_problem(args, wanted)
    if problem:  # before anything runs or is written
        raise SystemExit(problem)
    out = args.output or Path("bench/results") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"profile": args.profile, "machine": machine_info(), "threads": args.threads}
    ticks = cpu_ticks()
    results["machine"]["speed"] = {"start": speed_probe()}
    try:
        failed = run_sections(args, profile, out, wanted, results)
    except KeyboardInterrupt:
        _discard_if_empty(out)
        logs = f" (the servers' logs are in {out / 'logs'})" if (out / "logs").is_dir() else ""
        console.print(f"interrupted: no results written{logs}", style="yellow", markup=False, soft_wrap=True)
        raise SystemExit(130) from None
    results["machine"]["speed"]["end"] = speed_probe()
    results["machine"]["steal_pct"] = steal_share(ticks, cpu_ticks())
    results["targets"] = targets(results, args.classifier)
    write(results, out)
    if failed:
        raise SystemExit(f"{len(failed)} part(s) failed: {', '.join(failed)} (named in {out}/report.md)")


def import_model_modules(named: list[str]) -> None:
    """Import the modules of the user's own models (``KILN_MODELS_FROM``, then ``--models-from``), a
    failure being one line, and name them all in ``KILN_MODELS_FROM`` for the processes the bench
    starts: the spawned PyTorch engine, the naive baseline and export of the GPU profile's CPU side
    rebuild the model, and each imports what that variable names (``ensure_registered``)."""
    if not named and not os.environ.get("KILN_MODELS_FROM", "").strip():
        return  # nothing to import: no torch in this process for it
    from training.models.registry import ModelModuleError, env_modules, import_modules

    modules = list(dict.fromkeys([*env_modules(), *(m.strip() for m in named)]))
    try:
        import_modules(modules)
    except ModelModuleError as exc:
        raise SystemExit(str(exc)) from None
    os.environ["KILN_MODELS_FROM"] = ",".join(modules)


def run_sections(
    args: argparse.Namespace, profile: dict[str, Any], out: Path, wanted: set[str], results: dict[str, Any]
) -> list[str]:
    """Each wanted part into ``results``; a part that fails is named in ``results["failed"]`` with its
    error, and the others still run (minutes of measurement are not lost to one server that would not
    start). Returns the failed parts."""
    sections = {
        "engines": lambda: _classify_engines(args, profile),
        "servers": lambda: _classify_servers(args, profile, out),
        "translation": lambda: _translation(args, profile, out),
        "replicas": lambda: _replicas(args, profile, out),
    }
    for name, measure in sections.items():
        if name not in wanted:
            continue
        try:
            results[name] = measure()
        except Exception as exc:  # noqa: BLE001 - reported with the results, the other parts still count
            log.error("%s failed: %s", name, exc)
            results.setdefault("failed", {})[name] = f"{type(exc).__name__}: {exc}"
    return list(results.get("failed", {}))


def _translation(args: argparse.Namespace, profile: dict[str, Any], out: Path) -> dict[str, Any]:
    from bench import translation

    return translation.run(args, profile, out, progress=log.info)


def _replicas(args: argparse.Namespace, profile: dict[str, Any], out: Path) -> dict[str, Any]:
    from bench import scaleout

    return scaleout.run(args, profile, out, progress=log.info)


def _discard_if_empty(out: Path) -> None:
    """Remove ``out`` when the run wrote nothing there (interrupted before any server's log)."""
    with contextlib.suppress(OSError):
        out.rmdir()


def _classify_engines(args: argparse.Namespace, profile: dict[str, Any]) -> list[dict[str, Any]]:
    """The classifier on each engine called directly, at the profile's batch sizes."""
    jobs = engines.classifier_jobs(
        args.repository,
        args.checkpoints,
        args.classifier,
        profile["batches"],
        args.threads,
        profile["engine_budget_s"],
    )
    return mark_servable(
        engines.run_jobs(jobs, progress=log.info), _max_batch(args.repository / args.classifier)
    )


def _max_batch(entry: Path) -> int:
    """The gateway's largest batch of the entry (its config's ``max_batch_size``; 0 where unreadable)."""
    from serving.execution.repository import load_entry

    try:
        return load_entry(entry).max_batch_size
    except (OSError, ValueError) as exc:
        log.warning("%s: no max_batch_size read (%s); every batch counts for the ceiling", entry, exc)
        return 0


def mark_servable(rows: list[dict[str, Any]], max_batch: int) -> list[dict[str, Any]]:
    """Mark each engine row whose batch the gateway can never form (past ``max_batch``, when known):
    the full profile measures batches 128 and 256 beside a ``max_batch_size`` of 64, and a ceiling
    from those is one no server of that config reaches (:func:`bench.targets.best_direct_throughput`)."""
    for row in rows:
        if max_batch > 0 and row.get("batch", 0) > max_batch:
            row["servable"] = False
    return rows


def _classify_servers(args: argparse.Namespace, profile: dict[str, Any], out: Path) -> dict[str, Any]:
    """The classifier through each server with Kiln's own clients, then perf_analyzer's rows."""
    checkpoint = inputs.classifier_checkpoint(args.repository, args.checkpoints, args.classifier)
    result = servers.run_servers(
        args.repository,
        checkpoint,
        args.classifier,
        out / "logs",
        concurrencies=profile["concurrency"],
        duration_s=profile["duration_s"],
        threads=args.threads,
        workers=args.gateway_workers,
        progress=log.info,
    )
    try:
        result["perf_analyzer"] = perf_analyzer.side_by_side(
            args.repository,
            args.classifier,
            out / "logs",
            concurrencies=profile["pa_concurrency"],
            threads=args.threads,
            rounds=profile["pa_rounds"],
            workers=args.gateway_workers,
            progress=log.info,
        )
    except Exception as exc:  # noqa: BLE001 - the rows of Kiln's own clients above still count
        log.error("perf_analyzer's rows failed: %s", exc)
        result["perf_analyzer"] = {"skipped": f"failed: {exc}"}
    return result


def run_gpu_profile(args: argparse.Namespace, profile: dict[str, Any]) -> None:
    """Every CUDA engine on the exported classifier, and the gateway on the GPU against the same gateway
    on the CPU (``--cpu-repository``, else exported beside the GPU repository); without CUDA, a message
    and nothing measured."""
    status = gpu.cuda_status()
    if not status.usable:
        console.print(f"[yellow]PROFILE=gpu needs a CUDA GPU: {status.reason()}. Nothing was measured.")
        return
    wanted = set(args.only or GPU_PARTS)  # servers: the gateway on the GPU against the CPU
    entry = args.repository / args.classifier
    unmeasured = sorted(wanted - set(GPU_PARTS))
    if unmeasured:
        raise SystemExit(
            f"--profile gpu measures {' and '.join(GPU_PARTS)} only, not {', '.join(unmeasured)}"
        )
    if not (entry / "kiln.json").exists():
        raise SystemExit(f"{entry} is not an exported entry: run `make export DEVICE=gpu` first")
    problem = "engines" in wanted and inputs.rebuild_problem(
        args.repository, args.checkpoints, args.classifier
    )
    if problem:  # the PyTorch CUDA rows rebuild the model
        raise SystemExit(problem)
    out = args.output or Path("bench/results") / dt.datetime.now().strftime("gpu-%Y%m%d-%H%M%S")
    problem = inputs.output_problem(out)
    if problem:  # before anything runs or is written
        raise SystemExit(problem)
    serving = _gpu_serving_wanted(args, status, wanted)
    log.info("GPU profile on %s: %s", status.device_name, status.reason())
    results: dict[str, Any] = {
        "profile": args.profile,
        "machine": machine_info(),
        "threads": args.threads,
        "cuda": status.reason(),
        "targets": [],
    }
    if "engines" in wanted:
        jobs = gpu.gpu_jobs(
            args.repository,
            args.checkpoints,
            args.classifier,
            profile["batches"],
            profile["engine_budget_s"],
            status,
        )
        results["engines"] = engines.run_jobs(jobs, progress=log.info, runner=gpu.make_runner)
    if serving:
        results["serving"] = _gpu_serving(args, profile, out)
        results["targets"] = results["serving"]["summary"]
    write(results, out)


def _gpu_serving_wanted(args: argparse.Namespace, status: gpu.CudaStatus, wanted: set[str]) -> bool:
    """Whether the gateway on the GPU is measured against the CPU; a GPU repository whose config cannot
    serve on the GPU stops the bench here, before anything runs."""
    serving = "servers" in wanted and status.ort_cuda
    if serving:
        from bench import gpu_serving

        problem = gpu_serving.gpu_config_problem(args.repository, args.classifier)
        if problem:  # before anything runs
            raise SystemExit(problem)
    elif "servers" in wanted:
        log.info("the gateway on the GPU against the CPU is not measured: %s", status.reason())
    return serving


def _gpu_serving(args: argparse.Namespace, profile: dict[str, Any], out: Path) -> dict[str, Any]:
    """The gateway on the GPU against the same gateway on the CPU (exported beside the GPU repository
    unless ``--cpu-repository`` names one, or ``--serving-devices`` leaves the CPU out)."""
    from bench import gpu_serving

    cpu_repository = args.cpu_repository
    if args.serving_workers:
        profile = {**profile, "serving_workers": tuple(args.serving_workers)}
    if cpu_repository is None and "cpu" in args.serving_devices:
        cpu_repository = gpu_serving.cpu_repository_for(args.repository)
        models = (args.classifier, args.translator)
        gpu_serving.export_cpu_side(args.checkpoints, models, cpu_repository, log.info)
    out.mkdir(parents=True, exist_ok=True)
    return gpu_serving.run(
        args.repository,
        cpu_repository,
        args.checkpoints,
        profile,
        out,
        classifier=args.classifier,
        translator=args.translator,
        threads=args.threads,
        devices=tuple(args.serving_devices),
        progress=log.info,
    )


PERCENTILES = (
    "Percentiles (p50, p90, p99) of Kiln's own clients and in-process timings interpolate linearly "
    "between the two nearest ranks (numpy's default, `bench.stats.summarize`): under 101 samples "
    "p99 lies between the largest two; perf_analyzer's rows carry perf_analyzer's own.\n"
)


def write(results: dict[str, Any], out: Path) -> None:
    """report.md, the plots and results.json; the sections add their derived columns (x_naive,
    x_triton, speedups, p99_over_p50) to the rows, so results.json is written after them and keeps them."""
    machine = results["machine"]
    sections = [
        f"# Kiln benchmark ({results['profile']} profile)\n",
        f"Machine: {describe_cpu(machine)}, {machine['usable_cores']} usable cores, {machine['memory_gib']} GiB, "
        f"GPU: {machine['gpu'] or 'none'}; threads per engine: {results['threads']}.\n",
        speed_line(machine),
        "Libraries: " + ", ".join(f"{k} {v}" for k, v in machine["libraries"].items()) + "\n",
        PERCENTILES,
        "## Targets\n\n" + report.targets_table(results["targets"]) + "\n",
    ]
    if results.get("failed"):
        sections.append(
            "## Parts that failed (not measured)\n\n"
            + "\n".join(f"- {name}: {error}" for name, error in results["failed"].items())
            + "\n"
        )
    if "engines" in results:
        section = gpu.engine_section if results["profile"] == "gpu" else report.engine_section
        sections.append(section(results["engines"]))
    if "servers" in results:
        sections.append(
            report.server_section(results["servers"], best_direct_throughput(results.get("engines", [])))
        )
    if "translation" in results:
        sections.append(results["translation"].get("markdown", ""))
    if "serving" in results:
        sections.append(results["serving"]["markdown"])
    if "replicas" in results:
        sections.append(results["replicas"].get("markdown", ""))
    report.write_results(results, out)
    pngs = report.plots(results, out)
    sections += [f"![{p.stem}]({p.name})\n" for p in pngs]
    (out / "report.md").write_text("\n".join(sections))
    # soft_wrap: the Markdown table's rows and the paths stay whole lines, off a terminal's 80 columns too
    written = f"wrote {out}/results.json, report.md and {len(pngs)} plot(s)"
    console.print(written, style="green", markup=False, highlight=False, soft_wrap=True)
    console.print(report.targets_table(results["targets"]), markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
