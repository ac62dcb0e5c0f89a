"""Claims of docs/ that the code decides, read from the docs and checked against the code: the step spec
translator-interface.md shows, the head sizes its vector kernels take, the export version kiln-json.md's
examples carry, when performance-notes.md says a compiled decode call ends, and the flags, variables and
files every doc names (performance-notes.md included, which tests/test_docs_truth.py does not read)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.test_docs_truth import OTHER_PROGRAMS, flags, parser_of, parsers, variable_readers

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("translator-interface.md", "corpus.md", "kiln-json.md", "deploy.md", "performance-notes.md")


def doc(name: str) -> str:
    return (ROOT / "docs" / name).read_text()


def test_the_step_spec_translator_interface_md_shows_is_the_two_layer_transformers() -> None:
    """The example is "the two-layer Transformer's spec" (4 heads of 32): every key, input, role and dtype
    of it is what the model describes, and ``"..."`` stands for float32 tensors only."""
    from training.models import registry

    block = re.search(r"## Step spec.*?```json\n(.+?)\n```", doc("translator-interface.md"), re.S)
    assert block, "translator-interface.md no longer shows a step spec"
    shown = json.loads(block.group(1))
    model = registry.build_model(
        "transformer",
        src_vocab_size=shown["vocab_size"],
        tgt_vocab_size=shown["vocab_size"],
        d_model=128,
        heads=4,
        encoder_layers=2,
        decoder_layers=2,
    )
    spec = model.step_spec()
    dtypes = shown.pop("dtypes")
    real_dtypes = spec.pop("dtypes")
    assert shown == spec
    rest = dtypes.pop("...")
    assert {name: real_dtypes[name] for name in dtypes} == dtypes
    unnamed = {name: dtype for name, dtype in real_dtypes.items() if name not in dtypes}
    assert {dtype for dtype in unnamed.values()} == {rest}, f"'...' is {rest}, but {unnamed}"


def test_the_head_sizes_translator_interface_md_gives_the_vector_path_are_the_kernels() -> None:
    kernels = (ROOT / "serving" / "decoding" / "attention.c").read_text()
    rule = re.search(
        r"avx2_path\(int64_t hd\) \{ return avx2_cpu\(\) && hd % (\d+) == 0 && hd <= (\d+); \}", kernels
    )
    assert rule, "attention.c's avx2_path no longer reads as this test expects"
    said = re.search(
        r"head sizes that are multiples of (\d+) up to (\d+) take a vector path",
        doc("translator-interface.md"),
    )
    assert said, "translator-interface.md must say which head sizes take the vector path, bound included"
    assert said.groups() == rule.groups()


def test_the_export_version_kiln_json_md_shows_is_the_one_export_writes() -> None:
    from kiln.versions import EXPORT_VERSION

    shown = [int(v) for v in re.findall(r'"export_version": (\d+)', doc("kiln-json.md"))]
    assert len(shown) >= 2, shown  # the kiln.json example and the TensorRT block
    assert set(shown) == {EXPORT_VERSION}, f"kiln-json.md shows {shown}; export writes {EXPORT_VERSION}"


def test_when_performance_notes_md_says_a_compiled_decode_call_ends_is_the_schedulers_rule() -> None:
    """A call runs up to MAX_STEPS steps; waiting requests and the finished-sentence hold end it sooner
    (not "until a request arrives or a sentence finishes", which finish_hold_steps replaced)."""
    from serving.decoding.native_decoder import MAX_STEPS
    from serving.decoding.scheduler_config import SchedulerConfig

    text = " ".join(doc("performance-notes.md").split())
    said = re.search(r"up to (\d+) steps a call,? (.+?);", text)
    assert said, "performance-notes.md no longer says how many steps a compiled call runs"
    assert int(said.group(1)) == MAX_STEPS
    rule = said.group(2)
    config = SchedulerConfig()
    assert config.join_fraction == 0.25 and "a quarter of the running sentences" in rule, rule
    assert f"waited {config.join_wait_steps} steps" in rule, rule
    assert f"at most {config.finish_hold_steps} steps after it finished (`--finish-hold-steps`)" in rule, rule


# performance-notes.md's flags: of the commands it runs, and of other programs it names
PERFORMANCE_COMMANDS = ("serving", "bench", "export", "training.translate")
PERFORMANCE_OTHERS = {
    "--gil": "py-spy",
    "--nproc": "torchrun --nproc_per_node",
    "--max-threads": "perf_analyzer",
}


def tool_parsers() -> dict[str, object]:
    import bench.decode_replay as decode_replay
    import bench.frontend_cost as frontend_cost
    import bench.gpu_decode_probe as gpu_decode_probe
    import kiln.demo as demo

    return {
        module.__name__: parser_of(module.main)
        for module in (decode_replay, frontend_cost, gpu_decode_probe, demo)
    }


def test_every_flag_performance_notes_md_names_is_a_flag_of_a_command_it_runs_or_of_another_program() -> None:
    known = set().union(*(flags(parsers()[c]) for c in PERFORMANCE_COMMANDS))
    known |= set().union(*(flags(p) for p in tool_parsers().values()))
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", doc("performance-notes.md")))
    unknown = sorted(named - known - set(OTHER_PROGRAMS) - set(PERFORMANCE_OTHERS))
    assert not unknown, f"docs/performance-notes.md names {unknown}, no flag of Kiln's commands"


def test_every_kiln_variable_performance_notes_md_names_is_a_gateway_setting_or_read_by_the_code() -> None:
    from serving.__main__ import INTERNAL
    from serving.settings import Settings

    settings = {f"KILN_{name.upper()}" for name in Settings.model_fields if name not in INTERNAL}
    named = set(re.findall(r"KILN_[A-Z0-9_]+[A-Z0-9]", doc("performance-notes.md")))
    unknown = sorted(named - settings - variable_readers())
    assert not unknown, (
        f"docs/performance-notes.md names {unknown}: no gateway setting, and no code reads them"
    )


WRITTEN = {"model.py": "the Triton python model export writes into an entry's 1/"}


def test_every_repository_file_the_docs_name_exists() -> None:
    """A path under one of the repository's folders (``serving/decoding/beam_step.c``; deploy.md's
    ``overlays/gpu/haproxy.cfg`` is under deploy/), or a bare source file name (``ort_step.c``)."""
    tops = "serving|export|training|bench|kiln|deploy|tests|docs|overlays|base|kserve|monitoring|schemas"
    sources = {
        p.name
        for p in ROOT.rglob("*")
        if p.suffix in (".py", ".c", ".yaml", ".cfg") and ".venv" not in p.parts
    }
    for name in DOCS:
        text = doc(name)
        for path in re.findall(rf"`((?:{tops})/[\w./-]*[\w/])`", text):
            if path.startswith("bench/results/"):  # a run's output, not kept in the repository
                continue
            assert (ROOT / path).exists() or (ROOT / "deploy" / path).exists(), f"docs/{name} names {path}"
        for file in re.findall(r"`(\w+\.(?:py|c))`", text):
            assert file in sources or file in WRITTEN, f"docs/{name} names {file}, no file of the repository"
