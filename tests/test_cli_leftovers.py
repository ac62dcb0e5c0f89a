"""Command lines at their edges: an image size below a model's smallest, Ctrl-C during training or
export, a demo killed without a chance to clean up, and nothing to export or to serve."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.repo_fixtures import _tiny_checkpoint
from training import classify, classify_loop, classify_resolve
from training.classify_config import TrainConfig
from training.models import build_model, list_models
from training.models.layers import smallest_input_side, takes_input_side

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DATA_FLOOR = 4  # training.data.images refuses smaller images


def _meta_classifier(name: str) -> torch.nn.Module:
    """``name`` with its recipe's arguments, as a run builds it, on the meta device (shapes only)."""
    args = classify_resolve.architecture_args(TrainConfig(model=name))
    with torch.device("meta"):
        return build_model(name, **args, num_classes=2, in_channels=1)


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that reaches the training loop (and so reads data) fails the test."""

    def run(config: object) -> None:
        raise AssertionError("the run went on to read data and train")

    monkeypatch.setattr(classify_loop, "run", run)


@pytest.mark.parametrize(("model", "smallest"), [("lenet", 12), ("nin", 7)])
def test_an_image_size_below_the_models_smallest_is_one_error_line_naming_the_smallest(
    model: str, smallest: int, tmp_path: Path, capsys, no_training
) -> None:
    code = classify.main(["--model", model, "--image-size", str(smallest - 1), "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"--image-size {smallest - 1}: {model}" in err and f"use --image-size {smallest} or more" in err


def test_a_finetuned_models_smallest_image_size_comes_from_its_checkpoint(
    tmp_path: Path, capsys, no_training
) -> None:
    checkpoint = _tiny_checkpoint(tmp_path / "lenet.pt", "lenet", 0)
    argv = ["--finetune", str(checkpoint), "--image-size", "8", "--output-dir", str(tmp_path / "out")]
    assert classify.main(argv) == 2
    assert "use --image-size 12 or more" in capsys.readouterr().err


def test_a_models_smallest_image_size_is_found_by_bisection_and_every_larger_side_fits_too() -> None:
    model = _meta_classifier("lenet")
    smallest = smallest_input_side(model, 1)
    assert smallest == 12 and not takes_input_side(model, 1, smallest - 1)
    assert all(takes_input_side(model, 1, side) for side in range(smallest, 80))


def test_a_failure_that_is_not_about_size_has_no_smallest_side() -> None:
    with torch.device("meta"):
        model = build_model("lenet", num_classes=2, in_channels=3)
    assert smallest_input_side(model, 1) is None  # one channel fed to a three-channel model


def test_the_readme_names_each_classifiers_smallest_image_size_as_the_models_have_it() -> None:
    """The README's sizes are checked against the models, so the table cannot drift from them."""
    text = README.read_text()
    sizes = text[text.index("square inputs") : text.index("the data loader's floor")]
    stated = {name: int(side) for name, side in re.findall(r"`(\w+)` (\d+)×\d+", sizes)}
    assert stated and set(stated) < set(list_models("classify")), sizes
    for name in list_models("classify"):
        model, side = _meta_classifier(name), stated.get(name, DATA_FLOOR)
        assert takes_input_side(model, 1, side), f"{name} does not take {side}x{side}"
        if name in stated:
            assert not takes_input_side(model, 1, side - 1), f"{name} takes less than the README says"


def _read_lines(proc: subprocess.Popen, lines: queue.Queue) -> None:
    """Each line ``proc`` writes, then None at its end."""
    for line in proc.stdout:
        lines.put(line)
    lines.put(None)


def _interrupted(cmd: list[str], marker: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``cmd``, send it SIGINT once a line of its output holds ``marker``, and return its exit code
    and all its output. SIGINT is set to its default in the child: a shell's background job would
    otherwise hand it down ignored."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(proc, lines))
    reader.start()
    seen, deadline = [], time.monotonic() + 120
    try:
        while not any(marker in line for line in seen[-1:]):
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"exited before {marker!r}:\n{''.join(seen)}"
            seen.append(line)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=60)
    while (line := lines.get()) is not None:
        seen.append(line)
    return code, "".join(seen)


def _ends_interrupted(code: int, output: str) -> None:
    assert code == 130, output
    assert "Traceback" not in output and output.rstrip().endswith("interrupted"), output


def test_ctrl_c_during_export_exits_130_in_one_line_and_leaves_no_partial_entry_lock_or_temp(
    tmp_path: Path,
) -> None:
    _tiny_checkpoint(tmp_path / "checkpoints" / "lenet.pt", "lenet", 0)
    repository, temp = tmp_path / "repo", tmp_path / "tmp"
    temp.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "export",
        str(tmp_path / "checkpoints"),
        "--repository",
        str(repository),
        "-v",
    ]
    code, output = _interrupted(cmd, "INFO froze", env={"TMPDIR": str(temp)})
    _ends_interrupted(code, output)
    assert not repository.exists(), "an entry, a staging directory or the export lock was left"
    assert list(temp.iterdir()) == [] and not (tmp_path / ".repo.kiln-staging").exists()


