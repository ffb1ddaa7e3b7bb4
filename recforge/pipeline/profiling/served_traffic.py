"""The served traffic as the night's profiling load: the newest traffic profile the fleet recorded in MLflow
(``recforge.contracts.traffic``; ``python -m recforge.serving.elastic.traffic record``) when it is recent enough,
and its size sample as the sizes file the load generator replays.

:func:`plan_traffic` runs at plan time (``stage.plan_profiles``) and gives the entry every planned job carries
(``job["traffic"]``: the traffic run id, window, requests, peak and mean rate); :func:`traffic_sizes` turns that
entry into the profiler's ``sizes`` on the worker that profiles the job (the sample is fetched from the run's
artifact, so a worker without the planner's disk gets the same sizes). The entry is also written into each
profile's ``load.traffic``, so a profile says which traffic it was measured under and at what observed peak.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recforge.contracts import tags
from recforge.contracts.traffic import (
    ARTIFACT_PATH,
    TrafficProfile,
    load_traffic,
    parse_time,
    traffic_experiment,
    write_size_sample,
)
from recforge.core.errors import DataError, first_line
from recforge.pipeline.profiling.stage_config import ProfileStageConfig

log = logging.getLogger(__name__)
CANDIDATE_RUNS = 20  # the newest traffic runs (by start time) among which the newest recording is chosen


@dataclass(frozen=True)
class TrafficChoice:
    """What plan time decided: the traffic profile to use (None: the default sizes) and why, in one line."""

    entry: dict[str, Any] | None
    reason: str


def traffic_entry(run_id: str, profile: TrafficProfile) -> dict[str, Any]:
    """The job's and the profile's ``traffic`` record of a traffic profile."""
    return {"run_id": run_id, "recorded_from": profile.recorded_from, "recorded_to": profile.recorded_to,
            "requests": profile.requests, "peak_qps": round(profile.peak_qps, 4),
            "peak_window_s": profile.peak_window_s, "mean_qps": round(profile.mean_qps, 4),
            "mean_items_per_query": round(profile.mean_items_per_query, 4)}


def download_traffic(client, run_id: str) -> TrafficProfile:
    """The traffic profile logged on ``run_id``; a one-line DataError when it is missing or corrupt."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, ARTIFACT_PATH, tmp)
        except Exception as err:  # noqa: BLE001 - MlflowException or OSError; imported lazily
            raise DataError(f"traffic run {run_id} has no {ARTIFACT_PATH} ({first_line(err)})") from None
        return load_traffic(path)


def plan_traffic(client, max_age_days: float, now: dt.datetime | None = None) -> TrafficChoice:
    """The newest traffic profile (by ``recorded_to``) of the traffic experiment, unless it ended more than
    ``max_age_days`` before ``now``; a corrupt newest one is reported and the defaults used."""
    now = now or dt.datetime.now(dt.UTC)
    name = traffic_experiment()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return TrafficChoice(None, f"no traffic profile (no MLflow experiment {name!r})")
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`{tags.STAGE}` = 'traffic' and attributes.status = 'FINISHED'",
                              order_by=["start_time DESC"], max_results=CANDIDATE_RUNS)
    dated = []
    for run in runs:
        try:
            dated.append((parse_time(run.data.tags.get(tags.TRAFFIC_RECORDED_TO), "recorded_to",
                                     f"traffic run {run.info.run_id}"), run.info.run_id))
        except DataError as err:
            log.warning("ignoring %s", first_line(err))
    if not dated:
        return TrafficChoice(None, f"no traffic profile in MLflow experiment {name!r}")
    recorded_to, run_id = max(dated)
    age_days = (now - recorded_to).total_seconds() / 86_400
    if age_days > max_age_days:
        return TrafficChoice(None, f"the newest traffic profile (run {run_id}, recorded until "
                                   f"{recorded_to.isoformat()}) is {age_days:.1f} days old, older than "
                                   f"traffic_max_age_days {max_age_days:g}")
    try:
        profile = download_traffic(client, run_id)
    except DataError as err:
        return TrafficChoice(None, f"the newest traffic profile cannot be used: {first_line(err)}")
    entry = traffic_entry(run_id, profile)
    return TrafficChoice(entry, f"traffic profile {run_id} ({profile.requests} requests {profile.recorded_from} .. "
                                f"{profile.recorded_to}, peak {profile.peak_qps:.2f} qps, "
                                f"{profile.mean_items_per_query:.0f} items/query)")


def traffic_sizes(client, entry: Mapping[str, Any], folder: str | Path) -> str:
    """The profiler's ``sizes`` for the traffic ``entry``: its size sample written to
    ``<folder>/traffic-<run id>.sizes`` (fetched from the run once; a rerun reuses the file)."""
    path = Path(folder) / f"traffic-{entry['run_id']}.sizes"
    if path.is_file() and path.stat().st_size:
        return str(path)
    return write_size_sample(download_traffic(client, entry["run_id"]), path, label=f"MLflow run {entry['run_id']}")


def choose_traffic(client, cfg: ProfileStageConfig) -> TrafficChoice:
    """The night's traffic: none with ``traffic: none`` or an explicit ``profile.sizes``, else :func:`plan_traffic`.
    The reason names the sizes the profiles will use."""
    if cfg.traffic == "none":
        return TrafficChoice(None, f"default query sizes {cfg.profile_config().sizes!r} (traffic: none)")
    if "sizes" in cfg.profile:
        return TrafficChoice(None, f"query sizes {cfg.profile['sizes']!r} as configured (profile.sizes is given, "
                                   "so no traffic profile is used)")
    choice = plan_traffic(client, cfg.traffic_max_age_days)
    if choice.entry is None:
        return TrafficChoice(None, f"default query sizes {cfg.profile_config().sizes!r}: {choice.reason}")
    return TrafficChoice(choice.entry, f"query sizes served, from {choice.reason}")
