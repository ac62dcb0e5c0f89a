"""Image data: every reader on tiny files written here, the seeded split, and train-only statistics."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from training.data.image_formats import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, DatasetError
from training.data.images import (
    DataSpec,
    ImageDataset,
    channel_stats,
    data_info,
    load_dataset,
    load_splits,
    make_splits,
    normalize,
    split_indices,
)


def write_folder(root, classes=("cat", "dog", "emu"), per_class=4, size=(10, 7), suffix=".png"):
    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((size[1], size[0], 3), index * 100, dtype=np.uint8)
            pixels[0, 0] = rng.integers(0, 255, 3)
            Image.fromarray(pixels).save(root / name / f"{i}{suffix}")
    return root


def write_idx(path, array, magic, gz=False):
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(payload)


def write_mnist(root, n=12, gz=False):
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    images = np.arange(n * 28 * 28).reshape(n, 28, 28) % 256
    write_idx(root / f"train-images-idx3-ubyte{suffix}", images, IDX_IMAGES_MAGIC, gz)
    write_idx(root / f"train-labels-idx1-ubyte{suffix}", np.arange(n) % 10, IDX_LABELS_MAGIC, gz)
    return root


def write_cifar(root, batches=2, n=10):
    root.mkdir(parents=True)
    for b in range(batches):
        data = np.full((n, 3072), b * 10, dtype=np.uint8)
        data[:, 1024:2048] = 200  # the green plane
        batch = {b"data": data, b"labels": [i % 10 for i in range(n)]}
        (root / f"data_batch_{b + 1}").write_bytes(pickle.dumps(batch))
    names = [
        n.encode()
        for n in ("airplane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    ]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return root


def test_digits_are_1797_real_scans_upscaled_to_the_requested_size():
    ds = load_dataset(DataSpec(image_size=16))
    assert ds.images.shape == (1797, 1, 16, 16) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64 and sorted(set(ds.labels.tolist())) == list(range(10))
    assert ds.classes == [str(d) for d in range(10)]
    assert ds.images.max() > 200  # rescaled from 0..16 to 0..255


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_image_folder_reads_one_class_per_subfolder_and_resizes(tmp_path, suffix):
    write_folder(tmp_path / "imgs", suffix=suffix)
    ds = load_dataset(DataSpec(dataset="folder", data_path=str(tmp_path / "imgs"), image_size=8, channels=3))
    assert ds.images.shape == (12, 3, 8, 8)
    assert ds.classes == ["cat", "dog", "emu"]
    assert ds.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert abs(int(ds.images[-1, :, 4, 4].float().mean()) - 200) <= 6  # JPEG is lossy


def test_image_folder_converts_to_one_channel_when_asked(tmp_path):
    write_folder(tmp_path / "imgs")
    ds = load_dataset(DataSpec(dataset="folder", data_path=str(tmp_path / "imgs"), image_size=8, channels=1))
    assert ds.images.shape == (12, 1, 8, 8)


def test_sixteen_bit_grey_pngs_are_scaled_to_eight_bits_not_saturated(tmp_path):
    for name, value in (("dark", 0x1000), ("bright", 0xC000)):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        Image.fromarray(np.full((6, 6), value, dtype=np.uint16)).save(tmp_path / "imgs" / name / "a.png")
    ds = load_dataset(DataSpec(dataset="folder", data_path=str(tmp_path / "imgs"), image_size=6))
    assert ds.images.shape == (2, 1, 6, 6)
    assert ds.images[:, 0, 0, 0].tolist() == [0xC0, 0x10]  # classes sorted: bright, dark


@pytest.mark.parametrize("channels", [1, 3])
def test_the_gateway_decodes_a_sixteen_bit_grey_png_to_the_pixels_training_reads(channels):
    import io

    from serving.protocol.images import decode_image

    buffer = io.BytesIO()
    Image.fromarray((np.arange(64, dtype=np.uint16) * 1024).reshape(8, 8)).save(buffer, format="PNG")
    preprocessing = {"input_size": [8, 8], "channels": channels}
    served = decode_image(buffer.getvalue(), preprocessing, index=0, max_pixels=1 << 20)
    assert served[:, :, 0].reshape(-1).tolist() == [(v * 1024) >> 8 for v in range(64)]  # not clipped at 255


def test_one_colour_image_makes_the_folder_three_channel_even_after_grey_ones(tmp_path):
    for name, mode, colour in (("a_grey", "L", 90), ("b_red", "RGB", (200, 10, 10))):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        Image.new(mode, (6, 6), colour).save(tmp_path / "imgs" / name / "a.png")
    ds = load_dataset(DataSpec(dataset="folder", data_path=str(tmp_path / "imgs"), image_size=6))
    assert ds.images.shape == (2, 3, 6, 6)
    assert ds.images[0, :, 0, 0].tolist() == [90, 90, 90] and ds.images[1, :, 0, 0].tolist() == [200, 10, 10]


def test_image_folder_errors_name_the_missing_path_the_empty_class_and_the_corrupt_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(DataSpec(dataset="folder", data_path=str(tmp_path / "nope")))
    root = write_folder(tmp_path / "imgs")
    (root / "zebra").mkdir()
    with pytest.raises(DatasetError, match="zebra: empty class folder"):
        load_dataset(DataSpec(dataset="folder", data_path=str(root)))
    (root / "zebra" / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match="bad.png: not a readable image"):
        load_dataset(DataSpec(dataset="folder", data_path=str(root)))


def test_folder_dataset_without_a_path_says_it_needs_one():
    with pytest.raises(DatasetError, match="needs a data path"):
        load_dataset(DataSpec(dataset="folder"))


def test_cifar10_batches_are_read_with_label_names_and_planes_in_rgb_order(tmp_path):
    ds = load_dataset(DataSpec(dataset="cifar10", data_path=str(write_cifar(tmp_path / "c"))))
    assert ds.images.shape == (20, 3, 32, 32)
    assert ds.classes[1] == "car"
    assert ds.images[0, 1].eq(200).all() and ds.images[0, 0].eq(0).all()
    assert ds.images[10, 0].eq(10).all()


def test_cifar10_corrupt_batch_is_reported_by_name(tmp_path):
    root = write_cifar(tmp_path / "c")
    (root / "data_batch_2").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="data_batch_2: not a readable CIFAR batch"):
        load_dataset(DataSpec(dataset="cifar10", data_path=str(root)))


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_idx_files_raw_or_gzipped_are_read(tmp_path, gz, dataset):
    root = write_mnist(tmp_path / "m", gz=gz)
    ds = load_dataset(DataSpec(dataset=dataset, data_path=str(root), image_size=28))
    assert ds.images.shape == (12, 1, 28, 28)
    assert ds.images[0, 0, 0, :5].tolist() == [0, 1, 2, 3, 4]
    assert ds.labels.tolist() == [i % 10 for i in range(12)]
    assert len(ds.classes) == 10 and (dataset == "mnist") == (ds.classes[0] == "0")


def test_idx_with_wrong_magic_or_truncated_payload_is_refused(tmp_path):
    root = write_mnist(tmp_path / "m")
    write_idx(root / "train-labels-idx1-ubyte", np.arange(12), IDX_IMAGES_MAGIC)
    with pytest.raises(DatasetError, match="bad IDX magic number 0x00000803, expected 0x00000801"):
        load_dataset(DataSpec(dataset="mnist", data_path=str(root)))
    write_idx(root / "train-labels-idx1-ubyte", np.arange(12), IDX_LABELS_MAGIC)
    images = root / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    with pytest.raises(DatasetError, match="need 9408 bytes of data, found 9403"):
        load_dataset(DataSpec(dataset="mnist", data_path=str(root)))


def test_split_is_deterministic_by_seed_stratified_and_disjoint():
    labels = torch.arange(100) % 5
    train_a, val_a = split_indices(labels, 0.2, seed=3)
    train_b, val_b = split_indices(labels, 0.2, seed=3)
    _, val_c = split_indices(labels, 0.2, seed=4)
    assert torch.equal(train_a, train_b) and torch.equal(val_a, val_b)
    assert not torch.equal(val_a, val_c)
    assert set(train_a.tolist()).isdisjoint(val_a.tolist())
    assert len(train_a) + len(val_a) == 100
    assert torch.bincount(labels[val_a]).tolist() == [4] * 5


def test_load_splits_rebuilds_the_same_validation_images_from_the_checkpoint_data_dict():
    spec = DataSpec(image_size=12, seed=7, limit_train=100)
    train, val = make_splits(spec)
    info = data_info(spec, train, val)
    assert info["n_train"] == 100 and info["channels"] == 1
    train2, val2 = load_splits(info)
    assert torch.equal(val.images, val2.images) and torch.equal(val.labels, val2.labels)
    assert torch.equal(train.images, train2.images)


def test_channel_statistics_come_from_the_training_split_only():
    train = ImageDataset(torch.full((4, 2, 3, 3), 51, dtype=torch.uint8), torch.zeros(4), ["a"])
    mean, std = channel_stats(train.images)
    assert mean == pytest.approx([0.2, 0.2]) and std == pytest.approx([1e-3, 1e-3])
    spec = DataSpec(image_size=8, limit_train=50)
    tr, va = make_splits(spec)
    full_mean, _ = channel_stats(torch.cat([tr.images, va.images]))
    assert channel_stats(tr.images)[0] != pytest.approx(full_mean, abs=1e-6)
    x = normalize(tr.images, *channel_stats(tr.images))
    assert x.mean().item() == pytest.approx(0.0, abs=1e-4) and x.std().item() == pytest.approx(1.0, abs=1e-2)


def test_unknown_dataset_and_bad_fraction_are_named():
    with pytest.raises(DatasetError, match="unknown dataset 'svhn'"):
        load_dataset(DataSpec(dataset="svhn"))
    with pytest.raises(DatasetError, match="val_fraction must be in"):
        make_splits(DataSpec(val_fraction=1.5))
