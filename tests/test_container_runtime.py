"""Kiln as a container platform runs it: a user without privileges, a home that is missing or read-only,
a model repository mounted read-only (its files possibly links, as Kubernetes lays out a volume), a
read-only root filesystem with writable volumes only where the manifest declares them.

Root writes through any file mode, so the tests that need a read-only file to stay read-only run
their code in a child without capabilities (``setpriv --bounding-set=-all``: uid 0, but file modes
apply to it as to any user), and skip where this is not root or setpriv is missing.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from serving.decoding import native
from serving.execution.repository import Repository
from serving.execution.shared_weights import WeightStore

ROOT = Path(__file__).resolve().parents[1]
SETPRIV = shutil.which("setpriv")
DROPPED = [SETPRIV or "setpriv", "--bounding-set=-all", "--inh-caps=-all"]


def _can_drop_privileges() -> bool:
    """Root with setpriv, in a container that lets it drop its capabilities."""
    if os.geteuid() != 0 or SETPRIV is None:
        return False
    return subprocess.run([*DROPPED, "true"], capture_output=True, timeout=30).returncode == 0


needs_dropping_privileges = pytest.mark.skipif(
    not _can_drop_privileges(),
    reason="needs root and setpriv able to drop its capabilities, to run a child that read-only file "
    "modes bind",
)

ONNX_CONFIG = """name: "%s"
platform: "onnxruntime_onnx"
max_batch_size: 4
input { name: "x" data_type: TYPE_FP32 dims: 3 }
output { name: "p" data_type: TYPE_FP32 dims: 3 label_filename: "labels.txt" }
instance_group { count: 1 kind: KIND_CPU }
"""
PYTHON_CONFIG = """name: "words"
backend: "python"
max_batch_size: 4
input { name: "text" data_type: TYPE_STRING dims: 1 }
output { name: "translation" data_type: TYPE_STRING dims: 1 }
"""


def _entries(root: Path) -> Path:
    """A repository of an ONNX entry (a stand-in model file: nothing here parses it) and a python one."""
    (root / "tiny" / "1").mkdir(parents=True)
    (root / "tiny" / "config.pbtxt").write_text(ONNX_CONFIG % "tiny")
    (root / "tiny" / "labels.txt").write_text("a\nb\nc\n")
    (root / "tiny" / "1" / "model.onnx").write_bytes(b"not parsed here")
    (root / "words" / "1").mkdir(parents=True)
    (root / "words" / "config.pbtxt").write_text(PYTHON_CONFIG)
    (root / "words" / "1" / "model.py").write_text("# the translator's model\n")
    return root


def _read_only(tree: Path) -> Path:
    """``chmod -R a-w``, as a read-only volume or a locked-down image serves files."""
    for path in [tree, *tree.rglob("*")]:
        if not path.is_symlink():
            path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)
    return tree


def _unprivileged(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a child that file modes bind (no capabilities), in ``tmp_path``."""
    run = subprocess.run(
        [*DROPPED, sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return run


@needs_dropping_privileges
def test_a_non_root_user_derives_the_python_flavour_of_a_read_only_repository_and_removes_it(tmp_path):
    """``python -m serving.triton`` copied the read-only modes of the repository into its flavour, then
    failed with a PermissionError traceback writing its own config.pbtxt there (as any non-root user
    on a read-only volume), and could not have removed the copy after."""
    repository = _read_only(_entries(tmp_path / "repo"))
    run = _unprivileged(
        "from pathlib import Path\n"
        "import shutil\n"
        "from serving.triton.flavour import derive_python_flavour\n"
        "report = derive_python_flavour(Path('repo'), Path('out'))\n"
        "print(report.wrapped, report.copied, sorted(p.name for p in Path('out/tiny/1').iterdir()))\n"
        "shutil.rmtree('out')\n",
        tmp_path,
    )
    assert run.stdout.split("\n")[0] == "['tiny'] ['words'] ['model.onnx', 'model.py']"
    assert not (tmp_path / "out").exists()
    assert (repository / "tiny" / "config.pbtxt").read_text() == ONNX_CONFIG % "tiny"  # untouched


@needs_dropping_privileges
def test_the_python_stub_is_placed_in_a_copy_of_a_read_only_triton_install(tmp_path):
    """An install this user cannot write gets a copy of its backends in the work directory for the
    stub: the copy kept the install's read-only modes, and the start failed ("cannot prepare a python
    backend directory"), leaving the read-only copy in the temporary directory."""
    install = tmp_path / "pytriton" / "tritonserver"
    (install / "backends" / "python").mkdir(parents=True)
    (install / "backends" / "python" / "libtriton_python.so").write_bytes(b"backend")
    (install / "backends" / "python" / "triton_python_backend_stub").write_bytes(b"another python's")
    stubs = install / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    stubs.mkdir(parents=True)
    (stubs / "triton_python_backend_stub").write_bytes(b"this python's stub")
    _read_only(tmp_path / "pytriton")
    run = _unprivileged(
        "from pathlib import Path\n"
        "import shutil\n"
        "from serving.triton.server import TritonInstall, prepare_backends\n"
        "backends = prepare_backends(TritonInstall(Path('pytriton/tritonserver').resolve()), Path('work'))\n"
        "print(backends, (backends / 'python' / 'triton_python_backend_stub').read_bytes().decode())\n"
        "shutil.rmtree('work')\n",
        tmp_path,
    )
    assert run.stdout.split() == ["work/backends", "this", "python's", "stub"]
    assert not (tmp_path / "work").exists()


def test_a_repository_laid_out_as_a_kubernetes_volume_serves_every_entry_with_its_labels(tmp_path):
    """Kubernetes' atomic writer mounts a volume as ``..<timestamp>/`` holding the files, ``..data``
    linked to it and each entry linked into ``..data``; a store of content-named files with the
    repository's files as links into it (DVC, git-annex) links every file out of its directory."""
    volume = tmp_path / "volume"
    _entries(volume / "..2026_01_01_00_00_00.0")
    (volume / "..data").symlink_to("..2026_01_01_00_00_00.0")
    for name in ("tiny", "words"):
        (volume / name).symlink_to(f"..data/{name}")
    store = tmp_path / "store"
    linked = _entries(tmp_path / "linked")
    for path in [p for p in linked.rglob("*") if p.is_file()]:
        blob = store / path.relative_to(linked).as_posix().replace("/", "-")
        blob.parent.mkdir(exist_ok=True)
        path.rename(blob)
        path.symlink_to(blob)
    for root in (_read_only(volume), _read_only(linked)):
        repository = Repository(root)
        assert repository.errors == {}
        assert repository.names() == ["tiny", "words"]
        assert repository.get("tiny").labels == {"p": ["a", "b", "c"]}


def test_without_a_home_to_name_the_compiled_step_is_cached_in_the_temporary_directory(monkeypatch, tmp_path):
    """HOME unset and a user id without a passwd entry (a container run as an arbitrary user): Path.home()
    raises, and that RuntimeError failed every translator's load ("Could not determine home
    directory.") instead of leaving, at worst, the numpy step."""
    for name in ("KILN_CACHE_DIR", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", no_home)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert native.cache_dir() == tmp_path / f"kiln-cache-{os.getuid()}" == native.temp_cache_dir()


@pytest.mark.skipif(native.compiler() is None, reason="no C compiler here to build the compiled step with")
def test_a_home_that_cannot_be_written_builds_the_compiled_step_in_the_temporary_directory(tmp_path):
    """``HOME=/nonexistent`` (the nobody user's), a read-only home: the build failed and every
    translator decoded with the numpy step, though the temporary directory was a writable volume."""
    (tmp_path / "not-a-directory").write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("KILN_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME=str(tmp_path / "not-a-directory" / "home"), TMPDIR=str(tmp_path), PYTHONPATH=str(ROOT))
    code = "from serving.decoding import native\nprint(native.loaded_path())\n"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    built = Path(run.stdout.strip())
    assert built.parent == tmp_path / f"kiln-cache-{os.getuid()}"
    assert stat.S_IMODE(built.parent.stat().st_mode) == 0o700
    assert "unavailable" not in run.stderr


def test_a_temporary_cache_others_may_write_is_not_built_in(monkeypatch, tmp_path):
    """What is built there is loaded as code: a directory another user made, or may write, is refused."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    shared = native.temp_cache_dir()
    shared.mkdir()
    shared.chmod(0o777)
    (tmp_path / "file").write_text("")
    with pytest.raises(PermissionError, match="only it may write"):
        native._build_target(tmp_path / "file" / "cache" / "beam_step.so")
    shared.chmod(0o700)
    assert native._build_target(tmp_path / "file" / "cache" / "beam_step.so") == shared / "beam_step.so"


def test_without_a_usable_temporary_directory_the_shared_weights_are_off_with_one_warning(
    monkeypatch, caplog
):
    """The warning named the temporary directory by asking for it again, which raised the same
    FileNotFoundError ("No usable temporary directory found") out of the gateway's model loading."""

    def none_usable() -> str:
        raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp']")

    monkeypatch.setattr(tempfile, "gettempdir", none_usable)
    with caplog.at_level(logging.WARNING, logger="serving.execution.shared_weights"):
        store = WeightStore()
    assert store.root is None
    assert [r.getMessage() for r in caplog.records] == [
        "no directory for the shared weights in the temporary directory ([Errno 2] No usable temporary "
        "directory found in ['/tmp']): every session loads its own copy of its model's weights"
    ]


def test_the_gateway_runs_unprivileged_on_a_read_only_root_with_a_writable_temporary_directory():
    """The gateway writes to its temporary directory (shared weights, the compiled step, the JSON
    helper's socket) and does not start without one: the Deployment that runs it on a read-only root
    filesystem, as no user with privileges, mounts a volume there."""
    deployment = yaml.safe_load((ROOT / "deploy/base/gateway/deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (gateway,) = [c for c in pod["containers"] if c["name"] == "gateway"]
    context = gateway["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["runAsNonRoot"] is True
    assert context["runAsUser"] != 0 and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    mounted = {m["mountPath"]: m["name"] for m in gateway["volumeMounts"] if not m.get("readOnly")}
    tmp = {v["name"]: v for v in pod["volumes"]}[mounted["/tmp"]]
    assert "emptyDir" in tmp
    temporary = {e["name"]: e.get("value") for e in gateway["env"]}.get("TMPDIR", "/tmp")
    assert temporary == "/tmp"


def test_without_a_writable_temporary_directory_the_gateway_stops_in_one_line(monkeypatch):
    """The sweep of killed gateways' leftovers asked for the temporary directory and died in a
    traceback (FileNotFoundError: No usable temporary directory found)."""
    from serving.__main__ import _check_temporary_directory

    def none_usable() -> str:
        raise FileNotFoundError("No usable temporary directory found in ['/tmp', '/var/tmp']")

    monkeypatch.setattr(tempfile, "gettempdir", none_usable)
    with pytest.raises(SystemExit) as stopped:
        _check_temporary_directory()
    assert "no writable temporary directory" in str(stopped.value.code)
    assert "mount a writable volume on /tmp" in str(stopped.value.code)
