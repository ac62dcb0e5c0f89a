"""The docs (deploy, kiln.json, translator interface, corpus) and the commands' help name flags, variables,
defaults and fields the code has: each test reads them from the docs or the help and checks them
against the parsers, the settings and the code's own defaults, so a flag renamed or a default changed
without its doc fails here."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from serving.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("deploy.md", "kiln-json.md", "translator-interface.md", "corpus.md")
SOURCES = ("serving", "kiln", "export", "training", "bench")


def doc(name: str) -> str:
    return (ROOT / "docs" / name).read_text()


class _Parsed(Exception):
    """Raised by a parser's ``parse_args`` to hand the parser itself back (see :func:`parser_of`)."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def parser_of(parse: Callable[..., object]) -> argparse.ArgumentParser:
    """The parser a command's ``parse_args(argv)`` builds, for commands that do not expose their builder."""
    real = argparse.ArgumentParser.parse_args

    def hand_back(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Parsed(self)

    argparse.ArgumentParser.parse_args = hand_back  # type: ignore[method-assign]
    try:
        parse([])
    except _Parsed as parsed:
        return parsed.parser
    finally:
        argparse.ArgumentParser.parse_args = real  # type: ignore[method-assign]
    raise AssertionError(f"{parse} built no parser")


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every Kiln command's parser, by the module ``python -m`` runs."""
    import bench.__main__ as bench_main
    import export.__main__ as export_main
    import serving.triton.__main__ as triton_main
    from serving.__main__ import build_parser as serving_parser
    from training.classify import build_parser as classify_parser
    from training.translate import build_parser as translate_parser

    return {
        "training.classify": classify_parser(),
        "training.translate": translate_parser(),
        "export": parser_of(export_main.parse_args),
        "serving": serving_parser(),
        "serving.triton": parser_of(triton_main.parse_args),
        "bench": parser_of(bench_main.parse_args),
    }


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


# Which commands each doc's flags belong to, and the flags it names of other programs (with their owner).
DOC_COMMANDS = {
    "deploy.md": ("serving", "bench"),
    "kiln-json.md": ("export", "serving"),
    "translator-interface.md": ("serving",),
    "corpus.md": ("training.translate",),
}
OTHER_PROGRAMS = {
    "--model-control-mode": "tritonserver",
    "--load-model": "tritonserver",
    "--strict-readiness": "tritonserver",
    "--exit-timeout-secs": "tritonserver",
    "--http-address": "tritonserver",
    "--grpc-address": "tritonserver",
    "--metrics-address": "tritonserver",
    "--shm-size": "docker run",
    "--streaming": "perf_analyzer",
    "--triton-lb": "a setting deploy.md proposes, said not to exist",
}


def test_every_flag_the_docs_name_is_a_flag_of_their_commands_or_of_a_named_other_program() -> None:
    known = {command: flags(parser) for command, parser in parsers().items()}
    for name, commands in DOC_COMMANDS.items():
        theirs = set().union(*(known[command] for command in commands))
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", doc(name)))
        unknown = sorted(named - theirs - set(OTHER_PROGRAMS))
        assert not unknown, f"docs/{name} names {unknown}, no flag of {commands}"


def variable_readers() -> set[str]:
    """Every ``KILN_*`` variable the code reads itself (``os.environ`` or C's ``getenv``)."""
    read = re.compile(r"""(?:environ(?:\.get)?\s*[\[(]|getenv\()\s*["'](KILN_[A-Z0-9_]+)["']""")
    names = set()
    for package in SOURCES:
        for path in (ROOT / package).rglob("*"):
            if path.suffix in (".py", ".c") and path.is_file():
                names.update(read.findall(path.read_text()))
    return names


def test_every_kiln_variable_the_docs_name_is_a_gateway_setting_or_read_by_the_code() -> None:
    from serving.__main__ import INTERNAL

    settings = {f"KILN_{name.upper()}" for name in Settings.model_fields if name not in INTERNAL}
    readers = variable_readers()
    for name in DOCS:
        named = set(re.findall(r"KILN_[A-Z0-9_]+[A-Z0-9]", doc(name)))
        unknown = sorted(named - settings - readers)
        assert not unknown, f"docs/{name} names {unknown}: no gateway setting, and no code reads them"


UNITS = {None: 1, "s": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def test_the_defaults_deploy_md_gives_the_gateway_variables_are_the_settings_defaults() -> None:
    pattern = r"`KILN_([A-Z_]+)`(?: \(|, (?:default )?)(\d+(?:\.\d+)?)(?: ?(s|KiB|MiB|GiB)\b)?"
    found = re.findall(pattern, doc("deploy.md"))
    assert len(found) >= 8, found  # the pattern still reads the doc
    for name, number, unit in found:
        default = Settings.model_fields[name.lower()].default
        assert float(number) * UNITS[unit or None] == default, f"KILN_{name}: deploy.md {number} {unit}"


def test_the_gate_defaults_kiln_json_md_gives_are_the_export_flags_defaults() -> None:
    defaults = {a.option_strings[0]: a.default for a in parsers()["export"]._actions if a.option_strings}
    found = re.findall(r"(--[a-z0-9-]+)` \((\d+(?:\.\d+)?)\)", doc("kiln-json.md"))
    assert {flag for flag, _ in found} >= {"--int8-max-drop", "--int8-min-agreement", "--int8-max-bleu-drop"}
    for flag, number in found:
        assert defaults[flag] == float(number), f"{flag}: kiln-json.md {number}, the parser {defaults[flag]}"


def test_the_defaults_the_serving_help_names_are_the_ones_the_gateway_uses() -> None:
    from serving.decoding.scheduler_config import SchedulerConfig
    from serving.execution.ort_options import OrtOptions
    from serving.lifespan import cpu_decode_workers

    used = {  # decode workers: the default a lone gateway process of 2 cores gives a CPU translator
        "decode_workers": cpu_decode_workers(Settings(), cpus=2),
        "finish_hold_steps": SchedulerConfig().finish_hold_steps,
        "decode_release_idle_s": SchedulerConfig().release_idle_s,
        "batch_release_idle_s": OrtOptions().release_idle_s,
    }
    named = {}
    for name, field in Settings.model_fields.items():
        match = re.search(r"default: (\d+(?:\.\d+)?)", field.description or "")
        if match:
            named[name] = float(match.group(1))
    assert named == used


@pytest.mark.parametrize(("threads", "parallel"), [(1, False), (4, True)])
def test_inter_op_threads_above_one_run_the_session_in_the_parallel_mode_that_uses_them(
    tmp_path: Path, threads: int, parallel: bool
) -> None:
    """ONNX Runtime runs inter-op threads only in its parallel execution mode: a sequential session
    would take ``--inter-op-threads 4`` and change nothing."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from serving.execution import placement
    from serving.execution.ort_options import OrtOptions
    from serving.execution.ort_sessions import SessionOpener

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "m" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)

    opener = SessionOpener(OrtOptions(inter_op_threads=threads), session_factory=ort.InferenceSession)
    session, _ = opener.open_session(path, placement.Placement(placement.CPU, "cpu"))
    options = session.get_session_options()
    assert (options.execution_mode == ort.ExecutionMode.ORT_PARALLEL) is parallel
    assert options.inter_op_num_threads == threads
    # spinning inter-op threads took the cores (4 threads on 2 cores: runs 70x slower): they sleep
    try:
        spinning = options.get_session_config_entry("session.inter_op.allow_spinning")
    except RuntimeError:  # not set: ORT's default
        spinning = None
    assert spinning == ("0" if parallel else None)
    assert session.run(None, {"x": np.array([1.0], np.float32)})[0].tolist() == [1.0]
    assert "parallel execution mode" in Settings.model_fields["inter_op_threads"].description


def test_the_translate_help_names_the_defaults_that_end_a_run_early() -> None:
    """A run stops at --time-budget minutes or --patience evaluations without a gain whatever --epochs
    says: each of these must show the default the run takes."""
    from training.translate import build_parser, resolve_config

    parser = build_parser()
    cfg = resolve_config(parser.parse_args([]))
    helps = {a.dest: a.help or "" for a in parser._actions}
    for dest in ("epochs", "time_budget", "patience", "val_limit", "n_pairs", "lang"):
        assert f"default: {getattr(cfg, dest)}" in helps[dest], (dest, helps[dest])


def test_the_cache_places_translator_interface_md_names_are_the_ones_the_compiled_step_tries(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """deploy.md sends its reader to translator-interface.md for ``KILN_CACHE_DIR``: the places it lists
    are the ones :func:`serving.decoding.native.cache_dir` consults, in its order."""
    from serving.decoding import native

    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "kiln-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    first = native.cache_dir()
    monkeypatch.delenv("KILN_CACHE_DIR")
    second = native.cache_dir()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    third = native.cache_dir()
    tried = [
        (first, "$KILN_CACHE_DIR", tmp_path / "kiln-cache"),
        (second, "$XDG_CACHE_HOME/kiln", tmp_path / "xdg" / "kiln"),
        (third, "~/.cache/kiln", tmp_path / "home" / ".cache" / "kiln"),
    ]
    for got, _, expected in tried:
        assert got == expected
    sentence = re.search(r"one build per machine in (.+?)\)", doc("translator-interface.md"), re.S)
    assert sentence, "translator-interface.md no longer says where the compiled step is built"
    listed = re.findall(r"`([^`]+)`", sentence.group(1))
    assert listed[:3] == [shown for _, shown, _ in tried], listed
    assert "kiln-cache-<uid>" in listed[3] and native.temp_cache_dir().name.startswith("kiln-cache-")


def documented_kiln_fields() -> set[str]:
    """The top-level keys of kiln-json.md's example ``kiln.json`` (the first JSON block, two spaces in)."""
    block = re.search(r"```json\n(.+?)\n```", doc("kiln-json.md"), re.S)
    assert block
    return set(re.findall(r'^  "([a-z_0-9]+)":', block.group(1), re.M))


def test_every_field_export_writes_in_a_classifiers_kiln_json_is_in_kiln_json_md(
    exported_classifiers,
) -> None:
    repository, _ = exported_classifiers
    written = set(json.loads((repository / "lenet" / "kiln.json").read_text()))
    documented = documented_kiln_fields()
    assert written - documented == set(), "add them to docs/kiln-json.md's example"
    translator_only = {"translator", "model_py", "step_spec"}  # written for a translator's entries alone
    assert documented - written == translator_only, (
        "docs/kiln-json.md's example names fields export never writes"
    )
