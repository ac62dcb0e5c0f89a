"""Versions that export writes and serving reads (no heavy imports: the gateway imports this)."""

from __future__ import annotations

# every registered classifier (training.models.registry.list_models("classify"), a test keeps them equal)
CLASSIFIERS = (
    "alexnet",
    "densenet121",
    "googlenet",
    "lenet",
    "nin",
    "resnet18",
    "resnet34",
    "resnet50",
    "vgg11",
    "vgg16",
)
# every registered translator (list_models("translate")): training.translate takes no --models-from, so a
# model name Kiln's export wrote that is none of these is a classifier, the zoo's or one of the user's own
TRANSLATORS = ("gru_attention", "lstm_attention", "transformer")

EXPORT_VERSION = 12  # bump when the export changes what it writes, and say for which models in CHANGED

# What each version changed, and for which models (registry names, kiln.json's ``model.name``): an
# entry is stale only when a version after the one that wrote it changed what export writes for its
# model, so a bump for the Transformer neither rebuilds nor flags a classifier.
CHANGED: dict[int, tuple[tuple[str, ...], str]] = {
    2: (
        ("transformer",),
        "the Transformer decoder takes grouped rows (encoder inputs once per sentence, an axis of their own)",
    ),
    3: (
        ("transformer",),
        "the Transformer decoder entries also hold the step with fused attention (model.fused.onnx)",
    ),
    4: (
        ("transformer",),
        "the Transformer's fused step also fuses each residual add with the norm after it (kiln.ai::AddLayerNorm)",
    ),
    5: (
        ("transformer",),
        "the Transformer decoder reads its encoder inputs from a store of sentences (row_place), rows in any order, "
        "instead of grouped rows",
    ),
    6: (
        ("transformer",),
        "the Transformer encoder entry also holds the encoder with fused attention (model.fused.onnx: "
        "kiln.ai::EncoderSelfAttention, AddLayerNorm)",
    ),
    7: (
        ("transformer", "gru_attention", "lstm_attention"),
        "a translator's int8 entries quantize its encoder too (<name>_encoder_int8, gated with the decoder)",
    ),
    8: (
        ("transformer",),
        "the Transformer's fused encoder computes the real source positions only (packed rows), and its "
        "encoders give zero keys and values at padded positions",
    ),
    9: (
        ("transformer", "gru_attention", "lstm_attention"),
        "a translator's <name> entry declares and answers score (normalized) and raw_score beside translation, "
        "each [n, n_best]",
    ),
    10: (
        ("transformer", "gru_attention", "lstm_attention"),
        "a translator's tokenizers collapse whitespace runs and strip the ends as corpus cleaning did, so a "
        "client's raw text encodes to the ids training saw for its cleaned form",
    ),
    11: (
        CLASSIFIERS,
        "a classifier's int8 entry keeps its output nodes, back to the last product, in float32 (its probabilities were rounded to steps of "
        "1/255) and quantizes weights to 7 bits (8-bit products saturated on CPUs without VNNI)",
    ),
    12: (
        ("transformer",),
        "the Transformer's fused step takes each layer's q|k|v as one product into kiln.ai::StepAttentionQKV, "
        "which also gives the new cache entries, and its attentions read the boolean masks themselves "
        "(IndexedCrossAttentionMasked): 12 fewer nodes a step",
    ),
}


def changed(models: tuple[str, ...], model: str | None) -> bool:
    """Whether a change for ``models`` (a ``CHANGED`` entry) changed what export writes for ``model``: one
    for every registered classifier is one for export's classifier entries, so for a classifier of the
    user's own (``--models-from``, named as its module registers it) too."""
    if model in models:
        return True
    return model is not None and model not in TRANSLATORS and set(CLASSIFIERS) <= set(models)


def current_version(model: str | None) -> int:
    """The oldest export version whose entries of registry model ``model`` are current: the last version
    that changed what export writes for it (1, the first, when none did)."""
    return max((v for v, (models, _) in CHANGED.items() if changed(models, model)), default=1)


def changes_since(version: int, model: str | None) -> list[str]:
    """What export has changed for ``model`` since ``version`` wrote an entry of it (oldest first)."""
    return [
        f"{v}: {what}"
        for v, (models, what) in sorted(CHANGED.items())
        if v > version and changed(models, model)
    ]
