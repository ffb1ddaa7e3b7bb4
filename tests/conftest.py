"""Shared fixtures: a tiny synthetic data root, the real MovieLens raw files, and a real MLflow server."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from recforge.core.ports import free_ports

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
TIERS = ("integration", "triton", "e2e", "perf")
SERVICE_FIXTURES = {"mlflow_server"}  # a test using one of these starts a real service: integration at least
DAY0 = dt.date(1998, 1, 1)
REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(os.environ.get("RECFORGE_VENV", REPO / ".venv")) / "bin"


def synthetic_tables(days: int = 30, users: int = 40, items: int = 60, per_day: int = 80, seed: int = 0):
    """(ratings, users, items) shaped like MovieLens, with timestamps spread over ``days`` UTC days."""
    rng = np.random.default_rng(seed)
    start = int(pd.Timestamp(DAY0, tz="UTC").timestamp())
    n = days * per_day
    ratings = pd.DataFrame({
        "user_id": rng.integers(1, users + 1, n),
        "item_id": rng.integers(1, items + 1, n),
        "rating": rng.integers(1, 6, n),
        "timestamp": start + np.sort(rng.integers(0, days * 86400, n)),
    }).drop_duplicates(["user_id", "item_id", "timestamp"]).reset_index(drop=True)
    user_table = pd.DataFrame({
        "user_id": np.arange(1, users + 1),
        "age": rng.integers(15, 70, users),
        "gender": rng.choice(["M", "F"], users),
        "occupation": rng.choice(["artist", "engineer", "student", "other"], users),
        "zip_code": rng.choice(["55105", "94043", "T8H1N", "10003"], users),
    })
    genres = ["Action", "Comedy", "Drama", "Film-Noir", "Sci-Fi", "Children's"]
    item_table = pd.DataFrame({
        "item_id": np.arange(1, items + 1),
        "title": [f"movie {i}" for i in range(1, items + 1)],
        "release_year": pd.array(rng.integers(1950, 1998, items), dtype="Int64"),
        "genres": [" ".join(rng.choice(genres, rng.integers(1, 4), replace=False)) for _ in range(items)],
    })
    return ratings, user_table, item_table


@pytest.fixture
def synthetic_root(tmp_path):
    """A data root laid out as recforge.pipeline.data.ingest writes it, from synthetic tables."""
    from recforge.pipeline.data import ingest as data

    ratings, users, items = synthetic_tables()
    root = str(tmp_path / "data")
    data.write_parquet(users, f"{root}/users.parquet")
    data.write_parquet(items, f"{root}/items.parquet")
    for day, part in ratings.groupby(data.day_of(ratings["timestamp"])):
        data.write_parquet(part.reset_index(drop=True), data.partition_path(root, day))
    return root


@pytest.fixture(scope="session")
def movielens_raw():
    """The real MovieLens-100K raw files (downloaded and checksum-verified by `make setup`)."""
    from recforge.core import config
    from recforge.pipeline.data import ingest as data

    return data.fetch_movielens(config.raw_dir())


def free_port() -> int:
    """One free TCP port on 127.0.0.1."""
    return free_ports(1)[0]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a SQLite store and a local artifact root."""
    state = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(state / "server.log", "w")
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{state}/mlflow.db", "--artifacts-destination", str(state / "art")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {(state / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    else:
        pytest.fail("mlflow server did not become healthy in 120 s")
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def pytest_collection_modifyitems(items):
    """Give every test its tier: the marker it has, integration when it uses a real-service fixture, else unit
    (``make test-fast`` runs ``-m unit``)."""
    for item in items:
        if any(item.get_closest_marker(tier) for tier in TIERS):
            continue
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)
