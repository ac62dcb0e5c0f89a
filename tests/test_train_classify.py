"""The classifier trainer: tiny runs of lenet on digits (resume, finetune, early stopping) and torchrun DDP."""

from __future__ import annotations

import re

import pytest
import torch

from tests.torchrun import SLOW_RANK0_TIMEOUT_S, two_ranks_weights_hash
from training import classify, classify_config, classify_finetune, classify_loop
from training.checkpoint import load_checkpoint, rebuild_model, save_checkpoint
from training.classify_config import TrainConfig
from training.classify_resolve import resolve
from training.models import build_model, list_models
from training.runtime import weights_hash
from training.tracking import read_metrics

CLASSIFIERS = list_models("classify")
TINY = {
    "model": "lenet",
    "image_size": 16,
    "limit_train": 96,
    "limit_val": 48,
    "batch_size": 32,
    "progress": False,
}


def tiny(tmp_path, **overrides):
    return TrainConfig(**{**TINY, "output_dir": str(tmp_path), **overrides})


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    """Three epochs of lenet on 96 digits: shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("lenet")
    path = classify.train(TrainConfig(**TINY, output_dir=str(out), epochs=3, lr=0.01, augment=False))
    return path


def test_a_short_run_lowers_the_training_loss_and_logs_every_epoch(lenet_run):
    records = read_metrics(lenet_run.with_name("lenet.metrics.jsonl"))
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert lenet_run.with_name("lenet.curves.png").stat().st_size > 1000


def test_the_checkpoint_follows_contract_1_and_rebuilds_the_model(lenet_run):
    ckpt = load_checkpoint(lenet_run)
    assert ckpt["task"] == "classify" and ckpt["model"]["name"] == "lenet"
    assert ckpt["model"]["args"]["num_classes"] == 10 and ckpt["model"]["args"]["in_channels"] == 1
    pre = ckpt["preprocessing"]
    assert pre["input_size"] == [16, 16] and pre["channels"] == 1 and len(pre["mean"]) == len(pre["std"]) == 1
    assert ckpt["labels"] == [str(d) for d in range(10)]
    assert (
        ckpt["data"]["n_train"] == 96 and ckpt["data"]["n_val"] == 48 and ckpt["data"]["dataset"] == "digits"
    )
    assert {"val_accuracy", "val_loss", "epochs", "train_time_s", "params"} <= set(ckpt["metrics"])
    assert ckpt["metrics"]["epochs"] == 3 and ckpt["train_config"]["optimizer"] == "adamw"
    model = rebuild_model(ckpt)
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)


def test_resume_continues_from_the_saved_epoch_with_the_optimizer_and_schedule(tmp_path):
    classify.train(tiny(tmp_path, epochs=1))
    first = torch.load(tmp_path / "lenet.resume.pt", weights_only=True)
    assert first["epoch"] == 1
    steps = first["scheduler"]["last_epoch"]
    classify.train(tiny(tmp_path, epochs=2, resume=str(tmp_path / "lenet.pt")))
    second = torch.load(tmp_path / "lenet.resume.pt", weights_only=True)
    assert second["epoch"] == 2 and second["scheduler"]["last_epoch"] == 2 * steps
    adam_steps = {float(s["step"]) for s in second["optimizer"]["state"].values()}
    assert adam_steps == {2.0 * steps}
    assert [r["epoch"] for r in read_metrics(tmp_path / "lenet.metrics.jsonl")] == [1, 2]
    assert load_checkpoint(tmp_path / "lenet.pt")["metrics"]["epochs"] == 2


def test_resume_without_saved_state_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no resume state"):
        classify.train(tiny(tmp_path, epochs=1, resume=str(tmp_path / "ghost.pt")))


def test_resume_without_model_continues_the_resume_files_model_under_its_own_name(tmp_path):
    classify.train(tiny(tmp_path, epochs=1))
    path = classify.train(tiny(tmp_path, model=None, epochs=2, resume=str(tmp_path / "lenet.pt")))
    assert path == tmp_path / "lenet.pt" and not (tmp_path / "resnet18.pt").exists()
    ckpt = load_checkpoint(path)
    assert ckpt["model"]["name"] == "lenet" and ckpt["train_config"]["model"] == "lenet"
    assert ckpt["metrics"]["epochs"] == 2
    with pytest.raises(ValueError, match="holds 'lenet' but --model is 'resnet18'"):
        classify.train(tiny(tmp_path, model="resnet18", epochs=3, resume=str(tmp_path / "lenet.pt")))


def test_resume_refuses_a_model_arg_that_differs_from_the_files_and_accepts_the_same(tmp_path, capsys):
    classify.train(tiny(tmp_path, epochs=1, model_args={"width_mult": 0.5}))
    argv = ["--resume", str(tmp_path / "lenet.pt"), "--epochs", "2", "--output-dir", str(tmp_path)]
    argv += ["--image-size", "16", "--limit-train", "96", "--limit-val", "48", "--batch-size", "32"]
    assert classify.main([*argv, "--model-arg", "width_mult=1.0"]) == 2  # would be silently ignored
    err = capsys.readouterr().err
    assert "--model-arg width_mult=1.0 (the file has 0.5) differs from --resume" in err, err
    assert torch.load(tmp_path / "lenet.resume.pt", weights_only=True)["epoch"] == 1  # nothing trained
    assert classify.main([*argv, "--model-arg", "width_mult=0.5", "--no-progress"]) == 0
    assert load_checkpoint(tmp_path / "lenet.pt")["model"]["args"]["width_mult"] == 0.5


def test_resume_takes_unset_optimizer_flags_from_the_file_and_refuses_different_ones(tmp_path):
    classify.train(tiny(tmp_path, epochs=1, lr=1e-3, weight_decay=0.0))
    resume = str(tmp_path / "lenet.pt")
    for flags, named in [
        ({"lr": 0.5}, "--lr 0.5 (the run used 0.001)"),  # the restored optimizer would keep 0.001
        ({"optimizer": "nesterov"}, "--optimizer nesterov (the run used adamw)"),  # a KeyError before
        ({"batch_size": 8}, "--batch-size 8 (the run used 32)"),
    ]:
        with pytest.raises(ValueError, match=re.escape(named)):
            classify.train(tiny(tmp_path, epochs=2, resume=resume, **flags))
    classify.train(tiny(tmp_path, epochs=2, resume=resume, lr=1e-3))  # the same value is fine
    config = load_checkpoint(tmp_path / "lenet.pt")["train_config"]
    assert (config["lr"], config["weight_decay"]) == (1e-3, 0.0)  # the file's, not the recipe's 3e-3


def test_bad_flags_and_wrong_files_are_error_lines_before_any_training(lenet_run, tmp_path, capsys):
    translator = load_checkpoint(lenet_run)
    translator.update(task="translate")
    del translator["preprocessing"]
    save_checkpoint(translator, tmp_path / "translator.pt")
    (tmp_path / "file").write_text("")
    out = ["--output-dir", str(tmp_path / "out")]
    cases = {
        "--model-arg nosuch: not a field of lenet": ["--model", "lenet", "--model-arg", "nosuch=1", *out],
        "'gru_attention' is a translate model, not a classifier": ["--model", "gru_attention", *out],
        "is a file, not a directory": ["--model", "lenet", "--output-dir", str(tmp_path / "file" / "sub")],
        "a translate checkpoint, not a classifier": ["--finetune", str(tmp_path / "translator.pt"), *out],
        "--label-smoothing must be in [0, 1), got 1.0": ["--model", "lenet", "--label-smoothing", "1", *out],
    }
    for message, argv in cases.items():
        assert classify.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_finetune_keeps_the_backbone_and_gives_a_new_class_count_a_new_head(lenet_run, tmp_path):
    from tests.test_data_images import write_folder

    root = write_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=6, size=(16, 16))
    path = classify.train(
        TrainConfig(
            dataset="folder",
            data_path=str(root),
            image_size=16,
            epochs=1,
            finetune=str(lenet_run),
            output_dir=str(tmp_path / "ft"),
            name="lenet_abc",
            batch_size=8,
            progress=False,
        )
    )
    ckpt = load_checkpoint(path)
    assert ckpt["model"]["args"]["num_classes"] == 3 and ckpt["labels"] == ["a", "b", "c"]
    assert ckpt["preprocessing"]["channels"] == 1  # taken from the finetuned checkpoint


def test_load_matching_weights_skips_exactly_the_head_whose_shape_changed(lenet_run):
    source = load_checkpoint(lenet_run)["state_dict"]
    model = build_model("lenet", num_classes=3, in_channels=1)
    skipped = classify_finetune.load_matching_weights(model, source)
    head = [k for k, v in source.items() if v.shape != model.state_dict()[k].shape]
    assert skipped == sorted(head) and 1 <= len(skipped) <= 2
    kept = next(k for k in source if k not in skipped and source[k].is_floating_point())
    assert torch.equal(model.state_dict()[kept], source[kept])


def test_early_stopping_stops_when_validation_accuracy_stalls_and_keeps_the_best_epoch(tmp_path):
    path = classify.train(
        tiny(tmp_path, epochs=6, lr=1e-12, early_stopping=1, augment=False, model_args={"batch_norm": False})
    )  # frozen weights: accuracy cannot move
    metrics = load_checkpoint(path)["metrics"]
    assert metrics["epochs"] == 2 and metrics["best_epoch"] == 1


def test_cli_prints_help_and_rejects_an_unknown_model_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        classify.main(["--help"])
    assert exc.value.code == 0 and "--early-stopping" in capsys.readouterr().out
    assert classify.main(["--model", "nosuchnet", "--output-dir", str(tmp_path)]) == 2
    assert "unknown model 'nosuchnet'" in capsys.readouterr().err


def test_a_data_path_without_its_dataset_format_is_refused_not_ignored(tmp_path, capsys):
    (tmp_path / "cats").mkdir()
    argv = ["--model", "lenet", "--data-path", str(tmp_path), "--output-dir", str(tmp_path / "out")]
    assert classify.main(argv) == 2  # digits, the default, would train on scikit-learn's bundled scans
    assert "needs --dataset naming its format (folder, cifar10" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_model_args_parse_python_literals_and_bad_ones_are_named():
    assert classify.parse_model_arg("width=32") == ("width", 32)
    assert classify.parse_model_arg("small_input=False") == ("small_input", False)
    assert classify.parse_model_arg("norm=batch") == ("norm", "batch")
    with pytest.raises(Exception, match="key=value"):
        classify.parse_model_arg("width")


def test_the_old_amp_switch_on_cpu_trains_in_fp16_and_says_so_in_the_checkpoint(tmp_path):
    path = classify.train(tiny(tmp_path, epochs=1, amp=True, limit_train=32, device="cpu"))
    assert load_checkpoint(path)["train_config"]["amp"] == "fp16"  # was True, trained in float32


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_registered_classifier_gets_a_recipe_that_builds_it(name):
    config = resolve(TrainConfig(model=name))
    assert config.epochs >= 1 and config.lr > 0
    _, args, model = classify_loop.build_classifier(config, num_classes=10, channels=1)
    assert args["num_classes"] == 10 and args["in_channels"] == 1
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_torchrun_ranks_keep_identical_weights_and_do_not_wait_in_a_collective_while_rank_0_writes(tmp_path):
    """Two CPU ranks (gloo; pinned: with --device auto a one-GPU machine would give rank 1 no GPU) end
    with the same weights, those of the checkpoint, though rank 0's writing outlasts the process
    group's timeout (one launch checks both: each costs two processes' torch imports)."""
    argv = ["--model", "lenet", "--epochs", "1", "--limit-train", "64", "--limit-val", "32"]
    argv += ["--image-size", "16", "--batch-size", "16", "--no-progress", "--device", "cpu"]
    rank0 = two_ranks_weights_hash(
        "training.classify",
        [*argv, "--output-dir", str(tmp_path / "out")],
        tmp_path / "hashes",
        slow_rank0=f"training.classify_loop:finish={SLOW_RANK0_TIMEOUT_S + 3}",
    )
    ckpt = load_checkpoint(tmp_path / "out" / "lenet.pt")
    assert ckpt["data"]["n_train"] == 64  # the whole limited split, sharded between the ranks
    assert weights_hash(rebuild_model(ckpt)) == rank0


def test_zoo_picks_one_model_per_family_and_writes_a_markdown_table(tmp_path, capsys):
    from training import zoo

    models = zoo.default_models()
    families = [classify_config.family_of(m) for m in models]
    assert "lenet" in models and len(families) == len(set(families))
    report = tmp_path / "zoo.md"
    argv = ["--models", "lenet", "--epochs", "1", "--limit-train", "64", "--no-progress"]
    assert zoo.main([*argv, "--output", str(report), "--output-dir", str(tmp_path / "ck")]) == 0
    table = report.read_text()
    assert "| family | model | val accuracy |" in table and "| lenet | lenet | " in table
    assert zoo.main(["--models", "nosuchnet"]) == 2
