"""Recording what the fleet served as a traffic profile (``recforge.contracts.traffic``) and logging it to MLflow,
where the next night's profiling takes its query sizes and peak rate from it (docs/profiling.md, "Feedback").

The source is the balancer's request log (``loadbalancer.requestlog``; the same records as
``traces.replay_request_log``): every inference request (POST) of the window, its arrival time and its items. The
log has no body, only the bytes HAProxy received (``%U``: request line, headers and body); a request's items are
recovered from the request the fleet's clients send (:class:`RequestSizer`): the request line (its path is logged),
their HTTP headers (measured through HAProxy: 146-149 bytes), then Triton's binary tensor extension
(``inference.triton.client.encode_request``): a JSON header of a near-constant length and each input's raw bytes, a
fixed number per item for a given feature spec.
Each request counts as a query: the fleet's clients send a query's items in one request (a client that splits
queries into sub-batches records sub-batch sizes).

Per node (:func:`node_figures`) it records what the node answered and its latency against the fleet's profile
(``capacity.NodeModel``): the p95 of the logged times (HAProxy's ``%Ta``: from accepting the request to the end of
the answer, so the balancer's queueing and the HTTP exchange are in it, as they are in the load generator's times
the profile was measured with) over the node's busiest ``PEAK_WINDOW_S``, against the p95 the profile predicts at
that window's rate and query mix.

CLI (``make fleet-traffic``)::

    python -m recforge.serving.elastic.traffic record [--since ISO] [--until ISO] [--fleet-dir DIR]
        [--log PATH] [--spec PATH | --bytes-per-item N] [--profile PATH] [--out traffic.json] [--no-mlflow]
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recforge.contracts import tags
from recforge.contracts.features import INPUT_NAMES, OUTPUT_NAME, FeatureSpec
from recforge.contracts.profile import read_profile
from recforge.contracts.registry import is_error, mlflow_client
from recforge.contracts.traffic import (
    ARTIFACT_PATH,
    MAX_ITEMS,
    MAX_SAMPLE,
    PEAK_WINDOW_S,
    SIZE_EDGES,
    TrafficProfile,
    peak_rate,
    save_traffic,
    traffic_experiment,
)
from recforge.core.cli import run_step
from recforge.core.errors import ConfigError, DataError, first_line
from recforge.inference.triton.client import encode_request
from recforge.serving.elastic.capacity import NodeModel
from recforge.serving.fleet.state import fleet_dir, profile_path, read_state
from recforge.serving.loadbalancer.requestlog import NO_SERVER, RequestRecord, parse_lines

MAX_CURVE_POINTS = 3600  # a longer recording's rate curve is averaged over whole seconds to keep this many points
# The headers the fleet's clients (inference.triton.keepalive: http.client) send with an inference request, as
# HAProxy's %U counts them: Host, Accept-Encoding, Content-Length, Inference-Header-Content-Length, Content-Type and
# the blank line (146-149 bytes measured through HAProxy 2.x, digits of the lengths varying)
CLIENT_HEADERS_BYTES = 148.0


@dataclass(frozen=True)
class RequestSizer:
    """Items of a request from its logged bytes: (bytes - ``header_bytes`` - the request line when
    ``counts_request_line``) / ``bytes_per_item``, rounded, in [1, 1024]."""

    bytes_per_item: float
    header_bytes: float = 0.0
    counts_request_line: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bytes_per_item) and self.bytes_per_item > 0):
            raise ConfigError(f"bytes_per_item must be > 0, got {self.bytes_per_item}")
        if not (math.isfinite(self.header_bytes) and self.header_bytes >= 0):
            raise ConfigError(f"header_bytes must be >= 0, got {self.header_bytes}")

    @classmethod
    def for_spec(cls, spec: FeatureSpec) -> RequestSizer:
        """The sizer of the requests the fleet's clients send for a model of ``spec``: the per-item bytes and the
        JSON header of a one-item request from ``encode_request`` itself, plus the HTTP head."""
        widths = {"sparse": spec.num_sparse, "genres": spec.genre_slots, "history": spec.history_length,
                  "dense": spec.num_dense}

        def body(n: int) -> tuple[bytes, int]:
            return encode_request({name: np.zeros((n, widths[name]), np.float32 if name == "dense" else np.int64)
                                   for name in INPUT_NAMES}, [OUTPUT_NAME])

        one, header = body(1)
        return cls(bytes_per_item=float(len(one) - header), header_bytes=header + CLIENT_HEADERS_BYTES,
                   counts_request_line=True)

    def items(self, request_bytes: int, path: str = "") -> int:
        """The items of a request of ``request_bytes`` logged bytes to ``path``."""
        head = self.header_bytes + (len(f"POST {path} HTTP/1.1\r\n") if self.counts_request_line else 0)
        return int(min(MAX_ITEMS, max(1, round((request_bytes - head) / self.bytes_per_item))))


def utc_iso(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).isoformat(timespec="seconds")


def parse_cli_time(text: str, name: str) -> float:
    """Epoch seconds of an ISO time (no offset: UTC); ConfigError naming ``name`` otherwise."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{name} {text!r} is not an ISO 8601 time (e.g. 2026-11-26T08:00:00+00:00)") from None
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()


