"""Airflow Assets that chain RecForge's DAGs (no DAG here).

``nightly_retrain`` emits one candidate asset per compressible model family; the compression DAG is
scheduled on them. The asset event's ``extra`` carries the URIs of the candidate (MLflow run,
ONNX model, local model folder), never model bytes; a family the night did not train gets an event
without them, which the compression DAG skips.
"""

from __future__ import annotations

from airflow.sdk import Asset

from recforge.models.families import FAMILIES  # torch-free: only the names

# the nightly's deep families and the opt-in ones (mt_wnd, dien: compressed on the nights whose params train them);
# not the logreg baseline
CANDIDATE_FAMILIES: tuple[str, ...] = tuple(name for name, family in FAMILIES.items()
                                         if family.compressible and not family.baseline)


def candidate_asset(family: str) -> Asset:
    return Asset(name=f"recforge_candidate_{family}", uri=f"recforge://candidates/{family}",
                 group="recforge-candidates")


CANDIDATE_ASSETS = {family: candidate_asset(family) for family in CANDIDATE_FAMILIES}

# Emitted by compress_and_validate: the variants that passed the parity gate, per family (for profiling).
VALIDATED_VARIANTS = Asset(name="recforge_validated_variants", uri="recforge://validated-variants",
                           group="recforge-variants")

# Emitted by profile_variants: the serving profiles of the validated variants, per family and target (for
# registration). Extra: {"families": {family: {"candidate_run_id", "profiles": [{variant, variant_run_id, target,
# path, lbt_qps, ...}]}}}; each profile JSON is also an artifact ``profile/<target>.json`` of its variant run.
PROFILES = Asset(name="recforge_profiles", uri="recforge://profiles", group="recforge-variants")
