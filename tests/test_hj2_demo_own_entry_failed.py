"""An entry the gateway does not load stops the demo, naming it and what to do. For an entry the demo's
own export stage had just written (a model.onnx damaged since, a preprocessing the gateway refuses) that
was "move that away, or give the demo a repository of its own": the next demo exported it back as it was,
into any repository. Such an entry is named as the demo's, with the command that exports it anew."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from kiln import demo


def entry(repository: Path, name: str, source: Path | None, precision: str = "fp32") -> None:
    """A repository entry whose kiln.json names ``source`` as its checkpoint (None: no kiln.json)."""
    (repository / name / "1").mkdir(parents=True)
    if source is not None:
        meta = {"name": name, "precision": precision, "source_checkpoint": {"path": str(source)}}
        (repository / name / "kiln.json").write_text(json.dumps(meta))


def why_never_ready(monkeypatch, repository: Path, failed: list[str], **exported) -> str:
    """``failed_entries`` over a gateway whose repository index has ``failed`` entries unloadable."""
    index = [{"name": n, "state": "UNAVAILABLE", "reason": f"{n} is damaged"} for n in failed]
    answer = SimpleNamespace(status_code=200, json=lambda: index)
    monkeypatch.setattr("httpx.post", lambda *args, **kwargs: answer)
    why = demo.failed_entries("http://127.0.0.1:9", repository, **exported)
    assert why is not None
    return why


def commands(why: str) -> list[list[str]]:
    return [shlex.split(c) for c in re.findall(r"`([^`]*-m export [^`]*)`", why)]


@pytest.mark.parametrize("checkpoint", ["resnet18.pt", "mynet.pt"])
def test_an_entry_the_demo_exported_is_named_its_own_with_the_command_that_exports_it_anew(
    tmp_path, monkeypatch, checkpoint
):
    monkeypatch.chdir(tmp_path)  # the demo's export records the path as it was given: checkpoints/<name>.pt
    checkpoints, repository = Path("checkpoints"), Path("model_repository")
    checkpoints.mkdir()
    (checkpoints / checkpoint).write_bytes(b"weights")
    entry(repository, "model", checkpoints / checkpoint)
    why = why_never_ready(monkeypatch, repository, ["model"], checkpoints=checkpoints, export_flags=())
    assert "model_repository/model did not load (model is damaged)" in why
    assert f"model_repository/model is the demo's own export of checkpoints/{checkpoint}" in why
    assert "move that away" not in why and "a repository of its own" not in why
    assert commands(why) == [
        [sys.executable, "-m", "export", f"checkpoints/{checkpoint}", "--repository", "model_repository"]
        + ["--precisions", "fp32", "--force"]
    ]
    if checkpoint == "resnet18.pt":  # the demo's own training
        assert "`make demo FRESH=1` (--fresh) trains resnet18.pt anew" in why
    else:  # a checkpoint of the user's beside the demo's: exported by every demo while it is there
        assert "move checkpoints/mynet.pt out of checkpoints" in why


def test_entries_the_demo_does_not_write_are_still_to_move_away(tmp_path, monkeypatch):
    checkpoints, repository = tmp_path / "checkpoints", tmp_path / "repo"
    checkpoints.mkdir()
    (checkpoints / "transformer.pt").write_bytes(b"weights")
    (tmp_path / "elsewhere.pt").write_bytes(b"weights")
    entry(repository, "transformer_encoder", checkpoints / "transformer.pt")
    entry(repository, "transformer", checkpoints / "transformer.pt")
    entry(repository, "transformer_int8", checkpoints / "transformer.pt", "int8")  # a make export's precision
    entry(repository, "theirs", tmp_path / "elsewhere.pt")
    entry(repository, "gone", checkpoints / "gone.pt")  # its checkpoint since removed
    entry(repository, "stray", None)
    failed = ["transformer_encoder", "transformer_int8", "theirs", "gone", "stray", "transformer"]
    why = why_never_ready(monkeypatch, repository, failed, checkpoints=checkpoints, export_flags=())
    assert (
        f"{repository / 'transformer_encoder'}, {repository / 'transformer'} are the demo's own export of "
        f"{checkpoints / 'transformer.pt'}, so moving them away" in why
    )
    assert len(commands(why)) == 1  # one export writes a translator's entries
    others = ", ".join(str(repository / n) for n in failed[1:-1])
    assert f"The demo serves every entry of {repository}: move {others} away" in why
    # alone, as before
    why = why_never_ready(monkeypatch, repository, ["stray"], checkpoints=checkpoints, export_flags=())
    assert why.endswith(
        f"The demo serves every entry of {repository}: move that away, or give the demo a "
        "repository of its own (make demo REPOSITORY=<new directory>)"
    )


def test_on_a_gpu_the_command_exports_the_gpu_entry_as_the_demo_did(tmp_path, monkeypatch):
    checkpoints, repository = tmp_path / "checkpoints", tmp_path / "repo"
    checkpoints.mkdir()
    (checkpoints / "resnet18.pt").write_bytes(b"weights")
    entry(repository, "resnet18_fp16", checkpoints / "resnet18.pt", "fp16")
    flags = demo.without_progress(demo.Target("GPU", export=("--device", "gpu"))).export
    why = why_never_ready(
        monkeypatch, repository, ["resnet18_fp16"], checkpoints=checkpoints, export_flags=flags
    )
    [command] = commands(why)
    assert command[-5:] == ["--precisions", "fp16", "--force", "--device", "gpu"]


def test_the_demo_tells_its_gateway_what_it_exported(tmp_path, monkeypatch):
    seen = {}

    def stop_here(repository, **exported):
        seen.update(exported)
        raise SystemExit("served")

    monkeypatch.setattr(demo, "run_stage", lambda title, cmd, may_refuse=False: 0.0)
    monkeypatch.setattr(demo, "reusable", lambda checkpoint: True)
    monkeypatch.setattr(demo, "gateway", stop_here)
    target = demo.Target("GPU", export=("--device", "gpu"))
    args = SimpleNamespace(checkpoints=tmp_path, repository=tmp_path / "repo", fresh=False, gpu=True)
    with pytest.raises(SystemExit):
        demo.run_demo(args, target)
    assert seen == {"checkpoints": tmp_path, "export_flags": ("--device", "gpu")}
