"""The promotion policy of the registry stage, as pure logic (no MLflow): which variant to register and whether
it replaces the champion.

Per (model family, hardware target), :func:`select_best` picks the parity-passing variant with the highest
latency-bounded throughput (LBT); ties go to the higher test AUC, then to the smaller model. :func:`judge` decides
whether a registered version (its tags) replaces the champion of its target: when there is no champion yet, or
when its LBT beats the champion's by ``margin`` (relative) and its AUC is at most ``max_auc_drop`` below the
champion's. The decision and its figures (a :class:`Blessing`) are tagged on the version.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from recforge.contracts import tags as T
from recforge.contracts.registry import MODEL_PREFIX, tag_number
from recforge.core.config import Annotated, Field, config_from_dict, typed_config

# blessing decisions that leave the new version as champion
CHAMPION_DECISIONS = ("first_champion", "promoted")


@typed_config
class RegisterConfig:
    """How versions are named and promoted (``register_models`` DAG params; unknown keys are refused)."""

    # registered model = <prefix><family>
    model_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]*$")] = MODEL_PREFIX
    # relative LBT gain over the champion needed to move champion-<target> (0.05 = 5% more LBT)
    margin: Annotated[float, Field(ge=0, lt=10)] = 0.05
    # the new version's test AUC may be at most this much below the champion's
    max_auc_drop: Annotated[float, Field(ge=0, le=1)] = 0.001
    families: tuple[str, ...] = ()  # empty: every profiled family

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RegisterConfig:
        return config_from_dict(cls, dict(d or {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_name(family: str, cfg: RegisterConfig | None = None) -> str:
    """The registered model of ``family``: ``<model_prefix><family>`` (``recforge-dlrm``)."""
    return f"{(cfg or RegisterConfig()).model_prefix}{family}"


def tag_value(value: Any) -> str:
    """A tag's text: floats rounded to 6 digits, dicts and lists as sorted JSON, None as ""."""
    if isinstance(value, float):
        return repr(round(value, 6))
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


# --------------------------------------------------------------------------------------------------------------
# Selection


@dataclass(frozen=True)
class ProfiledVariant:
    """One profile document of a variant, with the facts of its variant run that selection needs."""

    profile: Mapping[str, Any]
    parity: str = "passed"  # the variant run's parity tag
    size_bytes: float | None = None  # the variant run's size_bytes metric (weights)
    artifact: str = ""  # where the profile lies on the variant run, e.g. profile/cpu-onnxruntime.json

    @property
    def family(self) -> str:
        return self.profile["model_family"]

    @property
    def variant(self) -> str:
        return self.profile["variant"]

    @property
    def run_id(self) -> str:
        return self.profile["variant_run_id"]

    @property
    def target(self) -> str:
        return self.profile["target"]["name"]

    @property
    def lbt_qps(self) -> float:
        return float(self.profile["latency_bounded_throughput_qps"])

    @property
    def auc(self) -> float:
        return float(self.profile["accuracy"]["auc"])

    def eligible(self) -> tuple[bool, str]:
        """(True, "") when this variant may be registered for its target, else (False, why)."""
        if self.parity != "passed":
            return False, f"parity {self.parity or 'unknown'}: only variants that passed the parity gate register"
        if self.lbt_qps <= 0:
            return False, "met the latency SLO at no offered rate (LBT 0)"
        return True, ""

    def sort_key(self) -> tuple:
        """Best first: highest LBT, then highest AUC, then smallest, then name (for a stable order)."""
        size = self.size_bytes if self.size_bytes is not None and math.isfinite(self.size_bytes) else math.inf
        return (-self.lbt_qps, -self.auc, size, self.variant)


def select_best(variants: Sequence[ProfiledVariant]) -> dict[tuple[str, str], ProfiledVariant]:
    """{(family, target): the variant to register}: among eligible variants (parity passed, LBT > 0), the highest
    latency-bounded throughput; ties go to the higher AUC, then to the smaller model."""
    best: dict[tuple[str, str], ProfiledVariant] = {}
    for v in variants:
        if not v.eligible()[0]:
            continue
        key = (v.family, v.target)
        if key not in best or v.sort_key() < best[key].sort_key():
            best[key] = v
    return dict(sorted(best.items()))


# --------------------------------------------------------------------------------------------------------------
# Judging a new version against the champion