def rate_curve(counts_per_s: np.ndarray) -> tuple[float, list[float]]:
    """(interval_s, mean rate of each interval) of per-second counts, averaged over whole seconds so that at most
    :data:`MAX_CURVE_POINTS` points remain."""
    width = max(1, math.ceil(counts_per_s.size / MAX_CURVE_POINTS))
    rates = [float(counts_per_s[i:i + width].sum()) / min(width, counts_per_s.size - i)
             for i in range(0, counts_per_s.size, width)]
    return float(width), rates


def node_figures(posts: Sequence[RequestRecord], sizes: np.ndarray, start: float, seconds: int,
                 model: NodeModel | None) -> dict[str, dict[str, float]]:
    """Per node, of the inference requests it answered (status 200) in the window of ``seconds`` from ``start``:
    ``requests``, ``p95_ms`` of their logged times, its busiest ``PEAK_WINDOW_S`` (``peak_qps``, ``peak_p95_ms``)
    and, with ``model``, the p95 the profile predicts at that rate and the window's query mix
    (``predicted_peak_p95_ms``) and ``peak_p95_vs_predicted``."""
    figures: dict[str, dict[str, float]] = {}
    width = max(1, min(int(PEAK_WINDOW_S), seconds))
    for name in sorted({r.node for r in posts if r.node != NO_SERVER}):
        answered = np.asarray([r.node == name and r.status == 200 and r.total_ms >= 0 for r in posts])
        if not answered.any():
            continue
        ms = np.asarray([r.total_ms for r in posts], dtype=float)[answered]
        second = np.minimum((np.asarray([r.accepted_at for r in posts])[answered] - start).astype(int), seconds - 1)
        in_window = np.convolve(np.bincount(second, minlength=seconds), np.ones(width), mode="valid")
        first = int(np.argmax(in_window))
        busiest = (second >= first) & (second < first + width)
        entry = {"requests": int(answered.sum()), "p95_ms": round(float(np.percentile(ms, 95)), 3),
                 "peak_qps": round(float(in_window[first]) / width, 4),
                 "peak_p95_ms": round(float(np.percentile(ms[busiest], 95)), 3)}
        if model is not None:
            cost_ratio = float(np.mean(model.query_cost(sizes[answered][busiest]))) / model.profile_cost
            predicted = float(model.latency_ms(entry["peak_qps"] / model.saturation_at(cost_ratio))[0])
            entry.update(predicted_peak_p95_ms=round(predicted, 3),
                         peak_p95_vs_predicted=round(entry["peak_p95_ms"] / predicted, 4))
        figures[name] = entry
    return figures


