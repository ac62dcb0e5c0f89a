"""Kiln installed from its wheel, as ``pip install .`` or a container image installs it, and run from a
directory that is not the checkout. Every other test imports the checkout, so only here would a file
missing from the wheel, a path looked up beside the checkout or a write into the installed package show.

The wheel is built once for the module, offline (``--no-deps --no-build-isolation``), from a copy of the
checkout's files (a build in the checkout writes ``build/`` there, and a stale ``build/lib`` would go into
the wheel), installed with ``pip --target`` and made read-only, as in an image. Each child has that copy
alone on its path, an empty working directory, a home and a temporary directory of its own, and, where
this is root, no capabilities (so the read-only modes bind it as they would any user).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from serving.decoding import native
from tests.test_container_runtime import DROPPED, _can_drop_privileges

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "export", "serving", "bench", "kiln")
BUILD_FILES = ("pyproject.toml", "README.md")
NOT_SHIPPED = {"bench/gpu_check.sh"}  # runs from a checkout (README, "An offline GPU machine")
# the python-backend models run inside Triton, whose python backend provides this module
TRITON_ONLY = "triton_python_backend_utils"
COMMANDS = ("training.classify", "training.translate", "export", "serving", "serving.triton", "bench")
COMMANDS += ("kiln.demo",)

IDENTITY_CONFIG = """name: "tiny"
platform: "onnxruntime_onnx"
max_batch_size: 4
input { name: "x" data_type: TYPE_FP32 dims: 3 }
output { name: "p" data_type: TYPE_FP32 dims: 3 }
instance_group { count: 1 kind: KIND_CPU }
"""


@dataclass
class Installed:
    """The wheel, where it is installed, and the directories its children run with."""

    wheel: Path
    site: Path
    cwd: Path
    home: Path
    tmp: Path
    prefix: list[str]  # runs a child without capabilities, where this is root and can drop them

    def env(self) -> dict[str, str]:
        """This environment without Kiln's settings, Python's path or a cache location, the install on it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "PYTHON", "XDG_CACHE"))}
        return {**env, "PYTHONPATH": str(self.site), "HOME": str(self.home), "TMPDIR": str(self.tmp)}

    def python(self, code: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``code`` on the install; it must exit 0 and leave the installed files as they were."""
        before = tree_state(self.site)
        run = subprocess.run(
            [*self.prefix, sys.executable, "-c", code],
            cwd=self.cwd,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert run.returncode == 0, run.stderr[-4000:]
        assert tree_state(self.site) == before, "the run wrote into the installed package"
        return run


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time: what a write would change."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def checkout_files() -> list[str]:
    """The files a clone of this checkout builds the wheel from: tracked or new, not ignored, present."""
    names = BUILD_FILES + PACKAGES
    args = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *names]
    listed = subprocess.run(args, cwd=ROOT, capture_output=True, timeout=60)
    if listed.returncode != 0:
        pytest.skip(f"git cannot list the checkout's files: {listed.stderr.decode().strip()}")
    return sorted({n for n in listed.stdout.decode().split("\0") if n and (ROOT / n).is_file()})


def _set_writable(root: Path, writable: bool) -> None:
    """``chmod -R u+w`` or ``a-w`` (an image's read-only install)."""
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~0o222)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Iterator[Installed]:
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools installed here")
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    for name in checkout_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    offline = ["--no-deps", "--no-index"]  # nothing is fetched: the build uses this setuptools
    dist, site = base / "dist", base / "site"
    build = [*pip, "wheel", *offline, "--no-build-isolation", "--wheel-dir", dist, src]
    subprocess.run(build, check=True, timeout=300)
    (wheel,) = dist.glob("kiln-*.whl")
    subprocess.run([*pip, "install", *offline, "--target", site, wheel], check=True, timeout=300)
    for name in ("cwd", "home", "tmp"):
        (base / name).mkdir()
    _set_writable(site, False)
    prefix = DROPPED if _can_drop_privileges() else []
    yield Installed(wheel, site, base / "cwd", base / "home", base / "tmp", prefix)
    _set_writable(site, True)  # so that pytest can remove it


def test_the_wheel_holds_every_file_of_the_packages_and_nothing_else(installed):
    """A file the code reads beside its module (the kernels' C sources, the Triton model templates)
    that the package data leaves out exists in the checkout only: the installed command then fails."""
    packaged = {n for n in zipfile.ZipFile(installed.wheel).namelist() if ".dist-info/" not in n}
    expected = {n for n in checkout_files() if n.split("/")[0] in PACKAGES} - NOT_SHIPPED
    assert sorted(expected - packaged) == [], "left out of the wheel (pyproject.toml package-data)"
    assert sorted(packaged - expected) == [], "in the wheel but not in the checkout"


def test_every_module_imports_from_the_install_in_another_directory(installed):
    """Nothing at import time reads a file at a checkout path, and each module is the installed copy
    (the checkout's editable install must not answer in its place)."""
    code = f"""
import importlib, json, pkgutil
outside, failed = [], {{}}
for top in {PACKAGES!r}:
    package = importlib.import_module(top)
    for info in [None, *pkgutil.walk_packages(package.__path__, top + ".")]:
        name = info.name if info else top
        if name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != {TRITON_ONLY!r}:
                failed[name] = repr(exc)
            continue
        except Exception as exc:
            failed[name] = repr(exc)
            continue
        if not module.__file__.startswith({str(installed.site) + os.sep!r}):
            outside.append(module.__file__)
print(json.dumps({{"outside": outside, "failed": failed}}))
"""
    found = json.loads(installed.python(code).stdout.splitlines()[-1])
    assert found == {"outside": [], "failed": {}}


def test_every_command_prints_its_help_from_the_install(installed):
    """``python -m <command> --help`` of each command, in one process (torch is imported once)."""
    code = f"""
import contextlib, io, runpy, sys
for command in {COMMANDS!r}:
    sys.argv, status, out = [command, "--help"], "returned", io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_module(command, run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            status = exc.code
    print(command, status, "usage:" in out.getvalue())
"""
    lines = installed.python(code).stdout.splitlines()
    assert lines[-len(COMMANDS) :] == [f"{command} 0 True" for command in COMMANDS]


@pytest.mark.skipif(native.compiler() is None, reason="no C compiler here to build the compiled step with")
def test_the_compiled_kernels_build_from_the_installed_sources_into_the_users_cache(installed):
    """The sources are read from the read-only install; the library goes to ``~/.cache/kiln``."""
    run = installed.python("from serving.decoding import native\nprint(native.loaded_path())\n")
    built = Path(run.stdout.strip().splitlines()[-1])
    assert built.parent == installed.home / ".cache" / "kiln", run.stderr


def test_export_copies_a_translators_runtime_modules_from_the_install(installed):
    """A translator's python-backend entry gets model.py and serving/'s decoding modules, found beside
    the installed export package."""
    code = """
import json
from pathlib import Path
from export import translator_entries
version = Path("version")
version.mkdir()
written = translator_entries._copy_runtime(version)
sources = {name: str(source) for name, source in translator_entries.runtime_sources().items()}
same = all((version / name).read_bytes() == Path(source).read_bytes() for name, source in sources.items())
print(json.dumps({"written": written, "same": same, "sources": sorted(sources.values())}))
"""
    found = json.loads(installed.python(code).stdout.splitlines()[-1])
    assert found["written"] == "model.py" and found["same"]
    assert all(source.startswith(str(installed.site) + os.sep) for source in found["sources"])
    shutil.rmtree(installed.cwd / "version")


def test_the_installed_gateway_answers_rest_and_grpc(installed, tmp_path, monkeypatch):
    """``python -m serving`` from the install, on a repository of one ONNX entry: a KServe v2 request
    over HTTP and one over gRPC (the gateway's own HTTP/2 server) are answered."""
    import httpx
    import numpy as np
    import tritonclient.grpc as grpcclient
    from onnx import TensorProto, helper

    from kiln.processes import running
    from serving.triton.ports import held_port
    from tests.repo_fixtures import write_onnx_entry

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    p = helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["p"])], "tiny", [x], [p])
    repository = write_onnx_entry(tmp_path / "repo", graph, IDENTITY_CONFIG)
    env = installed.env()  # the gateway's, inherited from this process while it runs
    for name in [n for n in os.environ if n not in env]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(installed.cwd)
    before = tree_state(installed.site)
    with held_port(reuse_port=True) as http, held_port(reuse_port=True) as grpc:
        http_port, grpc_port = http.getsockname()[1], grpc.getsockname()[1]
        cmd = [*installed.prefix, sys.executable, "-m", "serving", "--model-repository", str(repository)]
        cmd += ["--http-port", str(http_port), "--grpc-port", str(grpc_port), "--reuse-port"]
        url = f"http://127.0.0.1:{http_port}"
        with running(cmd, f"{url}/v2/health/ready", timeout_s=60, log_path=tmp_path / "gateway.log"):
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
            answer = httpx.post(f"{url}/v2/models/tiny/infer", json=body, timeout=30)
            assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == [1.0, 2.0, 3.0]
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            tensor = grpcclient.InferInput("x", [1, 3], "FP32")
            tensor.set_data_from_numpy(np.array([[4, 5, 6]], dtype=np.float32))
            result = client.infer("tiny", [tensor]).as_numpy("p")
            assert result.tolist() == [[4.0, 5.0, 6.0]]
            client.close()
    assert tree_state(installed.site) == before, "the gateway wrote into the installed package"
