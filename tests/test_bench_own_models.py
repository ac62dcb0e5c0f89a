"""`python -m bench` on the user's own models (README, "Your own classifier"; "Benchmarks"): a classifier
a module of theirs registers (``--models-from``), exported under a name of its own, fp32 only, in a
repository that holds no translator or no classifier by the default names. Each mistake is one line
before anything is measured or written; what works is measured on the entries of that one checkpoint.
The user's module registers its model in a subprocess only (test_own_classifier.py says why)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import engines, inputs

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 240  # a failure bound, never waited out by a run that works

MYNETS = """
from dataclasses import dataclass

from torch import nn

from training.models import register_model
from training.models.layers import ClassifierConfig


@dataclass
class TinyNetConfig(ClassifierConfig):
    width: int = 4


@register_model("kiln_bench_tinynet", task="classify", config=TinyNetConfig)
def tinynet(config):
    return nn.Sequential(
        nn.Conv2d(config.in_channels, config.width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(4 * config.width, config.num_classes),
    )
"""

# In the subprocess: the user's classifier saved as `mine-v2.pt` (its entry: not the model's name)
# and exported fp32 only, then the engines part of the bench with --models-from, then the naive
# baseline's app built from the environment the bench leaves to the processes it starts.
SCRIPT = """
import json, subprocess, sys
from pathlib import Path

import torch

from bench import __main__ as bench_main
from bench.options import PROFILES
from tests.classifier_exports import CHANNELS, LABELS, SIZE, tiny_images

root = Path(sys.argv[1])
from export.pipeline import export_checkpoint
from training.checkpoint import make_checkpoint, save_checkpoint
from training.models.registry import import_modules

import_modules(["kiln_bench_mynets"])
from training.models import build_model

args = {"num_classes": len(LABELS), "in_channels": CHANNELS}
pre = {"input_size": [SIZE, SIZE], "channels": CHANNELS, "mean": [0.4], "std": [0.3]}
ckpt = make_checkpoint(
    task="classify", model_name="kiln_bench_tinynet", model_args=args, model=build_model("kiln_bench_tinynet", **args),
    train_config={}, metrics={}, preprocessing=pre, labels=LABELS,
)
path = save_checkpoint(ckpt, root / "ckpt" / "mine-v2.pt")
export_checkpoint(path, root / "repo", validation=tiny_images(), tensorrt="off")
PROFILES["quick"].update(batches=(2,), engine_budget_s=0.05)
argv = ["--only", "engines", "--classifier", "mine-v2", "--repository", str(root / "repo"), "--threads", "1"]
argv += ["--checkpoints", str(root / "ckpt"), "--output", str(root / "out"), "--models-from", "kiln_bench_mynets"]
bench_main.main(argv)
naive = "from bench.naive import create_app; create_app(__import__('sys').argv[1], 1)"
subprocess.run([sys.executable, "-c", naive, str(path)], check=True, timeout=120)
"""


@pytest.fixture(scope="module")
def lenet(tmp_path_factory) -> Path:
    """A real lenet entry (fp32), read-only: the tests copy it; its checkpoint lies in ``<repo>-checkpoints``."""
    from tests.repo_fixtures import build_classifier_repository

    return build_classifier_repository(tmp_path_factory.mktemp("lenet") / "repo", ("lenet",))


def write_entry(repository: Path, name: str, meta: dict) -> Path:
    """An entry directory holding only ``kiln.json`` (the checks read nothing else)."""
    (repository / name).mkdir(parents=True)
    defaults = {"task": "classify", "inputs": [{"dims": [-1, 8, 8, 1]}]}
    (repository / name / "kiln.json").write_text(json.dumps({**defaults, **meta}))
    return repository / name


def run_bench(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[BaseException | None, list[str]]:
    """``python -m bench argv`` in-process with every part's measurement replaced: what it raised and
    the parts that started."""
    from bench import __main__ as bench_main
    from bench import perf_analyzer, servers, translation

    started: list[str] = []
    parts = (
        (servers, "run_servers"),
        (perf_analyzer, "side_by_side"),
        (translation, "run"),
        (engines, "run_jobs"),
    )
    for module, name in parts:
        monkeypatch.setattr(module, name, lambda *a, name=name, **k: started.append(name) or {})
    monkeypatch.setattr(bench_main, "speed_probe", lambda: {"product_gflops": 1.0, "copy_gbps": 1.0})
    monkeypatch.delenv("KILN_MODELS_FROM", raising=False)
    monkeypatch.delenv("KILN_PERF_ANALYZER", raising=False)
    try:
        bench_main.main(argv)
    except BaseException as exc:  # noqa: BLE001 - the test reads what came out
        return exc, started
    return None, started


def test_a_classifier_of_the_users_own_is_measured_with_models_from_in_the_pytorch_rows_and_the_baseline(
    tmp_path,
):
    """Without ``--models-from`` bench had no way to import the module: the PyTorch row was an error
    in the report asking for a flag bench lacked, and the naive baseline exited with a traceback. The
    entry is named after the file (``mine-v2``), not the model, whose entries the engines once looked
    for by the model's name: none, and an empty table."""
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "kiln_bench_mynets.py").write_text(MYNETS)
    env = {k: v for k, v in os.environ.items() if k != "KILN_MODELS_FROM"}
    env.update(PYTHONPATH=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["engines"]
    assert [(r["engine"], r["precision"], r.get("error")) for r in rows] == [
        ("pytorch", "fp32", None),
        ("onnxruntime", "fp32", None),
    ]


def test_a_users_classifier_without_its_module_is_one_line_naming_models_from_before_anything_runs(
    tmp_path, monkeypatch
):
    repository = tmp_path / "repo"
    model = {"name": "kiln_bench_unregistered", "args": {}, "module": "kiln_bench_theirs"}
    write_entry(repository, "theirs", {"model": model})
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "theirs.pt").write_bytes(b"")
    out = tmp_path / "out"
    argv = [
        "--repository",
        str(repository),
        "--checkpoints",
        str(tmp_path / "ckpt"),
        "--classifier",
        "theirs",
    ]
    raised, started = run_bench([*argv, "--only", "engines", "--output", str(out)], monkeypatch)
    assert isinstance(raised, SystemExit), raised
    assert "pass --models-from kiln_bench_theirs" in str(raised.code) and "\n" not in str(raised.code)
    assert started == [] and not out.exists()
    raised, _ = run_bench([*argv, "--models-from", "kiln_bench_absent_module"], monkeypatch)
    assert isinstance(raised, SystemExit) and "cannot import model module 'kiln_bench_absent_module'" in str(
        raised.code
    )