def record_traffic(records: Iterable[RequestRecord], sizer: RequestSizer, *, since: float | None = None,
                   until: float | None = None, source: str = "balancer request log", seed: int = 0,
                   model: NodeModel | None = None) -> TrafficProfile:
    """The traffic profile of the inference requests (POSTs) accepted in [``since``, ``until``) (epoch s; default:
    from the first to the last request; consecutive windows count each request once), with each node's figures
    (:func:`node_figures`; against ``model``'s predictions when given). DataError when the window holds no
    request."""
    posts = [r for r in records if r.method == "POST" and (since is None or r.accepted_at >= since)
             and (until is None or r.accepted_at < until)]
    window = f" between {utc_iso(since) if since else 'the start'} and {utc_iso(until) if until else 'the end'}"
    if not posts:
        raise DataError(f"{source} holds no inference request{window}; serve some traffic first (make fleet-up)")
    times = np.asarray([r.accepted_at for r in posts])
    sizes = np.asarray([sizer.items(r.request_bytes, r.path) for r in posts], dtype=np.int64)
    start = since if since is not None else float(times.min())
    end = until if until is not None else float(times.max())
    seconds = max(1, math.ceil(end - start))
    counts_per_s = np.bincount(np.minimum((times - start).astype(int), seconds - 1), minlength=seconds)
    interval_s, rates = rate_curve(counts_per_s)
    edges = np.asarray(SIZE_EDGES)
    bins = np.searchsorted(edges, sizes, side="right") - 1
    sample = np.random.default_rng(seed).choice(sizes, size=min(MAX_SAMPLE, sizes.size), replace=False)
    return TrafficProfile(
        recorded_from=utc_iso(start), recorded_to=utc_iso(end), requests=int(sizes.size),
        peak_qps=peak_rate(counts_per_s.tolist(), PEAK_WINDOW_S), peak_window_s=min(PEAK_WINDOW_S, float(seconds)),
        mean_qps=sizes.size / seconds, interval_s=interval_s, rate_qps=tuple(rates), size_edges=SIZE_EDGES,
        size_counts=tuple(int(c) for c in np.bincount(bins, minlength=edges.size - 1)),
        size_sample=tuple(int(s) for s in sample), source=source,
        nodes=node_figures(posts, sizes, start, seconds, model))


def log_traffic(profile: TrafficProfile, client=None) -> str:
    """Log ``profile`` as a run of the traffic experiment (artifact ``traffic/traffic.json``, params requests,
    peak_qps, mean_qps, window); returns the run id."""
    client = client or mlflow_client()
    name = traffic_experiment()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(
                name, tags={tags.EXPERIMENT_KIND: tags.MODEL_TRAINING_EXPERIMENT,
                            tags.RUN_NOTE: "What the fleet served: one run per recorded window (recforge-traffic "
                                           "documents); the nightly profiling takes its query sizes from the newest."})
        except Exception as err:  # noqa: BLE001 - MlflowException; another recorder created it meanwhile
            if not is_error(err, "RESOURCE_ALREADY_EXISTS"):
                raise
            experiment_id = client.get_experiment_by_name(name).experiment_id
    else:
        experiment_id = experiment.experiment_id
    run = client.create_run(experiment_id, run_name=f"traffic {profile.recorded_to}", tags={
        tags.STAGE: "traffic", tags.TRAFFIC_RECORDED_FROM: profile.recorded_from,
        tags.TRAFFIC_RECORDED_TO: profile.recorded_to, tags.TRAFFIC_SOURCE: profile.source[:4900],
        tags.RUN_NOTE: summary(profile)})
    run_id = run.info.run_id
    for key, value in {"requests": profile.requests, "peak_qps": round(profile.peak_qps, 3),
                       "mean_qps": round(profile.mean_qps, 3),
                       "window": f"{profile.recorded_from} .. {profile.recorded_to}"}.items():
        client.log_param(run_id, key, value)
    for node, figures in (profile.nodes or {}).items():  # e.g. node0.peak_p95_vs_predicted, comparable across runs
        for key, value in figures.items():
            client.log_metric(run_id, f"{node}.{key}", float(value))
    client.log_dict(run_id, profile.to_dict(), ARTIFACT_PATH)
    client.set_terminated(run_id)
    return run_id


def summary(profile: TrafficProfile) -> str:
    nodes = [f"{name} p95 {f['peak_p95_ms']:g} ms at its peak {f['peak_qps']:g} qps"
             + (f" (profile: {f['predicted_peak_p95_ms']:g} ms)" if "predicted_peak_p95_ms" in f else "")
             for name, f in (profile.nodes or {}).items()]
    return (f"{profile.requests} requests {profile.recorded_from} .. {profile.recorded_to}: peak "
            f"{profile.peak_qps:.2f} qps ({profile.peak_window_s:g} s), mean {profile.mean_qps:.2f} qps, "
            f"{profile.mean_items_per_query:.0f} items/query" + (f"; {'; '.join(nodes)}" if nodes else ""))


