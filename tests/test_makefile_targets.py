"""The Makefile's targets as users type them: paths with spaces, a ~ the shell left alone, what ``make
clean`` may remove, ``BACKEND=triton`` beside ``make triton``, ``GPU=1`` without a GPU, ``FRESH=1``.

Recipes are read with ``make -n`` (nothing runs, nothing is installed: ``VENV`` points at an empty temp
directory) and their words are taken as bash makes them, so quoting is checked, not guessed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from serving.triton.__main__ import parse_args as triton_args

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def clean_environment(**env: str) -> dict[str, str]:
    """This process's environment without what the Makefile reads (its variables, ``KILN_*``, make's own
    from an enclosing ``make test``), plus ``env``: a developer's ``GPU=1`` or ``TRITON_URL`` must not
    change what the recipes say."""
    named = set(re.findall(r"^([A-Z_]+)\s*[:?]?=", (ROOT / "Makefile").read_text(), re.M))
    named |= {"GPU", "FRESH", "TRITON_URL", "NVIDIA_DEVICES", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    kept = {k: v for k, v in os.environ.items() if k not in named and not k.startswith("KILN_")}
    return {**kept, **env}


def make(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environment(**env),
    )


def dry_run(tmp_path: Path, target: str, *variables: str, **env: str) -> list[str]:
    """The words (as bash splits and expands them) of the line of ``make -n target`` that runs Python's
    ``-m`` module for it."""
    done = make(ROOT, "-n", target, f"VENV={tmp_path / 'venv'}", *variables, **env)
    assert done.returncode == 0, done.stderr
    line = next(
        line
        for line in done.stdout.splitlines()
        if "/bin/python -m " in line and " pip " not in line and " -m venv " not in line  # setup's
    )
    words = subprocess.run(
        ["bash", "-c", f"printf '%s\\0' {line}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env=clean_environment(**env),
    ).stdout
    return words.split("\0")[:-1]


def flag(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


ODD_CHECKPOINTS = "runs/exp 1"
ODD_REPOSITORY = "it's a repo"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("train-classifier", {"--output-dir": ODD_CHECKPOINTS}),
        ("train-translator", {"--output-dir": ODD_CHECKPOINTS}),
        ("export", {"--repository": ODD_REPOSITORY}),
        ("serve", {"--model-repository": ODD_REPOSITORY}),
        ("triton", {"--model-repository": ODD_REPOSITORY}),
        ("demo", {"--checkpoints": ODD_CHECKPOINTS, "--repository": ODD_REPOSITORY}),
        (
            "bench",
            {"--checkpoints": ODD_CHECKPOINTS, "--repository": ODD_REPOSITORY, "--cpu-repository": "c d"},
        ),
    ],
)
def test_every_target_passes_a_path_with_spaces_or_quotes_as_one_argument(tmp_path, target, expected):
    """``make export CHECKPOINTS="runs/exp 1"`` ran ``python -m export runs/exp 1``: two paths, neither
    the user's."""
    words = dry_run(
        tmp_path,
        target,
        f"CHECKPOINTS={ODD_CHECKPOINTS}",
        f"REPOSITORY={ODD_REPOSITORY}",
        "CPU_REPOSITORY=c d",
    )
    assert {name: flag(words, name) for name in expected} == expected
    if target == "export":
        assert words[words.index("export") + 1] == ODD_CHECKPOINTS


def test_a_leading_tilde_the_shell_left_to_make_is_still_the_home_directory(tmp_path):
    """``sh -c 'make export CHECKPOINTS=~/ckpt'`` (a Dockerfile's RUN) hands make the ~ unexpanded; quoting
    the path must not turn it into a directory named ``~``."""
    home = tmp_path / "home dir"
    words = dry_run(tmp_path, "export", "CHECKPOINTS=~/ckpt", "REPOSITORY=~", HOME=str(home))
    assert words[words.index("export") + 1] == f"{home}/ckpt"
    assert flag(words, "--repository") == str(home)


def clean_checkout(tmp_path: Path) -> Path:
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", checkout / "Makefile")
    (checkout / "pyproject.toml").write_text("")
    return checkout


def touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")


def test_make_clean_with_a_checkpoints_path_holding_a_space_removes_nothing_beside_it(tmp_path):
    """``make clean CHECKPOINTS="exp 1"`` ran ``rm -rf exp 1/*.pt``: the whole directory ``exp`` went."""
    checkout = clean_checkout(tmp_path)
    kept = [checkout / "exp" / "notes.txt", checkout / "exp 1" / "photo.png", checkout / "exp 1" / "a.jsonl"]
    trained = [
        checkout / "exp 1" / f"lenet{suffix}"
        for suffix in (".pt", ".resume.pt", ".metrics.jsonl", ".curves.png")
    ]
    touch(*kept, *trained)
    done = make(checkout, "clean", "CHECKPOINTS=exp 1")
    assert done.returncode == 0, done.stderr
    assert [p for p in kept if not p.exists()] == []
    assert [p for p in trained if p.exists()] == []


