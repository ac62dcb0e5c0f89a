"""Which version directories an entry's ``version_policy`` serves, with nothing but the standard library.

The gateway reads config.pbtxt through tritonclient's protobuf classes
(:func:`serving.execution.model_versions.select_versions`); Triton's python translator model runs where
neither is installed (numpy, onnxruntime and tokenizers only), and opened the highest version directory
of its ``<name>_encoder`` / ``<name>_decoder`` whatever their policy said, so under ``specific`` it
decoded with another version than the gateway (and Triton's own encoder entry) served. Both pick by
:func:`policy_versions`; the python model reads the policy with :func:`read_version_policy`. Copied
beside the python model by the exporter (``export.translator_entries.EXECUTION_MODULES``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

# config.pbtxt's tokens: a quoted string (skipped whole: it may hold '#' or braces), a comment, a word
# or number, or one punctuation mark
_TOKEN = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|#[^\n]*|[A-Za-z0-9_.+-]+|[{}\[\]<>:,;]")


def is_version_name(name: str) -> bool:
    """A version directory's name: plain digits, no leading zero (as Triton reads them)."""
    return name.isascii() and name.isdigit() and str(int(name)) == name


def policy_versions(found: Iterable[int], kind: str | None, count: int, specific: Iterable[int]) -> list[int]:
    """The versions among ``found`` that a policy serves, ascending: ``all``; ``specific`` (those listed);
    otherwise ``latest`` ``count`` (the policy's default, None, is latest 1; as Triton, ``latest {
    num_versions: 0 }`` selects none)."""
    ordered = sorted(set(found))
    if kind == "all":
        return ordered
    if kind == "specific":
        wanted = set(specific)
        return [v for v in ordered if v in wanted]
    count = count if kind == "latest" else 1
    return ordered[-count:] if count > 0 else []


def read_version_policy(pbtxt: str) -> tuple[str | None, int, list[int]]:
    """``(kind, num_versions, versions)`` of config.pbtxt's top-level ``version_policy``: kind ``latest``,
    ``all``, ``specific`` or None (no policy: latest 1); ``num_versions`` as written (0 where unset, as
    protobuf reads it); ``versions``: those ``specific`` lists."""
    tokens = [t for t in _TOKEN.findall(pbtxt) if not t.startswith("#")]
    depth, start = 0, None
    for i, token in enumerate(tokens):
        if token in ("{", "<"):
            depth += 1
        elif token in ("}", ">"):
            depth -= 1
        elif depth == 0 and token == "version_policy":
            start = i
            break
    if start is None:
        return None, 0, []
    kind, count, versions, depth = None, 0, [], 0
    for i in range(start + 1, len(tokens)):
        token = tokens[i]
        if token in ("{", "<"):
            depth += 1
        elif token in ("}", ">"):
            depth -= 1
            if depth == 0:
                break
        elif depth == 1 and token in ("latest", "all", "specific"):
            kind = token
        elif token == "num_versions":
            count = _integer(_next_number(tokens, i))
        elif token == "versions":
            versions += _numbers_after(tokens, i)
    return kind, count, versions


def _next_number(tokens: list[str], i: int) -> str:
    """The number after field ``tokens[i]`` (past its ``:``)."""
    j = i + 1
    while tokens[j] == ":":
        j += 1
    return tokens[j]


def _numbers_after(tokens: list[str], i: int) -> list[int]:
    """``versions: 3`` or ``versions: [1, 3]``: the numbers of field ``tokens[i]``."""
    j = i + 1
    while tokens[j] == ":":
        j += 1
    if tokens[j] != "[":
        return [_integer(tokens[j])]
    numbers = []
    for token in tokens[j + 1 :]:
        if token == "]":
            break
        if token != ",":
            numbers.append(_integer(token))
    return numbers


def _integer(token: str) -> int:
    """An integer as protobuf's text format reads it (Triton's and the gateway's parser): ``0x1f`` is
    hex and a leading zero octal, so ``versions: 010`` is version 8 there (``int()`` read 10, and a hex
    number failed the translator's load)."""
    sign, digits = (token[0], token[1:]) if token[:1] in "+-" else ("", token)
    if len(digits) > 1 and digits[0] == "0" and digits.isdigit():
        digits = "0o" + digits[1:]
    return int(sign + digits, 0)


def served_version(entry_dir: str) -> str:
    """The directory of the version a call naming none reaches: the newest that ``entry_dir``'s
    config.pbtxt ``version_policy`` serves among its version directories holding files (what the
    gateway serves, and Triton answers "latest" with)."""
    found = [
        int(name)
        for name in os.listdir(entry_dir)
        if is_version_name(name)
        and os.path.isdir(os.path.join(entry_dir, name))
        and os.listdir(os.path.join(entry_dir, name))
    ]
    config = os.path.join(entry_dir, "config.pbtxt")
    try:
        with open(config, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:  # none (Triton completes an ONNX model's): its default policy, latest 1
        text = ""
    kind, count, specific = read_version_policy(text)
    chosen = policy_versions(found, kind, count, specific)
    if not chosen:
        raise ValueError(
            f"{entry_dir} has no version its version_policy serves (version directories holding files: "
            f"{sorted(found)})"
        )
    return os.path.join(entry_dir, str(chosen[-1]))
