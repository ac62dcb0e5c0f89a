"""The compiled beam step (serving/decoding/beam_step.c) against its definition, the numpy step.

Random searches built to hit every rule: mixed beam sizes, min/max lengths and length penalties,
vocabularies small enough that EOS keeps ranking, coarse log-probs full of exact ties, -inf entries,
NaN rows, sentences joining and leaving between steps, and log-probs read through a row permutation.
At every step both implementations start from the same search and must agree on everything, bit for bit.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.decoding import beam_search as bs
from serving.decoding import compiled_step, native

pytestmark = pytest.mark.skipif(
    native.load() is None, reason="the compiled beam step could not be built here (no C compiler?)"
)


def random_configs(rng: np.random.Generator, n: int) -> list[bs.BeamConfig]:
    configs = []
    for _ in range(n):
        beam = int(rng.integers(1, 6))
        max_length = int(rng.integers(2, 9))
        configs.append(
            bs.BeamConfig(
                beam_size=beam,
                n_best=int(rng.integers(1, beam + 1)),
                max_length=max_length,
                min_length=int(rng.integers(0, min(3, max_length))),
                length_penalty=str(rng.choice(bs.LENGTH_PENALTIES)),
                alpha=float(rng.choice([0.0, 0.6, 1.0, 2.0])),
            )
        )
    return configs


def random_log_probs(rng: np.random.Generator, rows: int, vocab: int) -> np.ndarray:
    """Coarse values (many exact ties), some -inf, now and then a row with a NaN."""
    lp = (-rng.integers(0, 8, size=(rows, vocab)) * 0.5).astype(np.float32)
    lp[rng.random((rows, vocab)) < 0.1] = -np.inf
    if rows and rng.random() < 0.15:
        lp[rng.integers(rows), rng.integers(vocab)] = np.nan
    return lp


def assert_same(expected: bs.StepResult, got: bs.StepResult) -> None:
    np.testing.assert_array_equal(got.origin, expected.origin)
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    for field in dataclasses.fields(bs.Beams):
        want, have = getattr(expected.beams, field.name), getattr(got.beams, field.name)
        if field.name == "finished":
            assert have == want
        elif isinstance(want, np.ndarray):
            assert have.dtype == want.dtype, field.name
            np.testing.assert_array_equal(have, want, err_msg=field.name)
        else:
            assert have == want, field.name


def run_search(seed: int) -> int:
    """One random search to the end, comparing every step; returns the steps compared."""
    rng = np.random.default_rng(seed)
    library = native.load()
    vocab = int(rng.integers(3, 20))
    beams = bs.start(random_configs(rng, int(rng.integers(1, 6))))
    steps = 0
    while beams.scores.size:
        log_probs = random_log_probs(rng, beams.scores.size, vocab)
        expected = bs.step(beams, log_probs)
        order = rng.permutation(beams.scores.size)  # search row i is physical row order[i]
        physical = np.empty_like(log_probs)
        physical[order] = log_probs
        assert_same(expected, compiled_step.native_step(library, beams, physical, order))
        assert_same(expected, compiled_step.native_step(library, beams, log_probs))
        beams, steps = expected.beams, steps + 1
        if rng.random() < 0.3:  # finished sentences leave
            beams, _ = bs.remove(beams, beams.done)
        if beams.sentences and rng.random() < 0.3:  # others join
            beams = bs.concat(beams, bs.start(random_configs(rng, int(rng.integers(1, 3)))))
    return steps


@pytest.mark.parametrize("block", range(8))
def test_the_compiled_step_agrees_with_the_numpy_step_on_random_searches_bit_for_bit(block):
    assert sum(run_search(seed) for seed in range(block * 50, block * 50 + 50)) > 200


def test_the_compiled_step_is_what_step_runs_when_it_is_built(monkeypatch):
    calls = []
    monkeypatch.setattr(compiled_step, "native_step", lambda *args: calls.append(args) or "compiled")
    beams = bs.start([bs.BeamConfig(beam_size=2, max_length=4)])
    assert compiled_step.step(beams, np.zeros((1, 5), np.float32)) == "compiled" and len(calls) == 1


def test_beams_wider_than_the_kernel_takes_fall_back_to_numpy(monkeypatch):
    monkeypatch.setattr(native, "MAX_BEAM", 2)
    monkeypatch.setattr(compiled_step, "native_step", lambda *args: pytest.fail("the kernel got a beam of 3"))
    beams = bs.start([bs.BeamConfig(beam_size=3, max_length=4)])
    result = compiled_step.step(beams, np.log(np.full((1, 5), 0.2, np.float32)))
    assert result.beams.rows.tolist() == [3]


def test_log_probs_read_through_a_row_index_equal_them_gathered(monkeypatch):
    rng = np.random.default_rng(3)
    beams = bs.start([bs.BeamConfig(beam_size=2, max_length=5)] * 3)
    beams = compiled_step.step(beams, rng.standard_normal((3, 7)).astype(np.float32)).beams
    log_probs = rng.standard_normal((beams.scores.size, 7)).astype(np.float32)
    order = rng.permutation(beams.scores.size)
    physical = np.empty_like(log_probs)
    physical[order] = log_probs
    for load in (native.load, lambda: None):  # compiled, then numpy
        monkeypatch.setattr(native, "load", load)
        assert_same(bs.step(beams, log_probs), compiled_step.step(beams, physical, order))


def test_without_a_compiler_the_step_warns_once_and_runs_on_numpy(tmp_path):
    script = (
        "import logging; logging.basicConfig(level=logging.WARNING)\n"
        "from serving.decoding import native\n"
        "assert native.load() is None and native.load() is None\n"
    )
    env = {**os.environ, "CC": "no-such-compiler-kiln", "KILN_CACHE_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("no C compiler") == 1


def test_a_fresh_cache_gets_one_build_that_later_processes_reuse(tmp_path):
    script = "from serving.decoding import native\nassert native.load() is not None\n"
    env = {**os.environ, "KILN_CACHE_DIR": str(tmp_path)}
    for _ in range(2):
        run = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr
        assert [p.name for p in tmp_path.iterdir()] == [native.library_path(native.compiler()).name]


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.arange(6, dtype=np.int64),  # writable: through the buffer protocol
        lambda: np.broadcast_to(np.arange(3.0), (2, 3)),  # read-only view: numpy's ctypes address
        lambda: np.empty(0, np.float32),  # empty: no buffer to export
    ],
)
def test_kernel_arguments_are_the_arrays_own_addresses(make):
    array = make()
    assert compiled_step.address(array) == array.ctypes.data


def numpy_gather_grow(
    old: np.ndarray, new: np.ndarray, source: np.ndarray, axis: int, lead: int
) -> np.ndarray:
    """The definition: gather rows, drop the first ``lead`` columns, append the step's column."""
    kept = np.take(old, source, axis=0)[(slice(None),) * axis + (slice(lead, None),)]
    return np.concatenate([kept, np.take(new, source, axis=0)], axis=axis)


