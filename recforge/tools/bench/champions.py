"""The registry's champions beside the bench's choices: which variant ``champion-cpu-onnxruntime`` serves per family
(``report.champion_lines`` says why the bench's RecForge variant may differ from it)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from recforge.contracts.registry import CHAMPION, alias, champion
from recforge.contracts.targets import CPU_ONNXRUNTIME
from recforge.core.errors import RecForgeError, first_line
from recforge.pipeline.registry.policy import model_name
from recforge.tools.bench.mlflow_log import tracking_server_reachable

log = logging.getLogger(__name__)

TARGET = CPU_ONNXRUNTIME  # the target the bench measures its variants on (onnxruntime in this process)


def registry_champions(families: Sequence[str]) -> dict[str, dict]:
    """{family: {"alias", "version", "variant", "lbt_qps"} or {"alias", "missing": why}}; {} without MLflow."""
    if not tracking_server_reachable():
        return {}
    out = {}
    for family in families:
        name = alias(CHAMPION, TARGET)
        try:
            info = champion(model_name(family), TARGET, with_profile=False)
            out[family] = {"alias": name, "version": info["version"], "variant": info["variant"],
                           "lbt_qps": info["lbt_qps"]}
        except (RecForgeError, Exception) as err:  # noqa: BLE001 - no champion only costs the explanation
            out[family] = {"alias": name, "missing": first_line(err, 160)}
    return out
