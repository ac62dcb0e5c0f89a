"""Versions that export writes and serving reads (no heavy imports: the gateway imports this)."""

EXPORT_VERSION = 5  # bump when the export changes what it writes, so old entries are rebuilt
# 2: the Transformer decoder takes grouped rows (encoder inputs once per sentence, an axis of their own)
# 3: the Transformer decoder entries also hold the step with fused attention (model.fused.onnx)
# 4: the fused step also fuses each residual add with the norm after it (kiln.ai::AddLayerNorm)
# 5: the Transformer decoder reads its encoder inputs from a store of sentences (row_place), rows in
#    any order, instead of grouped rows
