"""The CNN classifier zoo: every registered classifier builds, runs, trains and round-trips a checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from training.checkpoint import load_checkpoint, make_checkpoint, rebuild_model, save_checkpoint
from training.models import build_model, get_entry, list_models, make_config, register_model


@dataclass(frozen=True)
class Case:
    """How to test one model cheaply: tiny config overrides and the square input sizes to try."""

    args: dict
    sizes: tuple[int, ...] = (28, 32)


# Every registered classifier must have an entry (guarded below); widths are shrunk to keep tests fast.
CASES: dict[str, Case] = {
    "lenet": Case({}, sizes=(28, 32, 64, 224)),
    "alexnet": Case({"width_mult": 0.25, "hidden": 32}, sizes=(28, 32, 64)),
    "vgg11": Case({"width_mult": 0.125, "hidden": 16}, sizes=(28, 32, 64)),
    "vgg16": Case({"width_mult": 0.0625, "hidden": 8}),
    "nin": Case({"width_mult": 0.0625}, sizes=(28, 32, 64)),
    "googlenet": Case({"width_mult": 0.0625}),
    "resnet18": Case({"width": 4}, sizes=(28, 32, 64)),
    "resnet34": Case({"width": 2}),
    "resnet50": Case({"width": 2}),
    "densenet121": Case({"growth_rate": 4, "num_init_features": 8, "block_config": [2, 2, 2, 2]}),
}

CLASSIFIERS = list_models("classify")
NUM_CLASSES = 7


def _build(name: str, **overrides) -> nn.Module:
    return build_model(name, **{**CASES[name].args, "num_classes": NUM_CLASSES, **overrides})


def test_every_registered_classifier_has_test_settings():
    missing = sorted(set(CLASSIFIERS) - set(CASES))
    assert not missing, f"add test settings to CASES for: {missing}"


def test_every_test_setting_names_a_registered_classifier():
    stale = sorted(set(CASES) - set(CLASSIFIERS))
    assert not stale, f"CASES lists models that are not registered: {stale}"


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("channels", [1, 3])
def test_eval_forward_returns_batch_by_classes_logits_for_every_input_size(name, channels):
    model = _build(name, in_channels=channels).eval()
    for size in CASES[name].sizes:
        with torch.no_grad():
            out = model(torch.randn(2, channels, size, size))
        assert isinstance(out, torch.Tensor), f"{name} at {size}x{size} returned {type(out).__name__}"
        assert out.shape == (2, NUM_CLASSES), f"{name} at {size}x{size}"


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_backward_gives_a_finite_gradient_to_every_parameter(name):
    model = _build(name, in_channels=3).train()
    logits = model(torch.randn(2, 3, 32, 32))
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}.{pname} has a non-finite gradient"


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_two_eval_forwards_give_identical_logits(name):
    model = _build(name, in_channels=1).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_checkpoint_round_trip_rebuilds_a_model_with_identical_outputs(name, tmp_path):
    args = asdict(make_config(name, **CASES[name].args, num_classes=NUM_CLASSES, in_channels=1))
    model = build_model(name, **args).train()
    model(torch.randn(4, 1, 28, 28))  # moves BatchNorm running stats off their initial values
    model.eval()
    ckpt = make_checkpoint(
        task="classify",
        model_name=name,
        model_args=args,
        model=model,
        train_config={"epochs": 0},
        metrics={"val_accuracy": 0.0},
        preprocessing={"input_size": [28, 28], "channels": 1, "mean": [0.5], "std": [0.25]},
        labels=[str(i) for i in range(NUM_CLASSES)],
    )
    path = save_checkpoint(ckpt, tmp_path / f"{name}.pt")

    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["model"] == {"name": name, "args": args}
    rebuilt = rebuild_model(load_checkpoint(path))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
        fresh = build_model(name, **args).eval()  # control: other weights must give other outputs
        assert not torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_default_config_is_json_serialisable(name):
    args = asdict(make_config(name))
    assert json.loads(json.dumps(args)) == args
    assert args["num_classes"] == 10 and args["in_channels"] == 3


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("bad", [{"num_classes": 0}, {"in_channels": -1}, {"num_classes": 2.5}])
def test_config_rejects_bad_values_naming_the_field(name, bad):
    (field,) = bad
    with pytest.raises(ValueError, match=field):
        make_config(name, **bad)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_unknown_constructor_argument_is_refused_by_name(name):
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['bogus'\]"):
        build_model(name, bogus=1)


def test_registering_a_classifier_name_twice_is_refused():
    for name in CLASSIFIERS:
        entry = get_entry(name)
        with pytest.raises(ValueError, match="already registered"):
            register_model(name, task="classify", config=entry.config_cls)(entry.builder)
        assert get_entry(name) is entry


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_weights_start_from_kaiming_convs_and_unit_batchnorm(name):
    model = _build(name, in_channels=3)
    normalised = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
            normalised.append(m.weight.detach().flatten() / (2.0 / fan_out) ** 0.5)
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()
        elif isinstance(m, nn.Linear):
            assert not m.bias.any()
    assert abs(torch.cat(normalised).std().item() - 1.0) < 0.15


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_eval_model_traces_with_torch_fx_so_export_can_fold_batchnorm(name):
    model = _build(name, in_channels=1).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


# --- family specifics ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032)],
)
def test_resnet_imagenet_configuration_matches_torchvision_parameter_count(name, expected):
    with torch.device("meta"):
        model = build_model(name, num_classes=1000, small_input=False)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("zero_init", [False, True])
def test_resnet_zero_init_residual_zeroes_only_the_last_batchnorm_of_each_block(zero_init):
    model = build_model("resnet50", width=2, zero_init_residual=zero_init)
    blocks = [m for m in model.modules() if hasattr(m, "last_bn")]
    assert len(blocks) == 16
    for block in blocks:
        assert bool(block.last_bn().weight.any()) is not zero_init
        assert block.bn1.weight.all()


def test_resnet_small_input_stem_keeps_resolution_and_imagenet_stem_divides_it_by_four():
    small = build_model("resnet18", width=4, small_input=True).stem
    large = build_model("resnet18", width=4, small_input=False).stem
    x = torch.randn(1, 3, 32, 32)
    assert small(x).shape[-2:] == (32, 32)
    assert large(x).shape[-2:] == (8, 8)


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("alexnet", {"small_input": False, "batch_norm": False, "pool_size": 6, "hidden": 4096}, 61_100_840),
        ("vgg11", {"batch_norm": False, "pool_size": 7, "hidden": 4096}, 132_863_336),
        ("vgg16", {"batch_norm": False, "pool_size": 7, "hidden": 4096}, 138_357_544),
        ("densenet121", {"small_input": False}, 7_978_856),
    ],
)
def test_imagenet_configuration_matches_torchvision_parameter_count(name, args, expected):
    with torch.device("meta"):
        model = build_model(name, num_classes=1000, **args)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_vgg_depths_come_from_the_table():
    for name, convs in [("vgg11", 8), ("vgg16", 13)]:
        model = build_model(name, width_mult=0.0625, hidden=8)
        assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == convs
        assert any(isinstance(m, nn.Dropout) for m in model.classifier)


def test_googlenet_aux_heads_return_extra_logits_only_in_training():
    model = build_model("googlenet", width_mult=0.0625, num_classes=5, aux_logits=True).train()
    x = torch.randn(2, 3, 32, 32)
    logits, aux = model(x)
    assert logits.shape == (2, 5) and [a.shape for a in aux] == [(2, 5), (2, 5)]
    loss = F.cross_entropy(logits, torch.tensor([0, 1]))
    loss = loss + 0.3 * sum(F.cross_entropy(a, torch.tensor([0, 1])) for a in aux)
    loss.backward()
    assert all(p.grad is not None for p in model.aux.parameters())
    with torch.no_grad():
        assert isinstance(model.eval()(x), torch.Tensor)


def test_googlenet_remove_auxiliary_drops_the_heads_and_keeps_the_eval_logits():
    model = build_model("googlenet", width_mult=0.0625, aux_logits=True)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        before = model.eval()(x)
    n_before = sum(p.numel() for p in model.parameters())
    model.remove_auxiliary()
    assert not any("aux" in name for name, _ in model.named_parameters())
    assert sum(p.numel() for p in model.parameters()) < n_before
    with torch.no_grad():
        assert torch.equal(model(x), before)
        assert isinstance(model.train()(x), torch.Tensor)


def test_googlenet_without_aux_logits_has_no_aux_heads():
    model = build_model("googlenet", width_mult=0.0625).train()
    assert model.aux is None
    assert isinstance(model(torch.randn(2, 3, 28, 28)), torch.Tensor)


def test_densenet_rejects_an_empty_block_config():
    with pytest.raises(ValueError, match="block_config"):
        make_config("densenet121", block_config=[])


@pytest.mark.parametrize("name", ["alexnet", "nin", "googlenet", "densenet121"])
def test_imagenet_stem_also_runs_on_small_and_224_inputs(name):
    model = _build(name, in_channels=3, small_input=False).eval()
    with torch.no_grad():
        for size in (32, 224):
            assert model(torch.randn(1, 3, size, size)).shape == (1, NUM_CLASSES)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_a_few_adam_steps_on_one_batch_lower_the_training_loss(name):
    fields = asdict(make_config(name))
    no_dropout = {k: 0.0 for k in ("dropout", "drop_rate") if k in fields}  # tiny heads cannot spare units
    model = _build(name, in_channels=1, **no_dropout).train()
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % NUM_CLASSES
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.7 * losses[0], f"{name} did not fit one batch: {losses}"
