"""`make bench`: every hop side by side in one run; results in bench/results/<timestamp>/.

Profiles: ``quick`` (a few minutes), ``full`` (every batch size and concurrency) and ``gpu`` (the
classifier's CUDA engines: ``bench.gpu``). The machine is shared and noisy, so the report gives
medians and ratios measured in the same run, never absolutes from elsewhere.

This module runs the profile chosen and writes its report; the flags and the profiles' settings are
in :mod:`bench.options`, the CPU profiles' parts in :mod:`bench.cpu_parts`.
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

from bench import engines, gpu, inputs, report
from bench.cpu_parts import run_sections
from bench.machine import cpu_ticks, describe_cpu, machine_info, speed_line, speed_probe, steal_share
from bench.options import PROFILES, build_parser
from bench.targets import best_direct_throughput, targets
from kiln.cli import log_handler
from kiln.processes import stop_on_sigterm

console = Console()
log = logging.getLogger("bench")

GPU_PARTS = ("engines", "servers")  # what --only may name with --profile gpu


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``argv``'s flags (default: the command line's), the help headed by this module's first line."""
    return build_parser(__doc__.splitlines()[0]).parse_args(argv)


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
    made = not out.exists()  # an --output the user made is theirs, kept when the run is interrupted
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"profile": args.profile, "machine": machine_info(), "threads": args.threads}
    ticks = cpu_ticks()
    results["machine"]["speed"] = {"start": speed_probe()}
    try:
        failed = run_sections(args, profile, out, wanted, results)
    except KeyboardInterrupt:
        finished = [part for part in PARTS if part in wanted and part in results]
        if finished:  # minutes of measurement kept, the report saying what the stop left out
            _write_interrupted(args, results, out, wanted, finished)
            raise SystemExit(130) from None
        if made:
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


PARTS = ("engines", "servers", "translation", "replicas")  # the CPU profiles' parts, in the order they run


def _write_interrupted(
    args: argparse.Namespace, results: dict[str, Any], out: Path, wanted: set[str], finished: list[str]
) -> None:
    """The parts that finished before a Ctrl-C or SIGTERM, written as a run of those parts alone, the
    report and ``results.json`` (``interrupted``) naming the parts the stop left out."""
    failed = results.get("failed", {})  # named under "Parts that failed", not as the stop's
    left_out = [part for part in PARTS if part in wanted and part not in finished and part not in failed]
    results["interrupted"] = {"finished": finished, "not_measured": left_out}
    results["targets"] = targets(results, args.classifier)
    write(results, out)
    console.print(
        f"interrupted: wrote the parts that finished ({', '.join(finished)}); not measured: "
        f"{', '.join(left_out)}",
        style="yellow",
        markup=False,
        soft_wrap=True,
    )


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


def _discard_if_empty(out: Path) -> None:
    """Remove ``out`` when the run wrote nothing there (interrupted before any server's log); only a
    directory the run made itself: an empty --output the user made beforehand was removed too."""
    with contextlib.suppress(OSError):
        out.rmdir()


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
    ]
    stopped = results.get("interrupted")
    if stopped:
        sections.append(
            "**Interrupted** (Ctrl-C or SIGTERM): this report holds the parts that finished "
            f"({', '.join(stopped['finished'])}); not measured: {', '.join(stopped['not_measured'])}.\n"
        )
    sections.append("## Targets\n\n" + report.targets_table(results["targets"]) + "\n")
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
    (out / "report.md").write_text("\n".join(sections), encoding="utf-8")
    # soft_wrap: the Markdown table's rows and the paths stay whole lines, off a terminal's 80 columns too
    written = f"wrote {out}/results.json, report.md and {len(pngs)} plot(s)"
    console.print(written, style="green", markup=False, highlight=False, soft_wrap=True)
    console.print(report.targets_table(results["targets"]), markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
