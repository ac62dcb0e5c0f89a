"""What ``make`` checks before it trusts its install stamp (``.venv/.kiln-installed-<extras>``): that every
requirement of the installed project (``pyproject.toml``'s dependencies and those of the extras make
installed) is still installed, at a version the project allows. A package removed or replaced since
(``pip uninstall fastapi``, a ``pip install`` that downgraded numpy) left the stamp in place: ``make setup``
said "Nothing to be done" and every target stopped on a ModuleNotFoundError traceback.

``python -m kiln.installed [--triton-env DIR] EXTRAS [REQUIREMENT ...]`` prints nothing where all is there,
else one line naming what is not (make installs again); it reads package metadata only (no import of them: a
tenth of a second), and needs nothing but the standard library and ``packaging``. ``--triton-env``: Triton's
models' environment must be there, made from this Python's version (Triton runs its models with the python
stub of this interpreter's version, which does not see another version's packages)."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path


def problems(extras: set[str], more: Sequence[str] = ()) -> list[str]:
    """What is missing or at a version the requirement refuses: the project ``kiln``'s own requirements for
    ``extras``, then ``more`` (requirement strings, such as ``nvidia-pytriton>=0.5``)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return ["packaging (not installed)"]
    try:
        required = list(metadata.requires("kiln") or [])
    except metadata.PackageNotFoundError:
        return ["kiln itself (the project, installed editable; not installed)"]
    found = []
    for text in [*required, *more]:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is not None and not any(marker.evaluate({"extra": extra}) for extra in extras | {""}):
            continue  # another extra's, or another platform's
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            found.append(f"{requirement.name} (not installed)")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            found.append(f"{requirement.name} {version} (Kiln needs {requirement.specifier})")
    return found


def triton_env_problem(env: Path) -> str | None:
    """Why ``env`` is no Triton python environment for this interpreter, or None: missing, or made from
    another Python version (its ``pyvenv.cfg``'s ``version``, read rather than run)."""
    what = f"{env} (Triton's models' environment)"
    if not (env / "bin" / "python").exists():
        return f"{what}: not there"
    try:
        config = (env / "pyvenv.cfg").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"{what}: no pyvenv.cfg"
    match = re.search(r"^version(?:_info)?\s*=\s*(\d+)\.(\d+)", config, re.M)
    ours = sys.version_info[:2]
    if match is None or (int(match[1]), int(match[2])) != ours:
        made = f"Python {match[1]}.{match[2]}" if match else "an unknown Python"
        return f"{what}: made from {made}, not {ours[0]}.{ours[1]}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    triton_env = None
    if args[:1] == ["--triton-env"]:
        triton_env, args = Path(args[1]), args[2:]
    extras, *more = args
    found = problems({extra for extra in extras.split(",") if extra}, more)
    if triton_env is not None and (why := triton_env_problem(triton_env)) is not None:
        found.append(why)
    if found:
        print(", ".join(found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
