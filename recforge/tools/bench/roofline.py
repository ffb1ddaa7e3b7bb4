"""Work per item (FLOPs and bytes moved) and the roofline: the items/s this machine's measured peaks allow; for the
lookup-bound synthetic models, the physical limit from the measured gather rate and GEMM peak."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from recforge.core.errors import ConfigError
from recforge.tools.hw_limits import HardwareLimits, item_limit, lookup_item_limit

ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "int8_dynamic": 1, "int8_static": 1, "int8": 1}


def embedding_elements_per_item(model: Any, inputs: Mapping[str, np.ndarray], rows: int = 64) -> tuple[float, int]:
    """(embedding values gathered per item, embedding parameters): every nn.Embedding's looked-up ids x its
    dimension, counted with forward hooks on ``rows`` real rows (padding slots count: they are gathered too)."""
    import torch
    from torch import nn

    counted = [0]
    hooks = []
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    for table in tables:
        hooks.append(table.register_forward_hook(
            lambda module, args, out: counted.__setitem__(0, counted[0] + args[0].numel() * module.embedding_dim)))
    try:
        with torch.no_grad():
            model(**{k: torch.from_numpy(np.ascontiguousarray(v[:rows])) for k, v in inputs.items()})
    finally:
        for hook in hooks:
            hook.remove()
    return counted[0] / rows, sum(t.weight.numel() for t in tables)


def work_per_item(model: Any, inputs: Mapping[str, np.ndarray], macs_per_item: float, precision: str,
                  sub_batch: int) -> dict[str, float]:
    """FLOPs (2 x MACs) and bytes per item: embedding values gathered + every other weight once per sub-batch,
    at the precision's element size (int8 variants store tables and MLP weights in 8 bits)."""
    element = ELEMENT_BYTES.get(precision, 4)
    gathered, embedding_params = embedding_elements_per_item(model, inputs)
    dense_params = sum(p.numel() for p in model.parameters()) - embedding_params
    return {"flops_per_item": 2.0 * macs_per_item,
            "bytes_per_item": element * (gathered + dense_params / max(1, sub_batch)),
            "embedding_bytes_per_item": element * gathered, "element_bytes": element}


def roofline(work: Mapping[str, float], limits: HardwareLimits, precision: str, measured_items_per_s: float) -> dict:
    limit = item_limit(work["flops_per_item"], work["bytes_per_item"], limits.peak_ops(precision),
                       limits.bandwidth_bytes_per_s)
    return {**limit, "measured_items_per_s": measured_items_per_s,
            "fraction_of_limit": measured_items_per_s / limit["items_per_s"]}



def lookup_roofline(spec: Any, table_precision: str, mlp_precision: str, limits: HardwareLimits,
                    measured_items_per_s: float) -> dict:
    """The physical limit of a synthetic model (a ``recforge.models.synthetic.JaggedTables`` spec with its
    ``mlp_macs_per_item``: an RMC, MT-WnD or DIEN) whose tables are stored in
    ``table_precision`` and MLPs run in ``mlp_precision``: items/s = 1 / max(lookups per item / the measured gather
    rate of such rows, 2·MACs per item / the GEMM peak of that precision), and the share of it measured."""
    rate = limits.gather_rate(table_precision, spec.embedding_dim)
    if not rate:
        raise ConfigError(f"no gather rate measured for {table_precision} rows of {spec.embedding_dim} values; "
                          "measure it (recforge.tools.hw_limits.measure_gather_rates) before the roofline")
    limit = lookup_item_limit(spec.lookups_per_item, rate, 2.0 * spec.mlp_macs_per_item,
                              limits.peak_ops(mlp_precision))
    return {**limit, "table_precision": table_precision, "mlp_precision": mlp_precision,
            "measured_items_per_s": measured_items_per_s,
            "fraction_of_limit": measured_items_per_s / limit["items_per_s"]}
