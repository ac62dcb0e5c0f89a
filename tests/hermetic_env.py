"""The suite's environment without the ``KILN_*`` settings of the shell it runs from.

A developer who exports ``KILN_LOG_FORMAT=json``, ``KILN_WORKERS=2`` or ``KILN_MAX_QUEUE_SIZE=8`` for their
own gateway changed what every gateway the tests start does (pydantic reads ``KILN_<SETTING>`` for every
field of ``serving.settings.Settings``, and the kernels read ``KILN_NATIVE`` and its kin), and tests
failed for reasons that were not in the code. The conftest removes them before any test module is
imported; what a machine needs rather than chooses stays (where the kernel cache may be written, another
Triton python environment, a perf_analyzer), and so do the suite's own knobs.
"""

from __future__ import annotations

from collections.abc import MutableMapping

KEPT = ("KILN_CACHE_DIR", "KILN_TRITON_PYTHON_ENV", "KILN_PERF_ANALYZER", "KILN_UPDATE_GOLDEN")
KEPT_PREFIXES = ("KILN_TEST_", "KILN_FUZZ_", "KILN_WIRE_FUZZ_")  # the suite's own knobs


def drop_kiln_settings(environ: MutableMapping[str, str]) -> list[str]:
    """Remove from ``environ`` every ``KILN_*`` variable but :data:`KEPT` and the suite's knobs; the
    names removed, sorted."""
    dropped = sorted(
        name
        for name in environ
        if name.startswith("KILN_") and name not in KEPT and not name.startswith(KEPT_PREFIXES)
    )
    for name in dropped:
        del environ[name]
    return dropped
