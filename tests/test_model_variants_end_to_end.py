"""Models as users train them, not at their defaults: other class counts and channels, class names of
any spelling, translators with fewer positions than the recipe's lengths; trained, exported and served.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from export.pipeline import export_checkpoint
from training.checkpoint import CheckpointError, make_checkpoint, save_checkpoint
from training.models import build_model
from training.translate_config import TranslateConfig

SIZE = 12
# Class names a folder dataset may give: separators, quotes, a tab, unicode, outer spaces, a comment sign.
ODD_LABELS = ["chat, noir", 'quote "q"', "a\tb", "ünïcödé ✓", " lead", "trail ", "#hash"]


def _lenet_checkpoint(path: Path, labels: list[str], channels: int = 1) -> Path:
    """A random-init narrow LeNet over ``SIZE`` x ``SIZE`` images, one class per label."""
    torch.manual_seed(0)
    args = {"num_classes": len(labels), "in_channels": channels, "width_mult": 0.5}
    preprocessing = {"input_size": [SIZE, SIZE], "channels": channels, "mean": [0.4], "std": [0.3]}
    ckpt = make_checkpoint(
        task="classify",
        model_name="lenet",
        model_args=args,
        model=build_model("lenet", **args),
        train_config={},
        metrics={},
        preprocessing=preprocessing,
        labels=labels,
    )
    return save_checkpoint(ckpt, path)


@pytest.mark.parametrize(
    "label", ["line\nbreak", "carriage\r", "para\u2028graph", "next\x85line", "", "   ", "bytes\udcff"]
)
def test_a_class_name_labels_txt_cannot_hold_is_refused_before_any_export_work(tmp_path, label):
    """labels.txt is read a line a class: a name with a line break shifted every later class onto
    another's name (the gateway answered index 2 as "break"), a blank one was skipped by the gateway,
    and a name in stray bytes failed the export at its last write, after every ONNX build."""
    checkpoint = _lenet_checkpoint(tmp_path / "odd.pt", ["first", label, "last"])
    with pytest.raises(CheckpointError, match=r"odd\.pt: label 1 .*(blank|line break|UTF-8)"):
        export_checkpoint(checkpoint, tmp_path / "repo", tensorrt="off")
    assert not (tmp_path / "repo" / "odd").exists()


def _png(array: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_grey_model_with_odd_class_names_is_served_with_them_and_sees_an_rgb_upload_as_training_does(
    tmp_path,
):
    """Seven classes of unusual names, a 1-channel model: labels.txt and the config agree with the model,
    top_k past the class count answers every class once, and an RGB upload is turned grey as training's
    ``convert_channels`` turns a colour dataset (the served scores are PyTorch's on that grey image)."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings
    from training.data.images import convert_channels, normalize

    checkpoint = _lenet_checkpoint(tmp_path / "odd.pt", ODD_LABELS)
    repository = tmp_path / "repo"
    export_checkpoint(checkpoint, repository, tensorrt="off")
    assert (repository / "odd" / "labels.txt").read_text(encoding="utf-8").split("\n")[:-1] == ODD_LABELS
    assert f"dims: {len(ODD_LABELS)}" in (repository / "odd" / "config.pbtxt").read_text()

    rgb = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    grey = convert_channels(torch.from_numpy(rgb).permute(2, 0, 1)[None], 1)  # (1, 1, H, W)
    model = build_model("lenet", num_classes=len(ODD_LABELS), in_channels=1, width_mult=0.5)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    with torch.no_grad():
        expected = torch.softmax(model.eval()(normalize(grey, [0.4], [0.3])), dim=1)[0].numpy()

    with TestClient(create_app(Settings(model_repository=repository, grpc_port=0))) as client:
        reply = client.post("/v1/models/odd/classify", json={"images": [_png(rgb)], "top_k": 50})
    assert reply.status_code == 200, reply.text
    predictions = reply.json()["predictions"][0]
    assert sorted(p["index"] for p in predictions) == list(range(len(ODD_LABELS)))
    assert all(p["label"] == ODD_LABELS[p["index"]] for p in predictions)
    served = np.array([p["score"] for p in sorted(predictions, key=lambda p: p["index"])])
    np.testing.assert_allclose(served, expected, atol=1e-4)


def _translate_config(tmp_path: Path, *flags: str) -> TranslateConfig:
    from training.translate import build_parser, resolve_config

    return resolve_config(build_parser().parse_args([*flags, "--output-dir", str(tmp_path / "out")]))


def test_an_unset_max_decode_length_follows_a_max_positions_below_the_recipes_length(tmp_path):
    """--model-arg max_positions=12 alone stopped the run: the unset --max-decode-length's default, 40,
    was "above the model's max_positions"; a value given above it is still refused."""
    cfg = _translate_config(tmp_path, "--model-arg", "max_positions=12")
    assert cfg.max_decode_length == 12
    assert _translate_config(tmp_path, "--model-arg", "max_positions=64").max_decode_length == 40
    with pytest.raises(ValueError, match="--max-decode-length 40 is above the model's max_positions 12"):
        _translate_config(tmp_path, "--model-arg", "max_positions=12", "--max-decode-length", "40")


def test_separate_vocabularies_with_the_recipes_shared_embeddings_are_refused_before_the_corpus(
    tmp_path, monkeypatch
):
    """The Transformer recipe shares its embeddings, so --separate-vocab alone failed only after the
    corpus was generated and the BPE tokenizers trained, and its message never named the way to keep
    separate vocabularies."""
    from training import translate_setup

    def no_corpus(*args: object) -> None:
        raise AssertionError("the corpus was read before the flags were checked")

    monkeypatch.setattr(translate_setup, "load_corpus", no_corpus)
    with pytest.raises(ValueError, match="--model-arg share_embeddings=False"):
        _translate_config(tmp_path, "--separate-vocab")
    cfg = _translate_config(tmp_path, "--separate-vocab", "--model-arg", "share_embeddings=False")
    assert cfg.shared_vocab is False