def test_make_clean_removes_only_what_export_wrote_in_a_repository_of_other_things(tmp_path):
    """``make clean REPOSITORY=~`` emptied the home directory (only an ancestor of the current directory
    was refused): an entry export wrote has a kiln.json, as export itself tells its own from foreign ones."""
    checkout = clean_checkout(tmp_path)
    home = tmp_path / "my home"
    kept = [
        home / ".ssh" / "id_ed25519",
        home / "notes.txt",
        home / "triton_model" / "config.pbtxt",
        home / "README.md",
        home / ".kiln_export.lock",  # a running export's lock: removed, a second export could take a new one
    ]
    kiln = [
        home / ".resnet18.pt.0a1b2c3d.tmp",  # a checkpoint write a killed training left
        home / "lenet" / "kiln.json",
        home / "lenet" / "1" / "model.onnx",
        home / ".kiln_refused.json",
        home / ".lenet.tmp-host-1-abcd" / "config.pbtxt",
        home / ".lenet.old-host-1-abcd" / "kiln.json",
        tmp_path / ".my home.kiln-staging" / ".lenet.tmp-host-2-ef01" / "kiln.json",
    ]
    touch(*kept, *kiln)
    (checkout / "runs").mkdir()  # TensorBoard's default log directory: nothing of Kiln's
    done = make(checkout, "clean", f"REPOSITORY={home}", f"CHECKPOINTS={home}")
    assert done.returncode == 0, done.stderr
    assert [p for p in kept if not p.exists()] == []
    assert sorted(p.name for p in home.iterdir()) == [
        ".kiln_export.lock",
        ".ssh",
        "README.md",
        "notes.txt",
        "triton_model",
    ]
    assert not (tmp_path / ".my home.kiln-staging").exists()
    assert (checkout / "runs").is_dir()


def test_make_serve_backend_triton_alone_forwards_to_the_server_make_triton_runs(tmp_path):
    """The gateway's default Triton address is its own gRPC port (127.0.0.1:8001), which it refuses, so
    ``make serve BACKEND=triton`` as make help offers it never started."""
    triton_grpc = f"127.0.0.1:{triton_args([]).grpc_port}"
    assert flag(dry_run(tmp_path, "serve", "BACKEND=triton"), "--triton-url") == triton_grpc
    assert "--triton-url" not in dry_run(tmp_path, "serve", "BACKEND=triton", KILN_TRITON_URL="10.0.0.2:8001")
    assert flag(dry_run(tmp_path, "serve", "TRITON_URL=10.0.0.3:8001"), "--triton-url") == "10.0.0.3:8001"
    assert "--triton-url" not in dry_run(tmp_path, "serve")
    # the backend named by the gateway's own variable, and a TRITON_URL of the environment only where
    # KILN_TRITON_URL does not name the address
    assert flag(dry_run(tmp_path, "serve", KILN_BACKEND="triton"), "--triton-url") == triton_grpc
    assert "--triton-url" not in dry_run(
        tmp_path, "serve", "BACKEND=triton", TRITON_URL="10.0.0.4:8001", KILN_TRITON_URL="10.0.0.2:8001"
    )


def test_make_clean_names_a_repository_holding_the_checkout_without_running_what_its_name_holds(tmp_path):
    """Its refusal echoed the raw value inside double quotes: a backquote in REPOSITORY ran as a command."""
    checkout = clean_checkout(tmp_path)
    done = make(checkout, "clean", f"REPOSITORY={checkout}/`touch pwned`/..", "CHECKPOINTS=ck")
    assert done.returncode != 0 and "refusing to empty it" in done.stderr, done.stderr
    assert "`touch pwned`" in done.stderr and not (checkout / "pwned").exists()


def test_make_demo_gpu_on_a_machine_without_a_gpu_device_stops_before_installing_anything(tmp_path):
    """It uninstalled the CPU onnxruntime and fetched the gpu extra's CUDA wheels, then refused."""
    done = make(ROOT, "-n", "demo", "GPU=1", "NVIDIA_DEVICES=", f"VENV={tmp_path / 'venv'}")
    assert done.returncode != 0
    assert "no NVIDIA GPU device" in done.stderr and "without GPU=1" in done.stderr
    assert "pip" not in done.stdout and "kiln.demo" not in done.stdout


def test_make_demo_fresh_retrains_the_checkpoints_it_would_reuse(tmp_path):
    """The demo says "reusing resnet18.pt (--fresh retrains)", a flag make had no way to pass."""
    assert "--fresh" in dry_run(tmp_path, "demo", "FRESH=1")
    assert "--fresh" not in dry_run(tmp_path, "demo")


def test_setup_drops_every_stamp_before_it_changes_the_environment(tmp_path):
    """A GPU=1 install that fails after uninstalling the CPU onnxruntime must not leave the CPU stamp
    behind: the next ``make setup`` would say there is nothing to do, with no onnxruntime installed."""
    done = make(ROOT, "-n", "setup", "GPU=1", f"VENV={tmp_path / 'venv'}", "NVIDIA_DEVICES=/dev/nvidia0")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    drop = next(i for i, line in enumerate(lines) if line.startswith("rm -f") and ".kiln-installed-*" in line)
    uninstall = next(i for i, line in enumerate(lines) if "pip uninstall" in line)
    assert drop < uninstall
    assert not any(".kiln-installed-*" in line for line in lines[uninstall:])


def test_bench_passes_bench_args_on_to_the_bench(tmp_path):
    """``make bench`` named no classifier, so a classifier of one's own could not be benched through it."""
    words = dry_run(tmp_path, "bench", "BENCH_ARGS=--models-from mynets --classifier smallnet --only engines")
    assert words[words.index("--models-from") :] == [
        "--models-from",
        "mynets",
        "--classifier",
        "smallnet",
        "--only",
        "engines",
    ]
