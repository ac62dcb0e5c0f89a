"""Images in a sub-folder of a class folder (``cat/2019/x.jpg``, a layout torchvision's ImageFolder
reads) are not read, and a warning names the sub-folder: they were dropped without a word, the model
trained on part of the class while the run looked complete."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from training.data.image_formats import list_folder

PIXELS = np.zeros((4, 4), dtype=np.uint8)


def test_a_sub_folder_of_a_class_folder_is_named_in_a_warning(tmp_path, caplog):
    for relative in ("a/x.png", "a/2019/y.png", "a/2019/z.png", "b/x.png", "b/.cache/w.png"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(PIXELS, "L").save(tmp_path / relative)
    with caplog.at_level(logging.WARNING, logger="training.data.image_formats"):
        listing = list_folder(str(tmp_path))
    assert [f.relative_to(tmp_path).as_posix() for f in listing.files] == ["a/x.png", "b/x.png"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"{tmp_path / 'a'}: skipped 1 sub-folder(s), whose images are not read (only the class folder's own): 2019"
    ]


def test_class_folders_without_sub_folders_warn_nothing(tmp_path, caplog):
    for relative in ("a/x.png", "b/x.png"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(PIXELS, "L").save(tmp_path / relative)
    with caplog.at_level(logging.WARNING, logger="training.data.image_formats"):
        list_folder(str(tmp_path))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