def fleet_inputs(root: Path, log_path: str | None, spec_path: str | None) -> tuple[Path, FeatureSpec | None]:
    """The request log and the served model's feature spec: given, else from the fleet's state in ``root``."""
    state = read_state(root.parent) if root.name == "fleet" else None
    if log_path is None:
        log_path = ((state or {}).get("balancer") or {}).get("log")
        if not log_path:
            raise ConfigError(f"no fleet state with a balancer in {root}; give --log (the balancer's request log) "
                              "or --fleet-dir")
    if spec_path is None:
        spec_path = ((state or {}).get("source") or {}).get("spec_path")
    if spec_path is None:
        return Path(log_path), None
    try:
        return Path(log_path), FeatureSpec.from_json(Path(spec_path).read_text())
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"feature spec {spec_path} cannot be read: {err}") from None


def fleet_model(root: Path, path: str | None) -> NodeModel | None:
    """The capacity model the per-node predictions come from: the profile at ``path``, else the fleet's (None
    without one); a one-line ConfigError when it cannot be read or modelled."""
    state = read_state(root.parent) if root.name == "fleet" else None
    path = path or (profile_path(state) if state else None)
    doc = read_profile(path)
    if doc is None:
        return None
    try:
        return NodeModel.from_profile(doc)
    except ConfigError as err:
        raise ConfigError(f"profile {path}: {first_line(err)}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.serving.elastic.traffic",
                                     description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    record = commands.add_parser("record", help="record the served traffic as a traffic profile and log it to MLflow")
    record.add_argument("--since", help="ISO time: only requests accepted from then (no offset: UTC)")
    record.add_argument("--until", help="ISO time: only requests accepted before then (no offset: UTC)")
    record.add_argument("--fleet-dir", type=Path, default=None,
                        help="the fleet's folder, <home>/fleet (default: $RECFORGE_HOME/fleet)")
    record.add_argument("--log", help="the balancer's request log (default: the fleet state's)")
    record.add_argument("--spec", help="feature spec of the served model (default: the fleet state's source)")
    record.add_argument("--bytes-per-item", type=float,
                        help="request bytes per item, instead of a spec (header bytes then count as items)")
    record.add_argument("--profile", help="profile whose predictions each node's latency is compared with (default: "
                                          "the fleet's)")
    record.add_argument("--out", type=Path, help="also write the traffic profile JSON here")
    record.add_argument("--no-mlflow", action="store_true", help="do not log it to MLflow (needs --out)")
    record.add_argument("--seed", type=int, default=0, help="seed of the size subsample")
    args = parser.parse_args(argv)

    def step() -> str:
        if args.no_mlflow and args.out is None:
            raise ConfigError("--no-mlflow needs --out (the traffic profile must go somewhere)")
        if args.bytes_per_item is not None and args.spec:
            raise ConfigError("give --spec or --bytes-per-item, not both")
        root = (args.fleet_dir or fleet_dir()).resolve()
        log_path, spec = fleet_inputs(root, args.log, None if args.bytes_per_item is not None else args.spec)
        if args.bytes_per_item is not None:
            sizer = RequestSizer(args.bytes_per_item)
        elif spec is not None:
            sizer = RequestSizer.for_spec(spec)
        else:
            raise ConfigError("no feature spec to size the requests with: give --spec or --bytes-per-item")
        try:
            lines = log_path.read_text(errors="replace").splitlines()
        except OSError as err:
            raise ConfigError(f"request log {log_path} cannot be read: {err.strerror or err}") from None
        note = ""
        try:
            model = fleet_model(root, args.profile)
        except ConfigError as err:
            if args.profile:  # asked for: its error is the answer
                raise
            model, note = None, f" (no per-node predictions: {first_line(err)})"
        profile = record_traffic(parse_lines(lines), sizer, seed=args.seed, source=f"balancer request log {log_path}",
                                 model=model,
                                 since=parse_cli_time(args.since, "--since") if args.since else None,
                                 until=parse_cli_time(args.until, "--until") if args.until else None)
        where = []
        if args.out is not None:
            where.append(f"written to {save_traffic(profile, args.out)}")
        if not args.no_mlflow:
            where.append(f"MLflow run {log_traffic(profile)} in {traffic_experiment()}")
        return f"traffic profile: {summary(profile)}; {', '.join(where)}{note}"

    return run_step(step)


if __name__ == "__main__":
    raise SystemExit(main())
