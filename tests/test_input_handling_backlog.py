"""What a user sends reaches the model as training fed it: three gaps between the two paths, closed.

- A phone photo stored sideways with an EXIF Orientation is turned upright by the gateway's decoder
  and by training's folder reader alike (``kiln.images.upright``).
- ``--lowercase`` cleans a source as the tokenizer's normalizer, which serving applies to raw text,
  lower-cases it: a word-final capital sigma is "σ" on both paths, not "ς" in training only.
- A special token's text typed in a sentence ("</s>", "<pad>") is text for training's tokenizers and
  for the gateway's, not an end of sentence at the encoder.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kiln.images import upright
from serving.decoding.translator import TextCodec
from serving.protocol.images import decode_image
from training.data.corpus import NORMALIZATIONS, clean_pairs
from training.data.image_formats import read_folder
from training.data.images import DataSpec, load_dataset
from training.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    TokenizerConfig,
    TokenizerPair,
    build_tokenizers,
    normalizer,
)

ORIENTATION = 0x0112
HEIGHT, WIDTH = 24, 40  # not square: a quarter turn shows in the shape too
QUADRANTS = ((230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 230))  # TL, TR, BL, BR
# How a camera stores an upright picture for each EXIF orientation (the EXIF/TIFF spec's table, in
# numpy, not Pillow's): the reader must undo it.
STORED = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),  # stored a quarter turn anticlockwise: shown turned clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, -1),
}
SPECIAL_TEXTS = ["one </s> two", "<s>three<pad>", "<unk>", "four </s>", "x</s>y </s>", "one two"]


def _upright_picture() -> np.ndarray:
    picture = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)  # (H, W, C)
    half_h, half_w = HEIGHT // 2, WIDTH // 2
    for index, colour in enumerate(QUADRANTS):
        rows = slice(0, half_h) if index < 2 else slice(half_h, None)
        cols = slice(0, half_w) if index % 2 == 0 else slice(half_w, None)
        picture[rows, cols] = colour
    return picture


def _encoded(stored: np.ndarray, fmt: str, exif: bytes | None) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
    kwargs = {} if exif is None else {"exif": exif}
    Image.fromarray(np.ascontiguousarray(stored), "RGB").save(buffer, fmt, **options, **kwargs)
    return buffer.getvalue()


def _tag(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()


def _served(data: bytes, height: int, width: int) -> np.ndarray:
    pre = {"input_size": [height, width], "channels": 3, "layout": "NHWC"}
    return decode_image(data, pre, index=0, max_pixels=1 << 20)  # (H, W, C)


def _trained(data: bytes, suffix: str, folder: Path, size: int | None) -> np.ndarray:
    """The pixels training reads from ``data`` as a file of a one-class image folder."""
    (folder / "only").mkdir(parents=True)
    (folder / "only" / f"photo{suffix}").write_bytes(data)
    if size is None:
        images = read_folder(str(folder), channels=3).images
    else:
        spec = DataSpec(dataset="folder", data_path=str(folder), image_size=size, channels=3)
        images = load_dataset(spec).images
    return images[0].permute(1, 2, 0).numpy()  # (H, W, C)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("orientation", sorted(STORED))
def test_a_photo_with_any_exif_orientation_reaches_the_model_upright_in_training_and_serving(
    tmp_path, fmt, orientation
):
    picture = _upright_picture()
    data = _encoded(STORED[orientation](picture), fmt, _tag(orientation))
    suffix = ".png" if fmt == "PNG" else ".jpg"
    served = _served(data, HEIGHT, WIDTH)
    trained = _trained(data, suffix, tmp_path / "native", None)
    assert trained.shape == served.shape == picture.shape
    assert np.array_equal(trained, served)
    error = np.abs(served.astype(np.int16) - picture).mean()
    assert error == 0 if fmt == "PNG" else error < 4  # a wrong turn moves a quadrant: ~100 levels off
    at_model_size = _served(data, 16, 16)
    assert np.array_equal(_trained(data, suffix, tmp_path / "resized", 16), at_model_size)


@pytest.mark.parametrize(
    "exif",
    [None, _tag(1), _tag(0), _tag(9), b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff"],
    ids=["none", "1", "0", "9", "damaged"],
)
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's own word on the damaged block
def test_an_image_without_a_valid_orientation_is_read_as_stored_on_both_paths(tmp_path, exif):
    stored = STORED[6](_upright_picture())
    data = _encoded(stored, "PNG", exif)
    served = _served(data, *stored.shape[:2])
    assert np.array_equal(served, stored)
    assert np.array_equal(_trained(data, ".png", tmp_path, None), served)


def test_an_image_that_needs_no_turn_is_not_copied():
    for exif in (None, _tag(1)):
        image = Image.open(io.BytesIO(_encoded(_upright_picture(), "JPEG", exif)))
        image.load()
        assert upright(image) is image


def _source_path(pairs: list[tuple[str, str]], normalization: str, lowercase: bool) -> list[str]:
    cleaned = clean_pairs(
        pairs, normalization=normalization, lowercase=lowercase, min_length=0, max_length=10**6, dedup=False
    )
    assert len(cleaned) == len(pairs)
    return [source for source, _ in cleaned]


def _unicode_texts(count: int, seed: int) -> list[str]:
    """Texts mixing the characters whose lower-casing or NFKC differ between Python and ``tokenizers``
    (word-final capital sigma, the lunate sigma NFKC turns into one, dotted capital I, capital sharp s,
    characters of newer Unicode versions) with spaces of every kind and random code points."""
    rng = random.Random(seed)
    tricky = list("ΣσςΑαϹİIıẞßǅΩKÅ㋿ꟲꟳ\u1c89\ua7cb") + [" ", "  ", "\t", "\u00a0", "\u3000", "'", ".", "a"]
    planes = [(0x20, 0x2FFF), (0x3000, 0xD7FF), (0xE000, 0xFFFD), (0x10000, 0x1FFFF)]
    texts = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(0, 12)):
            if rng.random() < 0.7:
                parts.append(rng.choice(tricky))
            else:
                low, high = rng.choice(planes)
                parts.append(chr(rng.randint(low, high)))
        texts.append("".join(parts))
    return texts


@pytest.mark.parametrize("lowercase", [False, True], ids=["cased", "lowercase"])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_a_cleaned_source_normalizes_to_what_serving_makes_of_the_raw_text(normalization, lowercase):
    normalize = normalizer(lowercase).normalize_str  # what the exported tokenizer applies to raw text
    texts = _unicode_texts(3000, seed=len(normalization) + lowercase)
    # Training encodes the cleaned text, so normalizes it twice; skipped where the library's normalizer
    # is not idempotent itself (a combining mark after the dot Lowercase gives "İ": NFKC reorders them).
    texts = [t for t in texts if normalize(normalize(t)) == normalize(t)]
    cleaned = _source_path([(t, "x") for t in texts], normalization, lowercase)
    apart = {
        t: (c, normalize(t)) for t, c in zip(texts, cleaned, strict=True) if normalize(c) != normalize(t)
    }
    assert apart == {}


def test_a_greek_capital_sigma_gets_the_ids_training_saw_and_a_target_keeps_its_final_sigma():
    raw = [("ΟΔΟΣ ΤΗΣ ΠΟΛΗΣ", "ΟΔΟΣ"), ("ο δρόμος της πόλης", "δρόμος"), ("Ϲ ΑϹ", "ΑΣ")] * 3
    assert clean_pairs(raw[:1], lowercase=True) == [("οδοσ τησ πολησ", "οδος")]
    pairs = clean_pairs(raw, lowercase=True, dedup=False)
    tokenizers = build_tokenizers(pairs, TokenizerConfig(vocab_size=60, lowercase=True, min_frequency=1))
    codec = TextCodec(tokenizers.source, tokenizers.target, spec=None)  # encoding reads no step spec
    trained = [ids[:-1] for ids in tokenizers.encode_source([source for source, _ in pairs])]  # no EOS
    sources = [source for source, _ in raw]
    assert codec.encode(sources, batched=True) == trained
    assert codec.encode(sources, batched=False) == trained


def test_special_token_texts_typed_in_a_sentence_are_text_for_training_and_for_the_gateway(
    exported_translator_models,
):
    root, errors = exported_translator_models
    assert "transformer" not in errors, errors.get("transformer")
    ckpt = torch.load(root / "checkpoints" / "transformer.pt", weights_only=True)
    tokenizers = TokenizerPair.from_dict(ckpt["tokenizers"])  # as training and its evaluation read it
    entry = root / "model_repository" / "transformer"
    codec = TextCodec.from_files(entry / "source_tokenizer.json", entry / "target_tokenizer.json", spec=None)
    trained = tokenizers.encode_source(SPECIAL_TEXTS)
    assert all(ids[-1] == EOS_ID and not {PAD_ID, BOS_ID, EOS_ID} & set(ids[:-1]) for ids in trained)
    assert codec.encode(SPECIAL_TEXTS, batched=True) == [ids[:-1] for ids in trained]
    assert codec.encode(SPECIAL_TEXTS, batched=False) == [ids[:-1] for ids in trained]
    targets = tokenizers.encode_target(SPECIAL_TEXTS)  # teacher forcing: no EOS before the end
    assert not any({PAD_ID, BOS_ID, EOS_ID} & set(ids) for ids in targets)
    fresh = build_tokenizers([("a </s> b", "c <s> d")] * 3, TokenizerConfig(vocab_size=40, min_frequency=1))
    assert EOS_ID not in fresh.encode_source(["a </s> b"])[0][:-1]  # a newly trained one too
