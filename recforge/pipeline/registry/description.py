"""The registered model's description, for a person reading the MLflow registry: what the model is, its aliases
now, and its alias history as a markdown table (the ``recforge.alias_history`` tag keeps the same moves as JSON for
programs). Names with angle brackets are written as code (`` `champion-<target>` ``): raw, the UI's markdown
renderer would take ``<target>`` for an HTML tag and drop it."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

HISTORY_ROWS = 20  # the newest alias moves shown in the description


def cell(value: Any) -> str:
    """A markdown table cell: HTML-escaped (no tag swallowed), pipes escaped, on one line."""
    text = "—" if value in (None, "") else " ".join(str(value).split())
    return html.escape(text, quote=False).replace("|", "\\|")


def model_description(family: str, aliases: Mapping[str, str], entries: Sequence[Mapping[str, Any]]) -> str:
    """The description of registered model ``<prefix><family>``: its aliases (``{alias: version}``) and the newest
    alias moves of ``entries`` (the alias history, oldest first)."""
    lines = [f"RecForge **{family}**: per hardware target, the parity-passing compressed variant with the highest "
             "latency-bounded throughput (LBT). Aliases `champion-<target>` (served) and `previous-<target>` "
             "(rollback); each version's tags hold what to compare (AUC, ΔAUC, LBT, capped, size).", ""]
    if aliases:
        lines += ["**Aliases now**", "", "| alias | version |", "|---|---|"]
        lines += [f"| `{name}` | v{version} |" for name, version in sorted(aliases.items())]
        lines.append("")
    if entries:
        lines += [f"**Alias history** (newest first, last {min(len(entries), HISTORY_ROWS)} of {len(entries)} moves; "
                  "all moves: `python -m recforge.pipeline.registry.stage show`)", "",
                  "| time (UTC) | alias | from | to | action | reason |", "|---|---|---|---|---|---|"]
        for e in list(reversed(entries))[:HISTORY_ROWS]:
            lines.append(f"| {cell(e.get('time'))} | `{e['alias']}` | "
                         f"{'v' + str(e['from_version']) if e.get('from_version') else '—'} | "
                         f"{'v' + str(e['to_version']) if e.get('to_version') else '—'} | {cell(e.get('action'))} | "
                         f"{cell(e.get('reason'))} |")
    return "\n".join(lines).rstrip() + "\n"
