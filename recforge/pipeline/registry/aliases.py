"""Moving the ``champion-<target>`` / ``previous-<target>`` aliases of a registered model, and their history.

:func:`promote_if_better` moves ``champion-<target>`` to a new version when the policy's :func:`judge` blesses it;
the champion it replaces gets ``previous-<target>`` (for rollback). The incumbent's LBT is the one tagged on its
version when it was registered: nothing is re-measured, so two profiles from different nights compare only roughly
(the hosts are recorded beside them), and two test AUCs of different nights are measured on different test days.
:func:`rollback_alias` walks ``champion-<target>`` back one champion at a time.

Every alias move is appended to the alias history: the registered-model tag ``recforge.alias_history`` (JSON list,
the newest entries, for programs), the registered model's description (a markdown table, for people) and the local
file ``$RECFORGE_HOME/registry/alias_history.jsonl``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

from recforge.contracts import tags as T
from recforge.contracts.registry import CHAMPION, PREVIOUS, alias, mlflow_client, model_aliases
from recforge.core import config
from recforge.core.errors import ConfigError
from recforge.pipeline.registry.description import model_description
from recforge.pipeline.registry.policy import Blessing, RegisterConfig, judge

log = logging.getLogger(__name__)

HISTORY_TAG_ENTRIES = 200  # the newest entries kept in the registered-model tag; the JSONL file keeps all


def now() -> str:
    """The time of an alias move (an audit record of when it happened, not a data partition)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def history_path() -> Path:
    return config.recforge_home() / "registry" / "alias_history.jsonl"


def alias_history(model: str, target: str | None = None) -> list[dict[str, Any]]:
    """The alias moves of ``model`` (oldest first) from its registry tag, optionally of one target's aliases."""
    tags = mlflow_client().get_registered_model(model).tags
    entries = json.loads(tags.get(T.ALIAS_HISTORY) or "[]")
    if target is None:
        return entries
    names = {alias(CHAMPION, target), alias(PREVIOUS, target)}
    return [e for e in entries if e["alias"] in names]


def move_alias(client, model: str, name: str, to_version: str | None, *, reason: str, dag_run_id: str,
               action: str) -> dict[str, Any] | None:
    """Point alias ``name`` at ``to_version`` (None: remove it) and record the move; None when nothing moved."""
    from_version = model_aliases(client, model).get(name)
    if from_version == to_version:
        return None
    if to_version is None:
        client.delete_registered_model_alias(model, name)
    else:
        client.set_registered_model_alias(model, name, to_version)
    entry = {"time": now(), "model": model, "alias": name, "from_version": from_version, "to_version": to_version,
             "action": action, "reason": reason, "dag_run_id": dag_run_id}
    entries = json.loads(client.get_registered_model(model).tags.get(T.ALIAS_HISTORY) or "[]")
    entries.append(entry)
    client.set_registered_model_tag(model, T.ALIAS_HISTORY, json.dumps(entries[-HISTORY_TAG_ENTRIES:]))
    family = client.get_registered_model(model).tags.get(T.FAMILY, model)
    client.update_registered_model(model, description=model_description(family, model_aliases(client, model),
                                                                        entries))
    path = history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")
    log.info("%s: alias %s %s -> %s (%s)", model, name, from_version or "(none)", to_version or "(none)", reason)
    return entry


def promote_if_better(model: str, version: str, target: str, *, cfg: RegisterConfig | None = None,
                      dag_run_id: str = "") -> Blessing:
    """Judge ``version`` against ``champion-<target>``; when it wins, the champion becomes ``previous-<target>``
    and ``version`` the champion. The blessing is tagged on the version either way.

    Rerunning it for the version that is already champion changes nothing and returns the recorded blessing."""
    cfg = cfg or RegisterConfig()
    client = mlflow_client()
    champion_alias, previous_alias = alias(CHAMPION, target), alias(PREVIOUS, target)
    new = client.get_model_version(model, version)
    if new.tags.get(T.TARGET) != target:
        raise ConfigError(f"{model} v{version} is registered for target {new.tags.get(T.TARGET)!r}, "
                          f"not {target!r}")
    incumbent_version = model_aliases(client, model).get(champion_alias)
    if incumbent_version == version:  # a rerun after the promotion, or an alias set by hand
        recorded = Blessing.from_tags(new.tags)
        if recorded is not None and recorded.champion:
            return recorded
        return Blessing("already_champion", f"v{version} is {champion_alias} already", version=version,
                        dag_run_id=dag_run_id, rerun=True)
    incumbent_tags = client.get_model_version(model, incumbent_version).tags if incumbent_version else None
    if rolled_back := new.tags.get(T.ROLLED_BACK):
        # a retried DAG run must not undo a rollback; a person can still move the alias by hand
        blessing = Blessing("kept_incumbent", f"v{version} was rolled back ({rolled_back}); it is not promoted "
                            "again automatically", version=version, compared_with=incumbent_version or "",
                            margin=cfg.margin, max_auc_drop=cfg.max_auc_drop, dag_run_id=dag_run_id)
    else:
        blessing = judge(new.tags, incumbent_version, incumbent_tags, cfg, version=version, dag_run_id=dag_run_id)
    for key, value in blessing.tags().items():
        client.set_model_version_tag(model, version, key, value)
    if blessing.champion:
        why = f"v{version} ({new.tags.get(T.VARIANT)}) became {champion_alias}"
        if incumbent_version:
            move_alias(client, model, previous_alias, incumbent_version, reason=why, dag_run_id=dag_run_id,
                       action="demote")
        move_alias(client, model, champion_alias, version, reason=f"{blessing.decision}: {blessing.reason}",
                   dag_run_id=dag_run_id, action="promote")
    else:
        log.info("%s v%s stays a candidate for %s: %s", model, version, target, blessing.reason)
    return blessing


def rollback_alias(model: str, target: str, *, reason: str = "rollback", dag_run_id: str = "") -> dict[str, Any]:
    """champion-<target> back to previous-<target>. ``previous-<target>`` then points at the champion before the
    restored one (from the alias history), or is removed: repeated rollbacks walk back one champion at a time.

    Returns {model, target, from_version, to_version, previous_version}. ConfigError when there is no previous."""
    client = mlflow_client()
    champion_alias, previous_alias = alias(CHAMPION, target), alias(PREVIOUS, target)
    aliases = model_aliases(client, model)
    restored = aliases.get(previous_alias)
    if restored is None:
        raise ConfigError(f"{model} has no alias {previous_alias}: nothing to roll back to (champion is "
                          f"v{aliases.get(champion_alias, '-')}); move {champion_alias} by hand in MLflow if needed")
    bad = aliases.get(champion_alias)
    # the champion that the restored version replaced, the last time it became champion
    before = next((e["from_version"] for e in reversed(alias_history(model, target))
                   if e["alias"] == champion_alias and e["to_version"] == restored and e["action"] == "promote"),
                  None)
    before = None if before in (restored, bad) else before
    move_alias(client, model, champion_alias, restored, reason=f"rollback of v{bad}: {reason}",
               dag_run_id=dag_run_id, action="rollback")
    move_alias(client, model, previous_alias, before, reason=f"rollback of v{bad}: {reason}",
               dag_run_id=dag_run_id, action="rollback")
    if bad:
        client.set_model_version_tag(model, bad, T.ROLLED_BACK, f"{now()} {reason}")
    return {"model": model, "target": target, "from_version": bad, "to_version": restored, "previous_version": before}
