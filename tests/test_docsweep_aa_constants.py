"""Numbers the README's training paragraphs and docs/translator-interface.md state, read from the text and
checked against the constants that decide them, so that a changed default fails here instead of leaving
the doc to say the old one: --dist-timeout's defaults, the cuBLAS workspace setting, how long a rank
waits for an unanswered rank 0, and the decoding defaults and limits, finish hold and compiled-call
record sizes."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def flat(text: str) -> str:
    """The text with its line breaks and runs of spaces as single spaces (a claim may wrap anywhere)."""
    return " ".join(text.split())


def readme() -> str:
    return flat((ROOT / "README.md").read_text())


def translator_interface() -> str:
    return flat((ROOT / "docs" / "translator-interface.md").read_text())


def test_the_dist_timeout_defaults_the_readme_gives_are_the_trainers() -> None:
    from training.dist_timeout import DEFAULT_DIST_TIMEOUT_S

    said = re.search(r"default: torch's, (\d+) s on CPU with gloo, (\d+) s on CUDA with nccl", readme())
    assert said, "the README no longer gives --dist-timeout's defaults"
    assert (float(said.group(1)), float(said.group(2))) == (
        DEFAULT_DIST_TIMEOUT_S["gloo"],
        DEFAULT_DIST_TIMEOUT_S["nccl"],
    )


def test_the_cublas_workspace_the_readme_names_is_the_one_the_trainers_set() -> None:
    from training.runtime import CUBLAS_WORKSPACE_CONFIG

    said = re.search(r"set `CUBLAS_WORKSPACE_CONFIG=([^`]+)` unless it is set", readme())
    assert said, "the README no longer names the cuBLAS workspace setting"
    assert said.group(1) == CUBLAS_WORKSPACE_CONFIG


def test_the_wait_for_an_unanswered_rank_0_the_readme_gives_is_the_attempt_stores() -> None:
    from training.attempt_store import NO_BEACON, UNANSWERED_WAIT

    said = re.search(r"stops the run within ~(\d+) minutes of its start", readme())
    assert said, "the README no longer says how soon an unreachable rank 0 stops the run"
    assert int(said.group(1)) * 60 == UNANSWERED_WAIT.total_seconds()
    assert f"`{NO_BEACON}=0` joins by torchrun's restart count" in readme()


def test_the_decoding_defaults_and_limits_translator_interface_md_gives_are_options_py() -> None:
    from serving.decoding.options import DEFAULT_MAX_LENGTH, DEFAULTS, LIMITS

    text = translator_interface()
    defaults = (
        f"(beam {DEFAULTS.beam_size}, n_best {DEFAULTS.n_best}, max_length {DEFAULT_MAX_LENGTH}, "
        "or the model's max_positions where lower, when a request does not choose it; "
        f"{DEFAULTS.length_penalty} penalty, alpha {DEFAULTS.alpha:g}; beam <= {LIMITS.max_beam_size}, "
        f"max_length <= {LIMITS.max_length} and the model's max_positions, <= {LIMITS.max_texts} texts "
        f"of <= {LIMITS.max_chars} characters)"
    )
    assert defaults in text, defaults
    assert f"`alpha <= {LIMITS.max_alpha:g}` keeps every divisor finite" in text
    assert f"so a REST request takes up to {LIMITS.max_texts} texts on either path" in text


def test_the_scheduler_numbers_translator_interface_md_gives_are_the_code() -> None:
    from serving.decoding.native_decoder import FOUND_STEPS, MAX_STEPS
    from serving.decoding.scheduler_config import SchedulerConfig

    text, config = translator_interface(), SchedulerConfig()
    assert f"up to {MAX_STEPS} (`MAX_STEPS`) in one call" in text
    assert f"room for {FOUND_STEPS} steps' worth, `FOUND_STEPS`" in text
    assert f"(`SchedulerConfig.finish_hold_steps`, {config.finish_hold_steps}," in text
    assert config.join_fraction == 0.25 and "once they are a quarter of the running sentences" in text
    assert f"or when the oldest has waited {config.join_wait_steps} decoder steps" in text
