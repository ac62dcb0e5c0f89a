"""Kiln's benchmarks (``make bench``); ``kiln`` first: its gRPC fork setting precedes any gRPC use."""

import kiln  # noqa: F401
