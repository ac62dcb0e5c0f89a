"""Training/serving skew: the served model sees the inputs training's evaluation gave it.

Images: training's readers and resizing (``training/data``) and the gateway's upload decoding
(``serving/protocol/images.py``) give the same uint8 pixels for every kind of file Pillow writes, and
the classify answer is the exported graph's on training's tensor. Text: the tokenizer a client's raw
text meets (the gateway's, in Python or in ``tokenizers``) gives the ids training gave the cleaned
text (``corpus.clean_pairs``), so the gateway translates as ``training.translation_eval`` does.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import random
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Regex, Tokenizer, normalizers

from serving.app import create_app
from serving.decoding.fast_tokens import FastEncoder
from serving.decoding.options import DecodingOptions
from serving.protocol.images import decode_image
from serving.settings import Settings
from tests.repo_fixtures import MAX_BATCH, LiveServer, build_classifier_repository
from training.data.corpus import clean_pairs
from training.data.image_formats import read_digits
from training.data.images import DataSpec, convert_channels, load_dataset, resize
from training.data.numbers import generate_pairs
from training.data.tokenizer import SPACE_RUNS, TokenizerPair, normalizer, train_tokenizer, with_cleaning

MAX_PIXELS = 10**8

# pieces of hostile text: accents composed and decomposed, full-width forms, ligatures, joiners,
# emoji, right-to-left script, lone combining marks, control characters, every kind of space and
# line break, separators in numbers, a very long word, punctuation only
PIECES = [
    "twenty", "one", "Three", "é", "e\u0301", "Ａｂ", "ﬁ", "\u200d", "😀", "\u05e9\u05dc\u05d5\u05dd",
    "\u0301", "\x07", "\t", "\n", "\r\n", "\xa0", "1,000", "1 000", "x" * 80, "...", "?!", "  ", " ",
    "\u3000", "\u2028", "\x1c", "\x85", "´", "¨", "\u2002", "İ", "\ufeff", "\u200b", "▁", "ǅ",
]  # fmt: skip


def _cleaned(text: str, lowercase: bool) -> str:
    return clean_pairs([(text, "x")], lowercase=lowercase, min_length=0, dedup=False)[0][0]


def _hostile_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    seps = ["", " ", "", "\t", "  "]
    return [
        "".join(rng.choice(PIECES) + rng.choice(seps) for _ in range(rng.randint(1, 8))) for _ in range(count)
    ]


@pytest.fixture(scope="module", params=[False, True], ids=["cased", "lowercase"])
def tokenizer(request) -> tuple[Tokenizer, bool]:
    texts = [_cleaned(t, request.param) for pair in generate_pairs(300, seed=5) for t in pair]
    return train_tokenizer(texts, 300, lowercase=request.param), request.param


def test_raw_hostile_text_encodes_to_the_ids_training_gave_its_cleaned_form(tokenizer) -> None:
    tok, lowercase = tokenizer
    fast = FastEncoder.of(tok)
    assert fast is not None  # the gateway keeps its Python path for plain text
    answered = 0
    for text in _hostile_texts(3000, seed=1) + ["twenty  one", " twenty one\t", "twenty\r\none\n"]:
        trained = tok.encode(_cleaned(text, lowercase)).ids
        assert tok.encode(text).ids == trained, repr(text)
        ids = fast.encode(text)
        if ids is not None:
            answered += 1
            assert ids == trained, repr(text)
    assert answered > 100


def test_the_space_class_is_what_corpus_cleaning_splits_on() -> None:
    replace = normalizers.Replace(Regex(SPACE_RUNS), "_")
    chars = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c < 0xE000]
    replaced = [c for c in chars if replace.normalize_str(f"a{c}{c}b") == "a_b"]
    assert replaced == [c for c in chars if c.isspace()]


def test_a_tokenizer_of_an_older_checkpoint_gets_the_cleaning_when_exported() -> None:
    texts = [t for pair in generate_pairs(200, seed=2) for t in pair]
    for lowercase in (False, True):
        tok = train_tokenizer(texts, 200, lowercase=lowercase)
        steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
        tok.normalizer = normalizers.Sequence(steps)  # what checkpoints trained before the fix hold
        legacy = tok.to_str()
        upgraded = Tokenizer.from_str(with_cleaning(legacy))
        for text in ("twenty  one", "\ttwenty one \n", "Twenty\u3000One"):
            assert upgraded.encode(text).ids == tok.encode(_cleaned(text, lowercase)).ids
        assert with_cleaning(upgraded.to_str()) == upgraded.to_str()  # cleaning twice changes nothing
        assert FastEncoder.of(upgraded).encode("twenty  one ") == upgraded.encode("twenty one").ids
    tok.normalizer = normalizers.Sequence([normalizers.NFD()])  # not Kiln's: left as it is
    assert with_cleaning(tok.to_str()) == tok.to_str()


def test_training_tokenizers_carry_the_same_normalizer_as_a_fresh_one() -> None:
    tok = train_tokenizer(["a b c"] * 5, 50, lowercase=True, min_frequency=1)
    assert tok.normalizer.normalize_str(" A\t\tB ") == normalizer(True).normalize_str(" A\t\tB ") == "a b"


def test_the_gateway_translates_messy_text_as_training_translates_its_cleaned_form(
    exported_translator_models,
) -> None:
    from serving.decoding.translator import translator_from_entry
    from serving.execution.onnxruntime import onnxruntime_runner
    from training.checkpoint import load_checkpoint, rebuild_model
    from training.translation_eval import translate_texts

    root, errors = exported_translator_models
    name = "transformer"
    if name in errors:
        pytest.fail(f"export of {name} failed: {errors[name]}")
    repository = root / "model_repository"
    kiln = json.loads((repository / name / "kiln.json").read_text())
    run = {
        part: onnxruntime_runner(repository / f"{name}_{part}" / "1" / "model.onnx")
        for part in ("encoder", "decoder")
    }
    translator = translator_from_entry(repository / name, kiln, run["encoder"], run["decoder"])
    ckpt = load_checkpoint(root / "checkpoints" / f"{name}.pt")
    pair = TokenizerPair.from_dict(ckpt["tokenizers"])
    clean = [src for src, _ in generate_pairs(6, seed=9)]
    messy = [f"  {t.replace(' ', chr(9), 1).replace(' ', '  ')}\r\n" for t in clean]
    assert translator.source_ids(messy) == [ids[:-1] for ids in pair.encode_source(clean)]

    async def served() -> list[str]:
        await translator.start()
        try:
            options = DecodingOptions(beam_size=4, max_length=24)
            return [hyps[0].text for hyps in await translator.translate(messy, options)]
        finally:
            await translator.stop()

    expected = translate_texts(rebuild_model(ckpt), pair, clean, beam=4, max_length=24)
    assert asyncio.run(served()) == expected


# -- images --------------------------------------------------------------------------------------


def _png(pixels: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, "PNG")
    return buffer.getvalue()


def _served(data: bytes, size: int, channels: int) -> np.ndarray:
    prep = {"input_size": [size, size], "channels": channels}
    return decode_image(data, prep, index=0, max_pixels=MAX_PIXELS)  # (H, W, C)


@pytest.mark.parametrize("size", [32, 28, 6])
def test_a_datasets_native_images_are_resized_as_the_gateway_resizes_the_same_image(size) -> None:
    digits = read_digits().images[:60]  # (N, 1, 8, 8), resized by training to the model's size
    trained = resize(digits, size)
    for native, seen in zip(digits, trained, strict=True):
        served = _served(_png(native[0].numpy(), "L"), size, 1)
        np.testing.assert_array_equal(seen.permute(1, 2, 0).numpy(), served)


def test_colour_datasets_trained_grey_get_the_gateways_luma() -> None:
    rgb = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (40, 3, 12, 12), dtype=np.uint8))
    grey = convert_channels(rgb, 1)
    for colour, seen in zip(rgb, grey, strict=True):
        served = _served(_png(colour.permute(1, 2, 0).numpy().copy(), "RGB"), 12, 1)
        np.testing.assert_array_equal(seen.permute(1, 2, 0).numpy(), served)


def _image(mode: str, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    if mode in ("RGB", "RGBA", "CMYK", "LA"):
        return Image.fromarray(rng.integers(0, 256, (height, width, len(mode)), dtype=np.uint8), mode)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    grey = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L")
    if mode == "P":
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").quantize(32)
    return grey.convert(mode)  # L, 1


def _files() -> list[tuple[str, bytes]]:
    """(suffix, bytes) of PNGs and JPEGs of every mode Pillow writes them in, at sizes from 1x1 to
    extreme aspect ratios, plus JPEGs with EXIF orientations and progressive, and a PNG palette with a
    transparent index."""
    rng, files = np.random.default_rng(0), []
    sizes = [(1, 1), (7, 5), (40, 3), (3, 40), (24, 18)]
    for mode, (w, h), fmt in itertools.product(
        ["RGB", "RGBA", "LA", "L", "1", "P", "I;16", "CMYK"], sizes, ["PNG", "JPEG"]
    ):
        buffer = io.BytesIO()
        try:
            _image(mode, w, h, rng).save(buffer, fmt)
        except OSError:  # a mode the format cannot hold (RGBA JPEG, CMYK PNG, ...)
            continue
        files.append((fmt.lower(), buffer.getvalue()))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buffer = io.BytesIO()
        _image("RGB", 20, 10, rng).save(buffer, "JPEG", exif=exif.tobytes(), progressive=orientation % 2 == 0)
        files.append(("jpeg", buffer.getvalue()))
    buffer = io.BytesIO()
    _image("P", 9, 6, rng).save(buffer, "PNG", transparency=0)
    files.append(("png", buffer.getvalue()))
    return files


@pytest.mark.parametrize("channels", [1, 3])
def test_every_kind_of_image_reaches_training_and_the_gateway_as_the_same_pixels(tmp_path, channels) -> None:
    files = _files()
    assert len(files) > 60
    (tmp_path / "only").mkdir()
    for i, (suffix, data) in enumerate(files):
        (tmp_path / "only" / f"{i:03d}.{suffix}").write_bytes(data)
    spec = DataSpec(dataset="folder", data_path=str(tmp_path), image_size=10, channels=channels)
    trained = load_dataset(spec).images  # (N, C, 10, 10), files in name order
    for (_, data), seen in zip(files, trained, strict=True):
        np.testing.assert_array_equal(seen.permute(1, 2, 0).numpy(), _served(data, 10, channels))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    return build_classifier_repository(tmp_path_factory.mktemp("skew") / "repo")


def test_classify_answers_the_exported_graph_on_trainings_eval_tensor(classifier, tmp_path) -> None:
    import onnxruntime as ort

    kiln = json.loads((classifier / "lenet" / "kiln.json").read_text())
    size = kiln["preprocessing"]["input_size"][0]
    files = [data for _, data in _files()[::7]]
    (tmp_path / "only").mkdir()
    for i, data in enumerate(files):
        (tmp_path / "only" / f"{i:03d}.png").write_bytes(data)  # Pillow reads the header, not the suffix
    spec = DataSpec(dataset="folder", data_path=str(tmp_path), image_size=size, channels=1)
    images = load_dataset(spec).images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C): the graph's layout
    session = ort.InferenceSession(
        str(classifier / "lenet" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    feed = {kiln["roles"]["images"]: np.ascontiguousarray(images)}
    logits, expected = session.run([kiln["roles"]["logits"], kiln["roles"]["probabilities"]], feed)
    settings = Settings(model_repository=classifier, grpc_port=0)
    with LiveServer(create_app(settings)) as live:
        url = f"http://{live.url}/v1/models/lenet/classify"
        body = {"images": [base64.b64encode(d).decode() for d in files], "top_k": expected.shape[1]}
        by_json = httpx.post(url, json=body, timeout=60).json()["predictions"]
        form = [("files", (f"{i}.png", d)) for i, d in enumerate(files)]
        by_form = httpx.post(url, files=form, data={"top_k": str(expected.shape[1])}, timeout=60).json()
        infer = {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "UINT8",
                    "shape": list(images[:MAX_BATCH].shape),
                    "data": images[:MAX_BATCH].ravel().tolist(),
                }
            ]
        }
        # KServe infer takes the model's tensor itself: no decoding, no resizing (Triton's as well)
        raw = httpx.post(f"http://{live.url}/v2/models/lenet/infer", json=infer, timeout=60).json()
    assert by_form["predictions"] == by_json
    for ranked, want in zip(by_json, expected, strict=True):
        got = np.zeros_like(want)
        for p in ranked:
            got[p["index"]] = p["score"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    served_logits = next(o["data"] for o in raw["outputs"] if o["name"] == kiln["roles"]["logits"])
    np.testing.assert_allclose(
        np.asarray(served_logits).reshape(-1, logits.shape[1]), logits[:MAX_BATCH], rtol=1e-5, atol=1e-5
    )
