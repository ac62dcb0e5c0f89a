"""The suite ignores the KILN_* settings of the shell it runs from (tests/hermetic_env.py)."""

from __future__ import annotations

import os

from serving.settings import Settings
from tests.hermetic_env import KEPT, drop_kiln_settings


def test_every_gateway_setting_from_the_shell_is_dropped_and_the_machines_and_suites_knobs_stay() -> None:
    environ = {f"KILN_{name.upper()}": "x" for name in Settings.model_fields}
    environ |= {"KILN_NATIVE": "0", "KILN_ATTENTION_PORTABLE": "1", "PATH": "/bin"}
    environ |= {"KILN_CACHE_DIR": "/c", "KILN_TEST_KILL_AT": "1", "KILN_FUZZ_SEED": "3"}
    dropped = drop_kiln_settings(environ)
    assert "KILN_LOG_FORMAT" in dropped and "KILN_WORKERS" in dropped and "KILN_NATIVE" in dropped
    assert sorted(environ) == ["KILN_CACHE_DIR", "KILN_FUZZ_SEED", "KILN_TEST_KILL_AT", "PATH"]
    assert not any(f"KILN_{name.upper()}" in KEPT for name in Settings.model_fields)


def test_this_runs_environment_holds_no_gateway_setting() -> None:
    assert not [f"KILN_{n.upper()}" for n in Settings.model_fields if f"KILN_{n.upper()}" in os.environ]
    assert Settings().log_format == "text"