def test_ctrl_c_during_classifier_training_exits_130_in_one_line_leaving_no_temporary_file(
    tmp_path: Path,
) -> None:
    cmd = [sys.executable, "-m", "training.classify", "--model", "lenet", "--epochs", "50"]
    cmd += ["--limit-train", "64", "--limit-val", "16", "--output-dir", str(tmp_path), "--no-progress"]
    code, output = _interrupted(cmd, "epoch 1/50")
    _ends_interrupted(code, output)
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "lenet.pt").exists()


def test_ctrl_c_during_translator_training_exits_130_in_one_line_leaving_no_temporary_file(
    tmp_path: Path,
) -> None:
    cmd = [sys.executable, "-m", "training.translate", "--model", "transformer", "--n-pairs", "400"]
    cmd += [
        "--epochs",
        "50",
        "--vocab-size",
        "60",
        "--val-limit",
        "4",
        "--batch-size",
        "32",
        "--threads",
        "1",
    ]
    for arg in ("d_model=32", "heads=2", "ffn_dim=64", "encoder_layers=1", "decoder_layers=1"):
        cmd += ["--model-arg", arg]
    code, output = _interrupted(cmd + ["--output-dir", str(tmp_path), "--no-progress"], "epoch 1.00")
    _ends_interrupted(code, output)
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "transformer.pt").exists()


DEMO_CHILDREN = """
import sys, threading
from pathlib import Path
from kiln.demo import gateway, run_stage

with gateway(Path(sys.argv[1])):
    print("GATEWAY READY", flush=True)
    run_stage("stage", [sys.executable, "-c", "import signal; print('STAGE', flush=True); signal.pause()"])
"""


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (procfs)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper has stopped: its ports are closed)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.timeout(300)  # the gateway's start is bounded by the demo's own ready timeout (120 s)
def test_a_demo_killed_outright_takes_its_gateway_and_its_running_stage_with_it(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()  # an empty repository: the gateway serves nothing, but it serves
    demo = subprocess.Popen(
        [sys.executable, "-c", DEMO_CHILDREN, str(tmp_path / "repo")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    children: list[int] = []
    try:
        for line in demo.stdout:  # bounded by the gateway's ready timeout, and the stage's one print
            if line.startswith("STAGE"):
                break
        children = _children(demo.pid)
        assert len(children) == 2, f"expected the gateway and the stage, found {children}"
        demo.kill()
        demo.wait()
        deadline = time.monotonic() + 60
        while any(map(_running, children)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_running, children)), "a child of the killed demo is still running"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in filter(_running, children):
            os.kill(pid, signal.SIGKILL)


TRITON_HOLDER = """
import sys, threading
from pathlib import Path
from serving.triton import TritonServer

with TritonServer(Path(sys.argv[1]), Path(sys.argv[2])) as server:
    print("TRITON", server.process.pid, flush=True)
    threading.Event().wait()
"""


def test_a_triton_launcher_killed_outright_takes_tritonserver_with_it(tmp_path: Path) -> None:
    """tritonserver runs in its own session; a launcher killed by SIGKILL left it serving its ports."""
    from serving.triton import find_triton
    from tests.repo_fixtures import build_classifier_repository

    if find_triton() is None:
        pytest.skip("the tritonserver binary from nvidia-pytriton is not installed")
    repository = build_classifier_repository(tmp_path / "repo")
    holder = subprocess.Popen(
        [sys.executable, "-c", TRITON_HOLDER, str(repository), str(tmp_path / "work")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    triton = None
    try:
        for line in holder.stdout:  # bounded by TritonServer's own ready timeout
            if line.startswith("TRITON"):
                triton = int(line.split()[1])
                break
        assert triton is not None and _running(triton), "tritonserver did not start"
        holder.kill()
        holder.wait()
        deadline = time.monotonic() + 60
        while _running(triton) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(triton), "tritonserver outlived the launcher killed outright"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if triton is not None and _running(triton):
            os.kill(triton, signal.SIGKILL)


def test_export_with_no_checkpoints_says_how_to_make_some(tmp_path: Path, capsys) -> None:
    from export.__main__ import main

    (tmp_path / "checkpoints").mkdir()
    assert main([str(tmp_path / "checkpoints"), "--repository", str(tmp_path / "repo")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no checkpoints (*.pt) found" in err and "`make train`" in err
    assert f"python -m training.classify --output-dir {tmp_path / 'checkpoints'}" in err


def test_export_of_a_checkpoint_directory_that_does_not_exist_says_how_to_make_it(
    tmp_path: Path, capsys
) -> None:
    from export.__main__ import main

    assert main([str(tmp_path / "checkpoints"), "--repository", str(tmp_path / "repo")]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "no such checkpoint file or directory" in err and "`make train`" in err


def test_the_triton_launcher_on_an_empty_repository_points_to_export_and_leaves_no_temp_dir(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.triton import server
    from serving.triton.__main__ import main

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(server, "find_triton", lambda: server.TritonInstall(tmp_path))  # never launched
    (tmp_path / "repo").mkdir()
    ports = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    assert main(["--model-repository", str(tmp_path / "repo"), *ports]) == 1
    out = " ".join(capsys.readouterr().err.split())
    assert "holds no ONNX or python model entry" in out and "run `make export`" in out
    assert list(temp.iterdir()) == []
