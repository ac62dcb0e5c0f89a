"""A ``KILN_MODELS_FROM`` left in the shell (from README's own-classifier walk-through) naming a module since
removed: every command that reads it (training, export, ``make demo``'s export stage) stopped naming the
module alone, so nothing said it came from the environment, not from a flag just typed."""

from __future__ import annotations

import pytest

from training.models.registry import ModelModuleError, env_modules, import_modules


def test_a_module_the_environment_names_that_is_gone_names_the_variable(monkeypatch):
    monkeypatch.setenv("KILN_MODELS_FROM", "kiln_hi_removed_nets")
    with pytest.raises(ModelModuleError) as raised:
        import_modules(env_modules())
    message = str(raised.value)
    assert message.startswith("cannot import model module 'kiln_hi_removed_nets': no module named")
    assert "KILN_MODELS_FROM in the environment names it" in message


def test_a_module_only_a_flag_names_is_refused_as_before(monkeypatch):
    monkeypatch.setenv("KILN_MODELS_FROM", "json")
    with pytest.raises(ModelModuleError) as raised:
        import_modules([*env_modules(), "kiln_hi_flag_nets"])
    assert "'kiln_hi_flag_nets'" in str(raised.value) and "KILN_MODELS_FROM" not in str(raised.value)