def test_the_engines_measure_the_named_entry_and_its_twins_not_another_checkpoints_entries_of_its_model(
    lenet, tmp_path
):
    """``lenet_b`` (a second lenet checkpoint, exported as its own entry) was measured beside ``lenet``
    as if one model, and ``--classifier lenet_b`` found no entry: they were matched by model name. A
    TensorRT twin (fp32 too) gave a second PyTorch row."""
    source = lenet
    repository = tmp_path / "repo"
    for name in ("lenet", "lenet_b"):
        shutil.copytree(source / "lenet", repository / name)
        meta = json.loads((repository / name / "kiln.json").read_text())
        meta["source_checkpoint"]["model"] = meta["name"] = name
        (repository / name / "kiln.json").write_text(json.dumps(meta))
    trt = repository / "lenet_trt"
    shutil.copytree(repository / "lenet", trt)
    (trt / "1" / "model.onnx").rename(trt / "1" / "model.plan")
    jobs = {
        name: engines.classifier_jobs(repository, tmp_path, name, (1,), 1, 0.1)
        for name in ("lenet", "lenet_b")
    }
    assert [(j.engine, measured(j)) for j in jobs["lenet"]] == [
        ("pytorch", "lenet.pt"),
        ("onnxruntime", "lenet"),
        ("tensorrt", "lenet_trt"),
    ]
    assert [(j.engine, measured(j)) for j in jobs["lenet_b"]] == [
        ("pytorch", "lenet.pt"),
        ("onnxruntime", "lenet_b"),
    ]


