"""Files that are not Kiln checkpoints, given to export: one line saying what the file is and what to give."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
from torch import nn

from training.checkpoint import CheckpointError, load_checkpoint


def test_a_bare_state_dict_is_named_as_such_with_what_to_give_instead(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)  # what most PyTorch code saves
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert "a bare state_dict (weights only" in message
    assert "python -m training.classify or training.translate writes" in message
    assert "missing key" not in message  # before: "missing key(s) ['format_version', 'task', ...]" alone


def test_another_trainers_checkpoint_names_its_keys_and_what_to_give_instead(tmp_path):
    path = tmp_path / "lightning.pt"
    torch.save({"epoch": 3, "state_dict": nn.Linear(2, 2).state_dict()}, path)
    with pytest.raises(
        CheckpointError, match=r"missing key\(s\) .*\(its keys: epoch, state_dict\)"
    ) as refused:
        load_checkpoint(path)
    assert "training.classify or training.translate writes" in str(refused.value)


def test_a_plain_pickle_is_refused_without_torchs_protocol_warning(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
            load_checkpoint(path)
    assert [str(w.message) for w in shown] == []  # before: torch's two-line UserWarning, above the refusal


def _lenet_with(tmp_path, **preprocessing):
    from tests.classifier_exports import write_checkpoint

    path = write_checkpoint(tmp_path, "lenet")  # 1 channel, 32x32, mean [0.4], std [0.3]
    ckpt = torch.load(path, weights_only=True)
    ckpt["preprocessing"].update(preprocessing)
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    ("preprocessing", "refusal"),
    [
        (
            {"channels": 3, "mean": [0.4] * 3, "std": [0.3] * 3},
            "'preprocessing.channels' is 3, but the model takes 1",
        ),
        (
            {"input_size": [0, 32]},
            "'preprocessing.input_size' must be [height, width] in pixels, got [0, 32]",
        ),
        ({"mean": [0.4, 0.4]}, "'preprocessing.mean' must be a list of 1 finite number, got [0.4, 0.4]"),
        ({"std": [0.0]}, "'preprocessing.std' must be positive (pixels are divided by it), got [0.0]"),
        (
            {"input_size": [8, 8]},
            "the model does not run on the images its 'preprocessing' describes (1 channel(s), 8x8",
        ),
    ],
)
def test_preprocessing_that_does_not_fit_the_model_is_refused_in_one_line(tmp_path, preprocessing, refusal):
    from export.pipeline import export_checkpoint

    path = _lenet_with(tmp_path, **preprocessing)
    # before: a traceback from the model's forward (channels, a size too small), a refusal calling lenet
    # unexportable (a mean per channel of 2), or a parity failure on NaN outputs (std 0)
    with pytest.raises(CheckpointError) as refused:
        export_checkpoint(path, tmp_path / "repo", tensorrt="off")
    assert str(refused.value).startswith(f"{path}: {refusal}")
    assert not (tmp_path / "repo" / "lenet").exists()
