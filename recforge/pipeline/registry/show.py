"""What the registry holds, for a person: each registered model's champions, previous versions and alias history
(``python -m recforge.pipeline.registry.stage show``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from recforge.contracts import tags as T
from recforge.contracts.registry import CHAMPION, PREVIOUS, mlflow_client, tag_number
from recforge.core import config
from recforge.pipeline.registry.policy import RegisterConfig
from recforge.pipeline.registry.versions import lbt_text
from recforge.pipeline.training.tracking import registry_url


def show(*, families: Sequence[str] = (), target: str = "", history: int = 10,
         cfg: RegisterConfig | None = None) -> dict[str, Any]:
    """{model: {url (its page in the MLflow UI), targets: {target: {champion, previous: {version, variant, lbt_qps,
    auc, data_day}}}, history: [last entries]}}."""
    cfg = cfg or RegisterConfig()
    client = mlflow_client()
    models = client.search_registered_models(f"name LIKE '{cfg.model_prefix}%'", max_results=1000)
    out: dict[str, Any] = {}
    for m in sorted(models, key=lambda m: m.name):
        family = m.tags.get(T.FAMILY, "")
        if families and family not in families:
            continue
        targets: dict[str, dict] = {}
        for name, version in sorted(m.aliases.items()):
            kind, _, tgt = name.partition("-")
            if kind not in (CHAMPION, PREVIOUS) or (target and tgt != target):
                continue
            tags = client.get_model_version(m.name, version).tags
            targets.setdefault(tgt, {})[kind] = {"version": version, "variant": tags.get(T.VARIANT),
                                                 "lbt_qps": tag_number(tags, T.LBT_QPS),
                                                 "lbt_capped": tags.get(T.LBT_CAPPED) == "True",
                                                 "auc": tag_number(tags, T.AUC), "data_day": tags.get(T.DATA_DAY)}
        entries = json.loads(m.tags.get(T.ALIAS_HISTORY) or "[]")
        if target:
            entries = [e for e in entries if e["alias"].endswith(f"-{target}")]
        out[m.name] = {"url": registry_url(config.tracking_uri(), m.name), "targets": targets,
                       "history": entries[-history:] if history else []}
    return out


def format_show(state: Mapping[str, Any]) -> str:
    """:func:`show`'s state as lines: per model its aliases, its last alias moves and its page in the MLflow UI."""
    if not state:
        return "no registered RecForge models"
    lines = []
    for model, s in state.items():
        lines.append(f"{model}")
        for tgt, t in sorted(s["targets"].items()):
            for kind in (CHAMPION, PREVIOUS):
                if kind in t:
                    v = t[kind]
                    lbt = "-" if v["lbt_qps"] is None else lbt_text(v["lbt_qps"], v.get("lbt_capped", False))
                    auc = "-" if v["auc"] is None else f"{v['auc']:.4f}"
                    lines.append(f"  {kind}-{tgt}: v{v['version']} {v['variant']} (LBT {lbt}, AUC {auc}, "
                                 f"data {v['data_day']})")
        for e in s["history"]:
            lines.append(f"    {e['time']} {e['alias']}: v{e['from_version'] or '-'} -> v{e['to_version'] or '-'} "
                         f"[{e['action']}, {e['dag_run_id'] or 'cli'}] {e['reason']}")
        if s.get("url"):
            lines.append(f"  in the MLflow UI: {s['url']}")
    return "\n".join(lines)
