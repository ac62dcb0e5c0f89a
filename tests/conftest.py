"""Shared fixtures: seeded, single-threaded torch so tests are reproducible and polite on shared CPUs."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _single_torch_thread() -> None:
    """One intra-op thread: the CI machines are small and shared, and results stay reproducible."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same RNG state, whatever ran before it."""
    torch.manual_seed(0)