@dataclass(frozen=True)
class Blessing:
    """The recorded comparison of a new version against the champion of its target."""

    decision: str  # first_champion | promoted | kept_incumbent | already_champion
    reason: str
    version: str
    compared_with: str = ""  # the incumbent's version ("" when there was none)
    new_lbt_qps: float | None = None
    incumbent_lbt_qps: float | None = None
    lbt_gain: float | None = None  # new / incumbent - 1
    new_auc: float | None = None
    incumbent_auc: float | None = None
    margin: float = 0.0
    max_auc_drop: float = 0.0
    new_host: str = ""
    incumbent_host: str = ""
    dag_run_id: str = ""
    rerun: bool = False  # True: decided by an earlier attempt of this registration, read back from the tags

    @property
    def champion(self) -> bool:
        return self.decision in CHAMPION_DECISIONS

    def tags(self) -> dict[str, str]:
        fields = dataclasses.asdict(self)
        fields.pop("rerun")
        return {T.BLESSING_PREFIX + k: tag_value(v) for k, v in fields.items() if v not in (None, "")}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Blessing | None:
        values = {k.removeprefix(T.BLESSING_PREFIX): v for k, v in tags.items() if k.startswith(T.BLESSING_PREFIX)}
        if "decision" not in values:
            return None
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = values.get(f.name)
            if raw is None or f.name == "rerun":
                continue
            kwargs[f.name] = float(raw) if f.type in ("float | None", "float") and raw else raw
        return cls(**kwargs, rerun=True)


def legacy_apparatus(kind: str) -> str:
    """Where the load generator ran for a profile from before ``target.apparatus`` was recorded: in the serving
    process for the onnxruntime targets, on the server's CPUs for a Triton server."""
    return "shared" if kind.endswith("-triton") else "in-process"


def judge(new_tags: Mapping[str, str], incumbent_version: str | None, incumbent_tags: Mapping[str, str] | None,
          cfg: RegisterConfig, *, version: str, dag_run_id: str = "") -> Blessing:
    """Whether a new version (its tags) should replace the incumbent champion (its tags), and why."""
    new_lbt, new_auc = tag_number(new_tags, T.LBT_QPS), tag_number(new_tags, T.AUC)
    common = {"version": version, "new_lbt_qps": new_lbt, "new_auc": new_auc, "margin": cfg.margin,
              "max_auc_drop": cfg.max_auc_drop, "new_host": new_tags.get(T.PROFILE_HOST, ""),
              "dag_run_id": dag_run_id}
    if incumbent_version is None:
        return Blessing("first_champion", "no champion for this target yet", **common)
    incumbent_tags = incumbent_tags or {}
    inc_lbt, inc_auc = tag_number(incumbent_tags, T.LBT_QPS), tag_number(incumbent_tags, T.AUC)
    common |= {"compared_with": incumbent_version, "incumbent_lbt_qps": inc_lbt, "incumbent_auc": inc_auc,
               "incumbent_host": incumbent_tags.get(T.PROFILE_HOST, "")}
    if new_lbt is None or new_auc is None:
        return Blessing("kept_incumbent", f"the new version has no {T.LBT_QPS}/{T.AUC} tags", **common)
    if inc_lbt is None or inc_auc is None or inc_lbt <= 0:
        return Blessing("kept_incumbent", f"incumbent v{incumbent_version} has no usable {T.LBT_QPS}/{T.AUC} "
                        "tags to compare with; compare by hand and move the alias with MLflow", **common)
    slo = tag_number(new_tags, T.P95_TARGET_MS), tag_number(incumbent_tags, T.P95_TARGET_MS)
    if None not in slo and slo[0] != slo[1]:
        return Blessing("kept_incumbent", f"profiled under another SLO (p95 <= {slo[0]} ms) than incumbent "
                        f"v{incumbent_version} (p95 <= {slo[1]} ms): LBTs do not compare; compare by hand", **common)
    apparatus = [tags.get(T.PROFILE_APPARATUS) or legacy_apparatus(tags.get(T.TARGET_KIND, ""))
                 for tags in (new_tags, incumbent_tags)]
    if apparatus[0] != apparatus[1]:
        return Blessing("kept_incumbent", f"profiled with another apparatus ({apparatus[0]}) than incumbent "
                        f"v{incumbent_version} ({apparatus[1]}): LBTs do not compare; re-profile the incumbent or "
                        "compare by hand and move the alias with MLflow", **common)
    gain = new_lbt / inc_lbt - 1
    common["lbt_gain"] = gain
    hosts = common["new_host"], common["incumbent_host"]
    caveat = "" if hosts[0] == hosts[1] else f" (profiled on different hosts {hosts[1]} -> {hosts[0]}: rough)"
    lbt_text = f"LBT {new_lbt:.1f} qps is {gain:+.1%} vs v{incumbent_version}'s {inc_lbt:.1f} qps{caveat}"
    if gain < cfg.margin:
        return Blessing("kept_incumbent", f"{lbt_text}, below the required {cfg.margin:+.1%} margin", **common)
    if new_auc < inc_auc - cfg.max_auc_drop:
        return Blessing("kept_incumbent", f"{lbt_text}, but AUC {new_auc:.4f} is {new_auc - inc_auc:+.4f} vs "
                        f"{inc_auc:.4f}, more than the allowed drop of {cfg.max_auc_drop}", **common)
    return Blessing("promoted", f"{lbt_text} (margin {cfg.margin:+.1%}), AUC {new_auc:.4f} vs {inc_auc:.4f} "
                    f"(allowed drop {cfg.max_auc_drop})", **common)
