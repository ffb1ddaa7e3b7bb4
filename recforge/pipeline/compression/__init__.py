"""Compression: ONNX variants of one trained model, each a *base* (an fp32 torch model) × a *precision*.

==============  =========================================================================================
module          role
==============  =========================================================================================
config          CompressConfig, base/precision/variant names, the precision table, CompressionError
prune           structured pruning of the hidden MLP units (torch-pruning, L2 magnitude)
distill         knowledge distillation (fine-tuning pruned models, training students) and student widths
quantize        INT8 dynamic, INT8 static (QDQ) and FP16 conversions of an ONNX file (onnxruntime)
table_quant     rowwise int8/int4 embedding tables written into the ONNX graph (emb_int8, emb_int4)
onnx_graph      ONNX graph inspection and rewrites (weight bytes/dtypes, Gemm -> MatMul, weight-only int8)
measure         parameters, MACs per item, ONNX-vs-torch parity, latency
model_folder    loading a trained model folder, writing a base as one
variants        building every base and precision of a model (``build_base_variants``, ``compress_model``)
cli             ``python -m recforge.pipeline.compression --help``
==============  =========================================================================================
"""