def measured(job: engines.EngineJob) -> str:
    """What a job runs: the checkpoint's file name, or the entry of the model file."""
    artifact = Path(job.artifact)
    return artifact.name if job.engine == "pytorch" else artifact.parent.parent.name


def test_the_pytorch_rows_read_the_checkpoint_in_checkpoints_when_the_recorded_path_is_gone(lenet, tmp_path):
    """A repository copied from elsewhere records a checkpoint path that is not here: the engines'
    PyTorch row was left out without a word, while the naive baseline read ``--checkpoints``."""
    source = lenet
    repository = tmp_path / "repo"
    shutil.copytree(source / "lenet", repository / "lenet")
    meta = json.loads((repository / "lenet" / "kiln.json").read_text())
    meta["source_checkpoint"]["path"] = str(tmp_path / "elsewhere" / "lenet.pt")
    (repository / "lenet" / "kiln.json").write_text(json.dumps(meta))
    checkpoints = tmp_path / "mine"
    checkpoints.mkdir()
    shutil.copy(source.parent / "repo-checkpoints" / "lenet.pt", checkpoints / "lenet.pt")
    jobs = engines.classifier_jobs(repository, checkpoints, "lenet", (1,), 1, 0.1)
    assert [(j.engine, j.artifact) for j in jobs][0] == ("pytorch", str(checkpoints / "lenet.pt"))
    assert inputs.classifier_checkpoint(repository, checkpoints, "lenet") == checkpoints / "lenet.pt"


@pytest.mark.parametrize(
    ("entries", "argv", "says"),
    [
        (
            {"mine": "classify"},
            [],
            "resnet18 is not an exported entry (classify entries there: mine): pass --classifier",
        ),
        (
            {"mine": "classify"},
            ["--classifier", "mine"],
            "transformer is not an exported entry (it holds no translate entry): pass --translator, run "
            "`make export`, or leave translation out: --only engines servers replicas",
        ),
        (
            {"transformer": "translate"},
            [],
            "or leave engines and servers and replicas out: --only translation",
        ),
    ],
)
def test_a_repository_without_the_default_entries_names_the_ones_it_has_and_how_to_leave_a_part_out(
    tmp_path, monkeypatch, entries, argv, says
):
    """The refusal said "run `make export` (or `make demo`) first", which writes no transformer for a
    user who has only a classifier of their own, nor names the --classifier they must pass."""
    for name, task in entries.items():
        write_entry(tmp_path / "repo", name, {"task": task})
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "mine.pt").write_bytes(b"")
    argv = [*argv, "--repository", str(tmp_path / "repo"), "--checkpoints", str(tmp_path / "ckpt")]
    raised, started = run_bench([*argv, "--output", str(tmp_path / "out")], monkeypatch)
    assert isinstance(raised, SystemExit) and says in str(raised.code), raised
    assert started == [] and not (tmp_path / "out").exists()


def test_an_output_whose_path_has_a_space_is_refused_where_triton_runs_under_it(tmp_path, monkeypatch):
    """Triton's python backend stubs exit (``stol``) in such a directory: the bench waited 120 s for a
    Triton that never became ready, in the servers part and again in the translation part."""
    write_entry(tmp_path / "repo", "mine", {})
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "mine.pt").write_bytes(b"")
    argv = [
        "--repository",
        str(tmp_path / "repo"),
        "--checkpoints",
        str(tmp_path / "ckpt"),
        "--classifier",
        "mine",
    ]
    out = tmp_path / "my results"
    raised, started = run_bench([*argv, "--only", "servers", "--output", str(out)], monkeypatch)
    assert isinstance(raised, SystemExit), raised
    assert "has whitespace in its path" in str(raised.code) and "--only engines" not in str(raised.code)
    assert started == [] and not out.exists()
    raised, started = run_bench([*argv, "--only", "engines", "--output", str(out)], monkeypatch)
    assert raised is None and started == ["run_jobs"]
    assert (out / "results.json").is_file()
