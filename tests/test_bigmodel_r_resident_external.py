"""A resident decoder (``KILN_RESIDENT_DECODER``) over a decoder whose weights are external data, as
export writes every graph over ``EXTERNAL_DATA_THRESHOLD`` and as a user's own large model comes.

Each layout's fixed-shape graph was the decoder with its weights pulled in, serialized to bytes: a
decoder over protobuf's 2 GiB gave bytes ONNX Runtime cannot parse (and each layout built a transient
copy of every weight). The graph now keeps referring to the decoder's data file, which the layout's
session reads from the decoder's directory (a model given as bytes has no directory of its own)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from export import onnx_export
from serving.decoding import resident_layout
from tests.test_resident_decoder import _same, model, six_on_the_device  # noqa: F401 - fixture
from tests.test_translate_serving import exported_translators


@pytest.fixture(scope="module")
def built(exported_translator_models, tmp_path_factory):
    return exported_translators(exported_translator_models, tmp_path_factory, "bigmodel_r", ("transformer",))


def test_a_decoder_with_external_weights_decodes_on_the_device_without_inlining_them(
    model,  # noqa: F811 - test_resident_decoder's fixture, over this module's ``built``
    tmp_path,
    monkeypatch,
) -> None:
    spec, encoder, host, on_device, sources = model
    external = tmp_path / "decoder" / "1" / "model.onnx"
    onnx_export.save_model(onnx.load(str(on_device.model_file)), external, external=True)
    data = Path(f"{external}.data")
    assert data.is_file()
    monkeypatch.chdir(tmp_path)  # not the model's directory: relative data paths resolve from there
    fixed = resident_layout.static_model(external, {name: 8 for name in _axes(external)})
    assert len(fixed) < data.stat().st_size  # the weights stay in the data file, not in the bytes
    decoder = resident_layout.ResidentDecoder(external, spec, "cpu")
    _same(*six_on_the_device(spec, encoder, host, decoder, sources))


def _axes(path: Path) -> set[str]:
    graph = onnx.load(str(path), load_external_data=False).graph
    values = [*graph.input, *graph.output]
    return {d.dim_param for v in values for d in v.type.tensor_type.shape.dim if d.dim_param}
