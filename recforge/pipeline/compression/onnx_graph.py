"""ONNX graph inspection and rewrites: weight bytes and dtypes, Gemm -> MatMul, int8 weight-only layers, which
MatMuls read the raw float inputs or two activations, and saving onnxruntime's optimised graph."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MATMUL_OPS = ("MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "QGemm", "DynamicQuantizeMatMul")
# ops a weight passes through between its initializer and the node that uses it
PASS_THROUGH_OPS = ("DequantizeLinear", "Cast", "Transpose", "Identity", "Reshape")


def load_onnx(path: str | Path) -> Any:
    import onnx

    return onnx.load(str(path))


def weight_bytes(onnx_path: str | Path) -> int:
    """Bytes of the weights: the sum of the ONNX initializers' tensor bytes (external data included)."""
    from onnx import numpy_helper

    return int(sum(numpy_helper.to_array(t, base_dir=str(Path(onnx_path).parent)).nbytes
                   for t in load_onnx(onnx_path).graph.initializer))


def weight_dtypes(onnx_path: str | Path) -> dict[str, dict[str, int]]:
    """Storage dtype of the weights by role: {"embedding": {"uint8": 8}, "matmul": {"int8": 5, ...}}.

    An embedding table is the data input of a Gather that comes from an initializer of rank 2; a matmul
    weight is the second input of a MatMul/Gemm (or their quantized forms) from an initializer. Both are
    followed back through DequantizeLinear, Cast, Transpose, Identity and Reshape to their initializer.
    """
    from onnx import helper

    model = load_onnx(onnx_path)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}

    def source(name: str) -> Any:
        for _ in range(8):
            if name in initializers:
                return initializers[name]
            node = producers.get(name)
            if node is None or node.op_type not in PASS_THROUGH_OPS or not node.input:
                return None
            name = node.input[0]
        return None

    result: dict[str, dict[str, int]] = {"embedding": {}, "matmul": {}}
    seen: set[tuple[str, str]] = set()
    for node in graph.node:
        if node.op_type == "Gather":
            role, tensor = "embedding", source(node.input[0])
            if tensor is None or len(tensor.dims) != 2:
                continue
        elif node.op_type in MATMUL_OPS:
            weight_index = 3 if node.op_type in ("QLinearMatMul", "QGemm") else 1
            if len(node.input) <= weight_index:
                continue
            role, tensor = "matmul", source(node.input[weight_index])
            if tensor is None:
                continue
        else:
            continue
        if (role, tensor.name) in seen:
            continue
        seen.add((role, tensor.name))
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type).name
        result[role][dtype] = result[role].get(dtype, 0) + 1
    return result


def set_nodes(graph: Any, nodes: list) -> None:
    """Replace ``graph``'s nodes and drop the initializers no node reads any more."""
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def gemm_to_matmul(src: str | Path, dst: str | Path) -> int:
    """Rewrite every Gemm with an initializer weight (alpha = beta = 1, no transA) as MatMul (+ Add for the
    bias); ORT's dynamic quantizer quantizes MatMul but not Gemm. Returns the number of Gemms rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    model = load_onnx(src)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type == "Gemm" and len(node.input) >= 2 and node.input[1] in initializers
                and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)):
            weight = numpy_helper.to_array(initializers[node.input[1]])
            if attrs.get("transB", 0):
                weight = weight.T
            weight_name = f"{node.input[1]}_matmul_{rewritten}"
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), weight_name))
            has_bias = len(node.input) > 2 and node.input[2]
            product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
            nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [product], name=f"{node.name}_mm"))
            if has_bias:
                nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                              name=f"{node.name}_bias"))
            rewritten += 1
        else:
            nodes.append(node)
    set_nodes(graph, nodes)
    onnx.save(model, str(dst))
    return rewritten


def int8_weight_only(src: str | Path, dst: str | Path, node_names: Sequence[str]) -> list[str]:
    """Store the weight of each named MatMul/Gemm as int8 (symmetric, per output channel) behind a
    DequantizeLinear, so the node keeps computing in float on float activations. Returns the weights converted."""
    import onnx
    from onnx import helper, numpy_helper

    model = load_onnx(src)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    wanted = set(node_names)
    converted, new_nodes = [], []
    for node in graph.node:
        if node.name in wanted and node.op_type in ("MatMul", "Gemm") and node.input[1] in initializers:
            weight = numpy_helper.to_array(initializers[node.input[1]])
            if weight.dtype != np.float32 or weight.ndim != 2:
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            axis = 0 if node.op_type == "Gemm" and attrs.get("transB", 0) else 1  # the output-channel axis
            scale = np.abs(weight).max(axis=1 - axis) / 127.0
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            shape = (-1, 1) if axis == 0 else (1, -1)
            quantized = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
            name = node.input[1]
            graph.initializer.extend([numpy_helper.from_array(quantized, f"{name}_int8"),
                                      numpy_helper.from_array(scale, f"{name}_int8_scale")])
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_int8_scale"],
                                              [f"{name}_dequantized"], name=f"{name}_DequantizeLinear", axis=axis))
            node.input[1] = f"{name}_dequantized"
            converted.append(name)
    if converted:
        # DequantizeLinear reads initializers only: putting it first is topological
        set_nodes(graph, new_nodes + list(graph.node))
    onnx.save(model, str(dst))
    return converted


def float_input_layers(onnx_path: str | Path) -> list[str]:
    """Names of the MatMul/Gemm nodes that the float graph inputs (the raw dense features) reach without
    passing another MatMul/Gemm (through Concat, Reshape...)."""
    import onnx

    graph = load_onnx(onnx_path).graph
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    frontier = [i.name for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    seen, found = set(frontier), []
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.op_type in ("MatMul", "Gemm"):
                if node.name not in found:
                    found.append(node.name)
                continue
            for out in node.output:
                if out not in seen:
                    seen.add(out)
                    frontier.append(out)
    return found


def activation_matmuls(onnx_path: str | Path) -> list[str]:
    """Names of the MatMul nodes without a constant weight (e.g. DLRM's dot interaction, a batched matmul of
    activations): quantizing both operands and the Gram matrix costs accuracy and saves no weight bytes."""
    graph = load_onnx(onnx_path).graph
    initializers = {t.name for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}

    def constant(name: str) -> bool:
        while name not in initializers:
            node = producers.get(name)
            if node is None or node.op_type not in PASS_THROUGH_OPS:
                return False
            name = node.input[0]
        return True

    return [n.name for n in graph.node if n.op_type == "MatMul" and not constant(n.input[1])]


def optimize_onnx(src: str | Path, dst: str | Path, level: str = "extended") -> Path:
    """Save the graph onnxruntime runs after its optimisations (``SessionOptions.optimized_model_filepath``).

    "extended" fuses (Gemm+Relu, MatMul+Add...) with hardware-independent rewrites; "all" adds CPU-layout
    transforms that the ORT docs advise against saving for use on another machine.
    """
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[level]
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return Path(dst)