@pytest.mark.parametrize(
    ("shape", "axis", "lead", "dtype"),
    [
        ((7, 3, 5, 4), 2, 0, np.float32),  # [rows, heads, past, head_dim]: the Transformer's caches
        ((7, 3, 5, 4), 2, 3, np.float32),  # leading columns no live sentence uses any more
        ((6, 5, 8), 1, 2, np.float16),  # the cache axis right after rows; another element size
        ((6, 2, 3, 0), 2, 1, np.float32),  # empty inner dimension
        ((5, 2, 4, 3), 3, 3, np.float64),  # every old column dropped: only the new one stays
    ],
)
def test_cache_gather_grow_kernel_equals_its_numpy_definition(monkeypatch, shape, axis, lead, dtype):
    rng = np.random.default_rng(sum(shape) + lead)
    rows = shape[0]
    old = rng.standard_normal((rows + 2, *shape[1:])).astype(dtype)  # spare rows beyond those in use
    new_shape = list(shape)
    new_shape[axis] = 1
    new = rng.standard_normal(new_shape).astype(dtype)
    source = rng.integers(0, rows, size=rows + 3).astype(np.int64)  # rows repeat, as beams do
    want = numpy_gather_grow(old, new, source, axis, lead)
    for load in (native.load, lambda: None):  # compiled, then numpy
        monkeypatch.setattr(native, "load", load)
        out = np.full((source.size + 1, *want.shape[1:]), 7, dtype=dtype)  # one spare row: untouched
        compiled_step.gather_grow(old, new, source, axis, lead, out)
        np.testing.assert_array_equal(out[: source.size], want)
        assert (out[source.size :] == 7).all()


@pytest.mark.parametrize(
    ("new_shape", "out_shape", "lead"),
    [
        ((3, 2, 1, 5), (4, 3, 5, 4), 0),  # entries of other heads and width: read beyond them
        ((3, 3, 1, 4), (4, 3, 4, 4), 0),  # a buffer one column short: written beyond it
        ((3, 3, 1, 4), (2, 3, 5, 4), 0),  # fewer buffer rows than sources
        ((3, 3, 1, 4), (4, 3, 0, 4), 5),  # more leading columns dropped than the cache has
    ],
)
def test_cache_gather_grow_refuses_arrays_that_disagree_with_the_cache_on_both_paths(
    monkeypatch, new_shape, out_shape, lead
):
    old = np.zeros((3, 3, 4, 4), np.float32)  # [rows, heads, columns, head_dim]
    source = np.array([0, 2, 1], np.int64)
    for load in (native.load, lambda: None):  # compiled, then numpy
        monkeypatch.setattr(native, "load", load)
        new, out = np.zeros(new_shape, np.float32), np.zeros(out_shape, np.float32)
        with pytest.raises(ValueError, match="cannot be grown"):
            compiled_step.gather_grow(old, new, source, 2, lead, out)


def test_cache_gather_grow_of_non_contiguous_arrays_runs_on_numpy(monkeypatch):
    old = np.asfortranarray(np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4))
    new = np.arange(2 * 3, dtype=np.float32).reshape(2, 3, 1) + 100
    source = np.array([1, 0, 1], np.int64)
    out = np.empty((3, 3, 5), np.float32)
    monkeypatch.setattr(
        native.load(), "kiln_gather_grow", lambda *a: pytest.fail("the kernel got a Fortran array")
    )
    compiled_step.gather_grow(old, new, source, 2, 0, out)
    np.testing.assert_array_equal(out, numpy_gather_grow(old, new, source, 2, 0))


def test_missing_kernel_sources_leave_the_numpy_step_with_a_warning_not_a_crash(monkeypatch, caplog):
    """A wheel shipped only beam_step.c: reading the other two sources raised FileNotFoundError out of
    ``load()``, and the gateway refused to serve any translator."""
    monkeypatch.setattr(native, "SOURCES", (*native.SOURCES, native.SOURCE.with_name("absent.c")))
    with caplog.at_level("WARNING", logger=native.log.name):
        assert native._load() is None
    assert "absent.c" in caplog.text


def test_the_package_ships_every_kernel_source_the_build_reads():
    """pyproject's package data must hold every file ``native.SOURCES`` compiles (a wheel had one of three)."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["serving.decoding"]
    for source in native.SOURCES:
        assert any(fnmatch.fnmatch(source.name, p) for p in patterns), source.name
