"""A folder dataset of real size: refused in one line before decoding when it cannot fit in memory,
decoded without a second stacked copy, with a bar on a terminal only, and one INFO line once read."""

from __future__ import annotations

import logging
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import image_formats
from training.data.image_formats import DatasetError, read_folder
from training.data.images import DataSpec, channel_stats, make_splits
from training.data.memory import available_memory
from training.runtime import show_progress


def write_folder(root, classes=("a", "b"), per_class=50, size=24):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                root / name / f"{i}.png"
            )
    return root


def test_a_folder_that_cannot_fit_is_refused_before_any_image_is_decoded(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "data", per_class=3)
    monkeypatch.setattr(image_formats, "available_memory", lambda: 10_000)

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded before the refusal")

    monkeypatch.setattr(image_formats, "to_8bit", no_decoding)
    with pytest.raises(DatasetError) as info:
        read_folder(str(root), size=224)
    message = str(info.value)
    assert "\n" not in message
    assert "6 images at 224x224x3" in message and "882 KiB, 1.7 MiB at the peak" in message
    assert "but 10 KiB is available" in message and "--image-size" in message


def test_a_folder_that_fits_is_read_as_before(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "data", per_class=3, size=8)
    monkeypatch.setattr(image_formats, "available_memory", lambda: 10**12)
    raw = read_folder(str(root), size=8)
    assert raw.images.shape == (6, 3, 8, 8) and raw.images.is_contiguous()
    first = np.array(Image.open(root / "a" / "0.png"))  # (H, W, 3)
    assert torch.equal(raw.images[0], torch.from_numpy(first).permute(2, 0, 1))
    assert raw.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_reading_a_folder_holds_one_copy_of_its_images_not_a_list_and_its_stack(tmp_path):
    root = write_folder(tmp_path / "data", per_class=100, size=32)
    decoded = 200 * 3 * 32 * 32
    tracemalloc.start()
    try:
        read_folder(str(root), size=32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.6 * decoded, f"peak {peak} bytes for {decoded} bytes of images"  # was 2.3x


def test_channel_stats_in_chunks_match_the_whole_set_in_float64():
    images = torch.randint(
        0, 256, (37, 3, 9, 11), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    x = images.double() / 255.0
    mean, std = channel_stats(images, chunk=5)
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-12)
    assert channel_stats(torch.full((3, 1, 4, 4), 7, dtype=torch.uint8))[1] == [1e-3]


def test_a_bar_while_reading_when_asked_and_none_off_a_terminal(tmp_path, capsys):
    root = write_folder(tmp_path / "data", per_class=3, size=8)
    read_folder(str(root), size=8, progress=True)
    assert "reading data" in capsys.readouterr().err
    main = SimpleNamespace(is_main=True)
    assert not show_progress(True, main)  # pytest's stderr is not a terminal
    make_splits(DataSpec("folder", str(root), 8), progress=show_progress(True, main))
    assert "reading" not in capsys.readouterr().err


def test_one_info_line_names_the_count_size_and_memory(tmp_path, caplog):
    root = write_folder(tmp_path / "data", per_class=3, size=8)
    with caplog.at_level(logging.INFO, logger="training.data.image_formats"):
        read_folder(str(root), size=16)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == 1 and "6 images of 3x16x16" in lines[0] and "in memory" in lines[0]


def _tree(root, files):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_available_memory_is_capped_by_the_cgroup_limit_v2_and_v1(tmp_path):
    meminfo = _tree(tmp_path, {"meminfo": "MemTotal: 9000 kB\nMemAvailable: 8000 kB\n"}) / "meminfo"
    v2 = _tree(
        tmp_path / "v2",
        {"job/memory.max": "1000000\n", "job/memory.current": "400000\n", "memory.max": "max\n"},
    )
    proc = _tree(tmp_path, {"cgroup2": "0::/job\n", "cgroup1": "5:memory:/job\n"})
    assert available_memory(v2, proc / "cgroup2", meminfo) == 600_000
    v1 = _tree(
        tmp_path / "v1",
        {"memory/job/memory.limit_in_bytes": "500000\n", "memory/job/memory.usage_in_bytes": "100000\n"},
    )
    assert available_memory(v1, proc / "cgroup1", meminfo) == 400_000
    assert available_memory(tmp_path / "none", proc / "cgroup2", meminfo) == 8000 * 1024  # no limit
    assert available_memory(tmp_path / "none", tmp_path / "none", tmp_path / "none") is None
