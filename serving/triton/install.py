"""Where the nvidia-pytriton wheel put Triton, and the backends and environment its server runs with.

The wheel carries ``tritonserver``, the python backend and one python stub per Python version; the
stub matching this interpreter must sit next to ``libtriton_python.so``, find this environment's
packages (its ``bin`` first on PATH) and find libpython and the wheel's bundled libraries
(LD_LIBRARY_PATH). :class:`serving.triton.server.TritonServer` runs the server with them.

The stub is compiled against numpy 1 (the wheel pins ``numpy<2``): under numpy 2 it corrupts BYTES
tensors before ``model.py`` runs. So the models run in a separate *Triton python environment* with
numpy 1, onnxruntime and tokenizers (``make setup`` creates it at ``.venv/triton-env``), while the
project itself keeps numpy 2. ``KILN_TRITON_PYTHON_ENV`` names another one.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from serving.triton.flavour import make_writable

log = logging.getLogger(__name__)

STUB_NAME = "triton_python_backend_stub"


class TritonError(RuntimeError):
    """Triton could not be found, started or made ready; the message carries the server log tail."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel put the server binary, its backends, the per-Python stubs and its libraries."""

    root: Path  # .../site-packages/pytriton/tritonserver

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.root / "backends"

    @property
    def stub(self) -> Path:
        return (
            self.root
            / "python_backend_stubs"
            / f"{sys.version_info.major}.{sys.version_info.minor}"
            / STUB_NAME
        )

    @property
    def libs(self) -> Path:
        return self.root.parent.parent / "nvidia_pytriton.libs"


def find_triton() -> TritonInstall | None:
    """The nvidia-pytriton install, without importing pytriton (its own imports need extra packages)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    install = TritonInstall(Path(next(iter(spec.submodule_search_locations))) / "tritonserver")
    return install if install.binary.is_file() else None


def prepare_backends(install: TritonInstall, workdir: Path) -> Path:
    """A backend directory whose python backend holds this Python's stub (in place, else a copy)."""
    if not install.stub.is_file():
        raise TritonError(f"nvidia-pytriton has no python backend stub for Python {sys.version.split()[0]}")
    for backends in (install.backends, workdir / "backends"):
        target = backends / "python" / STUB_NAME
        try:
            if backends != install.backends and not (backends / "python").is_dir():
                shutil.copytree(install.backends, backends, dirs_exist_ok=True)
                make_writable(backends)  # the stub goes in, whatever the install's modes
            if not target.is_file() or target.stat().st_size != install.stub.stat().st_size:
                shutil.copy2(install.stub, target)
            return backends
        except OSError as error:
            log.info("cannot place the python stub in %s (%s); trying the work directory", backends, error)
    raise TritonError(f"cannot prepare a python backend directory under {workdir}")


def triton_python_env() -> Path:
    """The Python environment the stub runs models in (see the module docstring for why it is separate)."""
    named = os.environ.get("KILN_TRITON_PYTHON_ENV")
    if named:
        env = Path(named)
        if not (env / "bin" / "python").exists():
            raise TritonError(f"KILN_TRITON_PYTHON_ENV={named} is not a Python environment (no bin/python)")
        ours = "{}.{}".format(*sys.version_info[:2])
        _check_made_from(
            env,
            f"KILN_TRITON_PYTHON_ENV={named}",
            f"name one made from Python {ours} (python{ours} -m venv DIR; DIR/bin/pip install 'numpy<2' "
            "onnxruntime tokenizers)",
        )
        return env
    default = Path(sys.prefix) / "triton-env"
    if (default / "bin" / "python").exists():
        _check_made_from(default, str(default), "run `make setup`: it makes it anew from this one's Python")
        return default
    log.warning(
        "no Triton python environment at %s (run `make setup`); using this one, where a numpy 2 install "
        "makes the python stub corrupt BYTES tensors",
        default,
    )
    return Path(sys.prefix)


def _check_made_from(env: Path, named: str, fix: str) -> None:
    """Refuse ``env`` where its ``pyvenv.cfg`` says another Python version made it: Triton runs the models
    with the python stub of this interpreter's version (:attr:`TritonInstall.stub`), which does not see that
    version's packages, so every model was UNAVAILABLE ("No module named 'numpy'"), said in Triton's log only
    after the wait for readiness."""
    try:
        config = (env / "pyvenv.cfg").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return  # not a venv (a conda environment, a prefix): nothing says its version
    made = re.search(r"^version(?:_info)?\s*=\s*(\d+)\.(\d+)", config, re.M)
    ours = sys.version_info[:2]
    if made is not None and (int(made[1]), int(made[2])) != ours:
        raise TritonError(
            f"{named} was made from Python {made[1]}.{made[2]}, but Triton runs its python models with the stub "
            f"of this Python's version, {ours[0]}.{ours[1]}, which does not see that environment's packages "
            f"(every model would be UNAVAILABLE: No module named 'numpy'); {fix}"
        )


def triton_environment(install: TritonInstall) -> dict[str, str]:
    """Environment for the server: the Triton python env first on PATH, libpython and wheel libs on LD path."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(triton_python_env() / "bin"), env.get("PATH", "")])
    libdirs = [str(sysconfig.get_config_var("LIBDIR") or ""), str(install.libs)]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([d for d in libdirs if d] + [env.get("LD_LIBRARY_PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
