"""`make demo`: train small models, export them, serve them and show real requests answered.

Each stage runs through its public CLI (the same commands a user would type), so the demo proves the
whole pipeline rather than a shortcut through internals. Stages whose outputs are already present are
reused (training) or skipped by export's own incremental check; ``--fresh`` retrains everything.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.cli import HelpFormatter, directory
from kiln.images import to_8bit, upright
from kiln.processes import LOCAL, LOCAL_GRPC, ended, run_child, running, stop_on_sigterm
from serving.triton.ports import held_port

console = Console()

DEMO_CLASSIFIER = ["--model", "resnet18"]  # the family's default recipe
DEMO_TRANSLATOR = ["--model", "transformer", "--preset", "demo"]
# In the generated corpus's domain (lower-case English; see docs/corpus.md), not copied from its test split.
DEMO_SENTENCES = [
    "three hundred and forty-two",
    "i bought twenty-one red apples",
    "the forty-second floor",
    "in nineteen ninety-seven",
    "it costs eighty-one euros and five cents",
]


REFUSED = 2  # the trainers' exit status for flags or a file they refuse


def training_commands(
    module: str, flags: Sequence[str], checkpoints: Path, name: str, fresh: bool
) -> list[list[str]]:
    """The commands that train ``<name>.pt`` in ``checkpoints``, in the order to try them: a run an
    interrupted demo left (``<name>.resume.pt``) resumes where it stopped, and a new run follows only
    if the trainer refuses that file as another run's (its model, preset or data differ); ``fresh``
    trains anew. A demo run again after Ctrl-C started over at epoch 1, replacing the epochs trained."""
    out = ["--output-dir", str(checkpoints)]
    new_run = [sys.executable, "-m", module, *flags, *out]
    resume = checkpoints / f"{name}.resume.pt"
    if fresh or not resume.is_file():
        return [new_run]
    return [[sys.executable, "-m", module, *flags, "--resume", str(resume), *out], new_run]


def train(title: str, commands: list[list[str]]) -> None:
    """Run ``commands`` (``training_commands``) until one trains: each but the last may be refused."""
    *tries, last = commands
    for cmd in tries:
        if run_stage(title, cmd, may_refuse=True) is not None:
            return
        console.print("[yellow]that file is not this demo's run (above): training a new one")
    run_stage(title, last)


def show_command(cmd: list[str]) -> None:
    """``cmd`` as a shell takes it, on one line at any width (wrapped at a log's 80 columns, a pasted
    command ran without its last arguments) and as written (with markup, ``[v2]`` in a path was read
    as a style and dropped)."""
    console.print(f"$ {shlex.join(cmd)}", style="dim", markup=False, highlight=False, soft_wrap=True)


def run_stage(title: str, cmd: list[str], may_refuse: bool = False) -> float | None:
    """Run one pipeline stage as a subprocess, streaming its output; stop the demo if it fails. With
    ``may_refuse``, a stage that refuses its flags (exit status 2, as argparse and the trainers'
    refusals) returns None instead, for the caller to try another way."""
    console.rule(f"[bold]{title}")
    show_command(cmd)
    start = time.perf_counter()
    returncode = run_child(cmd)  # a killed demo stops its stage too
    elapsed = time.perf_counter() - start
    if may_refuse and returncode == REFUSED:
        return None
    if returncode != 0:
        console.print(f"[red]{title} failed: it {ended(returncode)}; the demo stops here.")
        # a shell's status for a stage a signal ended, 128 + its number (SystemExit(-9) exited 247)
        raise SystemExit(returncode if returncode > 0 else 128 - returncode)
    console.print(f"[green]{title}: done in {elapsed:.1f} s")
    return elapsed


@contextmanager
def gateway(
    repository: Path,
    timeout_s: float = 120.0,
    *,
    checkpoints: Path | None = None,
    export_flags: Sequence[str] = (),
) -> Iterator[tuple[str, str]]:
    """Start `python -m serving` on 127.0.0.1, wait until ready, and always stop it; yields its HTTP
    URL and gRPC target. ``checkpoints`` and ``export_flags``: what the demo's export stage exported, and
    how, so an entry of its own that does not load is named as such (:func:`failed_entries`).

    Its two ports are bound here first (SO_REUSEPORT, never listening) and held until it stops: the
    gateway binds beside them (``--reuse-port``), and no other process can take one in between, as it
    could a port drawn, closed and bound again seconds later."""
    with held_port(reuse_port=True) as http_socket, held_port(reuse_port=True) as grpc_socket:
        http_port, grpc_port = http_socket.getsockname()[1], grpc_socket.getsockname()[1]
        # the embedded ONNX Runtime the demo shows, whatever KILN_BACKEND the shell keeps from a `make serve
        # BACKEND=triton` (the gateway waited for a Triton at 127.0.0.1:8001 until the demo gave up after 120 s)
        cmd = [sys.executable, "-m", "serving", "--model-repository", str(repository)]
        cmd += ["--backend", "onnxruntime"]
        cmd += ["--http-port", str(http_port), "--grpc-port", str(grpc_port), "--host", "127.0.0.1"]
        cmd += ["--log-level", "warning"]
        console.rule("[bold]Serve")
        show_command(cmd)  # as a user types it: --reuse-port is internal
        url = f"http://127.0.0.1:{http_port}"
        console.print(
            f"waiting up to {timeout_s:.0f} s for it to load the models and answer {url}/v2/health/ready",
            highlight=False,
            soft_wrap=True,
        )
        with contextlib.ExitStack() as stack:
            try:  # its own output above says why; a traceback of the demo's would bury it
                stack.enter_context(
                    running(
                        [*cmd, "--reuse-port"],
                        f"{url}/v2/health/ready",
                        timeout_s=timeout_s,
                        never_ready=lambda: failed_entries(url, repository, checkpoints, export_flags),
                    )
                )
            except RuntimeError as exc:
                console.print(
                    f"[red]The gateway did not start: {escape(str(exc))}; the demo stops here.",
                    soft_wrap=True,
                )
                raise SystemExit(1) from None
            yield url, f"127.0.0.1:{grpc_port}"
    console.print("gateway stopped")


def failed_entries(
    url: str, repository: Path, checkpoints: Path | None = None, export_flags: Sequence[str] = ()
) -> str | None:
    """Why a gateway that answers, but not ready, never will be: entries of ``repository`` it could not
    load (a stale entry of another model or Kiln beside the demo's), as it is ready only with every entry
    loaded. The demo waited out its 120 s, then said "not ready" alone. An entry the demo's export stage
    just wrote from ``checkpoints`` (:func:`demo_export`) is the demo's to export again, not the user's to
    move away: the next demo exported it back as it was."""
    import httpx

    index = httpx.post(f"{url}/v2/repository/index", timeout=5, **LOCAL)
    if index.status_code != 200:
        return None
    # an entry not loaded yet has no reason but "not ready" (repository_index._state); a failed one its error
    failed = [
        e
        for e in index.json()
        if e.get("state") == "UNAVAILABLE" and e.get("reason", "not ready") != "not ready"
    ]
    if not failed:
        return None
    entries = "; ".join(f"{repository / e['name']} did not load ({e['reason']})" for e in failed)
    own = {e["name"]: demo_export(repository / e["name"], checkpoints, export_flags) for e in failed}
    exports: dict[tuple[Path, str], list[Path]] = {}  # a translator's entries are one export
    for name, made in own.items():
        if made:
            exports.setdefault(made, []).append(repository / name)
    advice = [_export_again(paths, *made, export_flags) for made, paths in exports.items()]
    others = [repository / name for name, made in own.items() if not made]
    if others:
        what = ", ".join(map(str, others)) if advice else ("that" if len(others) == 1 else "each")
        advice.append(
            f"The demo serves every entry of {repository}: move {what} away, or give the demo a repository of its "
            "own (make demo REPOSITORY=<new directory>)"
        )
    return f"{entries}. {'. '.join(advice)}"


def demo_export(
    entry: Path, checkpoints: Path | None, export_flags: Sequence[str]
) -> tuple[Path, str] | None:
    """(checkpoint, precision) of ``entry`` where the demo's export stage writes it: from a checkpoint in
    ``checkpoints`` (export takes every ``*.pt`` there) in a precision it exports by default (fp32; fp16
    too with ``--device gpu``, as ``export_flags`` give it); None for an entry it leaves as it finds it."""
    if checkpoints is None:
        return None
    try:
        meta = json.loads((entry / "kiln.json").read_text(encoding="utf-8"))
        source, precision = Path(meta["source_checkpoint"]["path"]), meta["precision"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    exported = ("fp32", "fp16") if "gpu" in export_flags else ("fp32",)
    if precision not in exported or source.name.endswith(".resume.pt") or not source.is_file():
        return None
    return (source, precision) if source.resolve().parent == checkpoints.resolve() else None


def _export_again(entries: list[Path], checkpoint: Path, precision: str, export_flags: Sequence[str]) -> str:
    """What to do about ``entries``, which the demo exported from ``checkpoint`` and the gateway did not load."""
    flags = [f for f in export_flags if f != "--no-progress"]
    command = [sys.executable, "-m", "export", str(checkpoint), "--repository", str(entries[0].parent)]
    command += ["--precisions", precision, "--force", *flags]
    if checkpoint.name in ("resnet18.pt", "transformer.pt"):
        otherwise = f"`make demo FRESH=1` (--fresh) trains {checkpoint.name} anew"
    else:  # a checkpoint of the user's own beside the demo's
        otherwise = f"move {checkpoint} out of {checkpoint.parent}: the demo exports every checkpoint there"
    is_, it, still = ("is", "it", "it still does") if len(entries) == 1 else ("are", "them", "they still do")
    return (
        f"{', '.join(map(str, entries))} {is_} the demo's own export of {checkpoint}, so moving {it} away would "
        f"only see the next demo export {it} again: `{shlex.join(command)}` exports {it} anew; if {still} not "
        f"load, {otherwise}"
    )


def _answer(response: Any) -> Any:
    """The JSON of a successful answer; any other stops the demo (exit 1) with the gateway's words,
    since the demo exists to show requests answered."""
    if response.status_code != 200:
        request = response.request
        console.print(
            f"[red]{request.method} {request.url.path} answered {response.status_code}: {response.text}",
            soft_wrap=True,  # the gateway's words on one line, as it sent them
        )
        raise SystemExit(1)
    return response.json()


def sample_digits(n: int = 4) -> tuple[list[bytes], list[int]]:
    """PNG-encoded digits from scikit-learn's bundled scans (the demo's offline data), 32x32 as training
    makes them at its default image size: scaled to 0..255 rounded, not truncated (a fifth of the pixels
    were one level off what the demo's model was trained on), then resized by Pillow as training is."""
    from PIL import Image

    from training.data.image_formats import read_digits

    digits = read_digits()  # uint8 [N, 1, 8, 8], as training reads them
    rng = np.random.default_rng(7)
    idx = rng.choice(len(digits.labels), size=n, replace=False)
    pngs = []
    for i in idx:
        buf = io.BytesIO()
        pixels = digits.images[i, 0].numpy()  # (8, 8)
        Image.fromarray(pixels, mode="L").resize((32, 32), Image.BILINEAR).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return pngs, [int(digits.labels[i]) for i in idx]


def show_classify(url: str, model: str) -> None:
    """Friendly REST with base64 PNGs, then the same images over KServe v2 with tritonclient."""
    import httpx
    import tritonclient.http as triton_http
    from PIL import Image

    pngs, truth = sample_digits()
    body = {"images": [base64.b64encode(p).decode() for p in pngs], "top_k": 3}
    answer = _answer(httpx.post(f"{url}/v1/models/{model}/classify", json=body, timeout=30, **LOCAL))
    table = Table(title=f"POST /v1/models/{model}/classify (REST, base64 PNG)")
    table.add_column("true digit")
    table.add_column("top-3 (label: score)")
    for label, predictions in zip(truth, answer["predictions"], strict=True):
        table.add_row(str(label), ", ".join(f"{p['label']}: {p['score']:.3f}" for p in predictions))
    console.print(table)

    client = triton_http.InferenceServerClient(url.removeprefix("http://"))
    meta = client.get_model_metadata(model)
    _, h, w, c = meta["inputs"][0]["shape"]
    batch = np.stack([_to_hwc(Image.open(io.BytesIO(p)), int(h), int(w), int(c)) for p in pngs])
    inp = triton_http.InferInput("images", list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch, binary_data=True)
    out = triton_http.InferRequestedOutput("probabilities", binary_data=True)
    probs = client.infer(model, [inp], outputs=[out]).as_numpy("probabilities")
    console.print(
        f"KServe v2 /v2/models/{model}/infer (tritonclient, binary tensors): "
        f"predicted {probs.argmax(1).tolist()} for true {truth}"
    )


def show_translate(url: str, grpc_url: str, model: str) -> None:
    """Friendly REST with scores, then KServe v2 gRPC (BYTES in, BYTES out) with tritonclient."""
    import httpx
    import tritonclient.grpc as triton_grpc

    body = {"texts": DEMO_SENTENCES, "beam_size": 4, "return_scores": True}
    resp = _answer(httpx.post(f"{url}/v1/models/{model}/translate", json=body, timeout=60, **LOCAL))
    table = Table(title=f"POST /v1/models/{model}/translate (beam 4)")
    table.add_column("English")
    table.add_column("French")
    table.add_column("score")
    for text, result in zip(DEMO_SENTENCES, resp["translations"], strict=True):
        best = result["hypotheses"][0]
        table.add_row(text, best["text"], f"{best['score']:.3f}")
    console.print(table)

    client = grpc_client(grpc_url)
    text = triton_grpc.InferInput("text", [2, 1], "BYTES")
    text.set_data_from_numpy(np.array([[s.encode()] for s in DEMO_SENTENCES[:2]], dtype=np.object_))
    out = client.infer(model, [text], parameters={"beam_size": 4}).as_numpy("translation")
    answers = [v.decode() for v in out.reshape(-1)]
    console.print(f"KServe v2 gRPC ModelInfer on {model} (tritonclient, BYTES): {answers}")
    console.print(
        f"KServe v2 gRPC ModelStreamInfer on {model} (tritonclient stream): {_streamed(client, model)}"
    )
    client.close()
    text = DEMO_SENTENCES[2]
    generated = _answer(
        httpx.post(f"{url}/v2/models/{model}/generate", json={"text": text}, timeout=60, **LOCAL)
    )
    console.print(f"Triton generate /v2/models/{model}/generate: {text!r} -> {generated['translation']!r}")


def grpc_client(target: str) -> Any:
    """A tritonclient gRPC client of the gateway the demo started at ``target``, past any proxy the
    environment names (``LOCAL_GRPC``)."""
    import tritonclient.grpc as triton_grpc

    return triton_grpc.InferenceServerClient(target, channel_args=LOCAL_GRPC)


def _streamed(client, model: str) -> list[str]:  # noqa: ANN001 - a tritonclient.grpc client
    """The first two demo sentences sent on one gRPC stream, their answers put back in order by id."""
    import queue

    import tritonclient.grpc as triton_grpc

    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i, sentence in enumerate(DEMO_SENTENCES[:2]):
            text = triton_grpc.InferInput("text", [1, 1], "BYTES")
            text.set_data_from_numpy(np.array([[sentence.encode()]], dtype=np.object_))
            client.async_stream_infer(model, [text], request_id=str(i), parameters={"beam_size": 4})
        by_id = {}
        for _ in range(2):
            result, error = answers.get(timeout=60)
            if error is not None:
                raise SystemExit(f"the gRPC stream failed: {error}")
            by_id[result.get_response().id] = result.as_numpy("translation").reshape(-1)[0].decode()
    finally:
        client.stop_stream()
    return [by_id[str(i)] for i in range(2)]


def _to_hwc(img, h: int, w: int, c: int) -> np.ndarray:
    """The uint8 (H, W, C) tensor the classify route makes of ``img``, for a KServe v2 client: turned
    upright and 16-bit grey scaled as the route and training do (``kiln.images``), where a plain
    ``convert`` sent a phone's photo sideways and a 16-bit scan clipped to white."""
    from PIL import Image

    img = to_8bit(upright(img), "L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8).reshape(h, w, c)


@dataclass(frozen=True)
class Target:
    """Where the demo runs: the flags each stage gets, and the words its output uses."""

    name: str  # "CPU" or the GPU's name
    classify: tuple[str, ...] = ()
    translate: tuple[str, ...] = ()
    export: tuple[str, ...] = ()


CPU = Target("CPU")


def without_progress(target: Target) -> Target:
    """``target`` with ``--no-progress`` passed to each stage that draws a bar (training, export)."""
    flag = ("--no-progress",)
    return replace(
        target,
        classify=(*target.classify, *flag),
        translate=(*target.translate, *flag),
        export=(*target.export, *flag),
    )


def gpu_target() -> Target:
    """The GPU flags, or SystemExit with the reason when this machine cannot train and serve on CUDA."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(
            "make demo GPU=1 needs a CUDA GPU, and PyTorch sees none here "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}). "
            "Run `make demo` without GPU=1 for the CPU demo."
        )
    import onnxruntime as ort  # after torch, whose import loads the CUDA libraries ORT's provider uses

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise SystemExit(
            "make demo GPU=1 serves on ONNX Runtime's CUDA provider, which this onnxruntime lacks "
            f"(providers: {', '.join(ort.get_available_providers())}): install the `gpu` extra "
            '(`make setup GPU=1`; README, "GPU and TensorRT").'
        )
    return Target(
        torch.cuda.get_device_name(0),
        classify=("--device", "cuda", "--amp"),
        translate=("--device", "cuda"),
        export=("--device", "gpu"),
    )


def show_placement(url: str, model: str) -> None:
    """The instance kind (and any placement parameters the gateway reports) of one served model."""
    import httpx

    config = _answer(httpx.get(f"{url}/v2/models/{model}/config", timeout=30, **LOCAL))
    groups = config.get("instance_group") or config.get("instanceGroup") or [{}]
    params = config.get("parameters") or {}
    values = {k: v.get("string_value", v) if isinstance(v, dict) else v for k, v in params.items()}
    shown = ", ".join(f"{k}={v}" for k, v in values.items()) if values else "no parameters"
    console.print(f"{model}: instance kind {groups[0].get('kind', 'KIND_CPU')}; {shown}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m kiln.demo", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--checkpoints",
        type=directory,
        default=Path("checkpoints"),
        help="where resnet18.pt and transformer.pt are reused or trained; every checkpoint here is exported",
    )
    parser.add_argument(
        "--repository", type=directory, default=Path("model_repository"), help="exported to and served"
    )
    parser.add_argument("--fresh", action="store_true", help="retrain even if checkpoints exist")
    parser.add_argument("--gpu", action="store_true", help="train, export and serve on a CUDA GPU")
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bars: passed to training and export (they draw none off a terminal anyway)",
    )
    args = parser.parse_args(argv)
    check_directories(args)
    stop_on_sigterm()  # a stopped demo stops its gateway too
    target = gpu_target() if args.gpu else CPU  # before anything runs: no silent CPU fallback
    if not args.progress:
        target = without_progress(target)
    try:
        run_demo(args, target)
    except KeyboardInterrupt:
        console.print(
            "[yellow]Demo interrupted; every process it started is stopped. `make demo` again goes on from "
            "here: a training from its last epoch saved, export past what is up to date.",
            soft_wrap=True,
        )
        raise SystemExit(130) from None


def check_directories(args: argparse.Namespace) -> None:
    """Stop at once when ``--checkpoints`` or ``--repository`` names something that is not a directory:
    training would otherwise run for minutes before its output, or export, refused it."""
    for flag, path in (("--checkpoints", args.checkpoints), ("--repository", args.repository)):
        if path.exists() and not path.is_dir():
            raise SystemExit(f"{flag} {path} is not a directory: name a directory (it is made if missing)")


def reusable(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` is there to reuse, saying so. A checkpoint export would refuse (truncated,
    damaged, not a Kiln checkpoint, a newer Kiln's) stops the demo at once, naming the way out: it was
    reused, and export stopped the demo on it with no word of ``FRESH=1``."""
    if not checkpoint.exists():
        return False
    from training.checkpoint import CheckpointError, load_checkpoint

    try:
        load_checkpoint(checkpoint)
    except (CheckpointError, OSError) as exc:
        console.print(str(exc), style="red", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(
            f"{checkpoint} cannot be reused: `make demo FRESH=1` (--fresh) trains the demo's models anew, "
            "replacing it (or move it away, and make demo trains what is missing)"
        ) from None
    reuse = f"reusing {checkpoint} (make demo FRESH=1, or --fresh, retrains)"
    console.print(reuse, markup=False, soft_wrap=True)  # one line in a log, the path whole
    return True


def run_demo(args: argparse.Namespace, target: Target) -> None:
    """Train what is missing, export, serve, and send the requests."""
    import httpx

    py = sys.executable
    started = time.perf_counter()
    console.print(f"Kiln demo on the {target.name}")
    if args.fresh or not reusable(args.checkpoints / "resnet18.pt"):
        train(
            f"Train a ResNet-18 on the bundled digits ({target.name})",
            training_commands(
                "training.classify",
                [*DEMO_CLASSIFIER, *target.classify],
                args.checkpoints,
                "resnet18",
                args.fresh,
            ),
        )
    if args.fresh or not reusable(args.checkpoints / "transformer.pt"):
        train(
            f"Train the demo Transformer (English → French numbers, {target.name})",
            training_commands(
                "training.translate",
                [*DEMO_TRANSLATOR, *target.translate],
                args.checkpoints,
                "transformer",
                args.fresh,
            ),
        )
    run_stage(
        f"Export to ONNX + Triton model repository (configs for the {target.name})",
        [py, "-m", "export", str(args.checkpoints), "--repository", str(args.repository), *target.export],
    )
    served = gateway(args.repository, checkpoints=args.checkpoints, export_flags=target.export)
    with served as (url, grpc_url):
        models = [f"{m['name']} ({m['task']})" for m in _answer(httpx.get(f"{url}/v1/models", **LOCAL))]
        console.print(f"GET /v1/models → {', '.join(models)}")
        show_placement(url, "resnet18")
        show_classify(url, "resnet18")
        show_translate(url, grpc_url, "transformer")
    console.rule(f"[bold green]Demo finished on the {target.name} in {time.perf_counter() - started:.0f} s")
    console.print(next_steps(args.repository, args.gpu), markup=False, highlight=False, soft_wrap=True)


def next_steps(repository: Path, gpu: bool) -> str:
    """The demo's last line: the command that serves its models on until Ctrl-C, as `make serve` takes it
    (``GPU=1`` too on CUDA: a make without it puts the CPU onnxruntime back). ``make serve`` passes a
    variable as a flag only when make is given it, so a ``KILN_MODEL_REPOSITORY`` or ``KILN_BACKEND`` the
    shell keeps (which the demo's gateway does not follow) is overridden by naming its variable, as is a
    ``REPOSITORY`` or ``BACKEND`` it exports (make takes those from the environment too); the ports are
    those the shell gives ``make serve`` (:func:`_served_port`)."""
    env = os.environ
    given = ""
    if repository != Path("model_repository") or {"KILN_MODEL_REPOSITORY", "REPOSITORY"} & env.keys():
        given += f" {shlex.quote(f'REPOSITORY={_make_value(repository)}')}"
    if any(env.get(name, "onnxruntime") != "onnxruntime" for name in ("BACKEND", "KILN_BACKEND")):
        given += " BACKEND=onnxruntime"
    http_port, named = _served_port("HTTP_PORT", 8000, off=False)
    grpc_port, named_grpc = _served_port("GRPC_PORT", 8001, off=True)
    grpc = f"gRPC 127.0.0.1:{grpc_port}" if grpc_port else "gRPC off (its port is 0 in this shell)"
    command = f"make serve{given}{named}{named_grpc}{' GPU=1' if gpu else ''}"
    # a backtick in the path ended the `...` span early: a longer fence, spaced off, as Markdown takes it
    fence = "`"
    while fence in command:
        fence += "`"
    pad = " " if len(fence) > 1 else ""
    return (
        f"Next: {fence}{pad}{command}{pad}{fence} serves these models until "
        f'Ctrl-C on http://127.0.0.1:{http_port} and {grpc} (README.md, "Serving", shows requests to send); '
        "`make test` runs the test suite."
    )


def _make_value(path: Path) -> str:
    """``path`` as a variable's value on make's command line must be written for the Makefile to get the
    path itself: ``$`` doubled (make reads ``$H`` as its variable ``H``: ``REPOSITORY='runs/$HOME'`` served
    runs/OME), and a leading ``~`` (``shell_path`` takes it for the home directory, as a shell does) or
    blank (make drops it) behind ``./``."""
    text = str(path)
    if text == "~" or text.startswith("~/") or text[:1].isspace():
        text = f"./{text}"
    return text.replace("$", "$$")


def _served_port(name: str, default: int, *, off: bool) -> tuple[int, str]:
    """The port ``make serve`` serves ``name`` on in this shell: make's variable ``name`` where the shell
    exports it (passed as the flag, which wins), else ``KILN_<name>`` (the gateway's), else ``default``;
    and the variable the command names where that value is no port to connect to (0: a free port, which
    ``off`` takes as the server turned off; a value the gateway refuses: "abc", "70000", ""), so the
    port the line gives is the one served."""
    value = os.environ.get(name, os.environ.get(f"KILN_{name}"))
    if value is None:
        return default, ""
    try:
        port = int(value)  # as the flag's type reads it (pydantic's reading of KILN_* takes these too)
    except ValueError:
        port = -1
    if 0 < port <= 65535 or (port == 0 and off):
        return port, ""
    return default, f" {name}={default}"


if __name__ == "__main__":
    main()
