"""The data gate's great-expectations suites, built from the day's bands.

Three suites, each an asset of the pandas data source ``recforge_ratings`` (see
:mod:`recforge.pipeline.datagate.suites` for the GX plumbing):

* ``ratings_partition`` (the partition as stored): exact column set, integer types, no nulls, rating in 1..5,
  known ids, timestamps inside the day, unique (user, item, timestamp), and the row-count bands;
* ``ratings_partition_labels`` (the derived ``label`` column): the label-rate bands;
* ``ratings_partition_statistics`` (one row: the day's statistics of
  :mod:`recforge.pipeline.datagate.daystats` and :mod:`recforge.pipeline.datagate.modelcheck`, a column
  each): one ``expect_column_mean_to_be_between``
  per band (the mean of one row is the day's value, so the validation page shows it as the observed value).

Each band's expectation carries its GX ``severity`` (``critical`` stops the run, ``warning`` does not) and, as
``notes``, what the statistic is and how its bound was derived: the suite's Data Docs page shows them beside
each bound (GX renders notes on suite pages only); the validation page shows the day's bound and value. Bounds
are expectation parameters (``<band key>_min`` / ``_max``), resolved per run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from recforge.pipeline.datagate.bands import Band
from recforge.pipeline.datagate.daystats import STATISTICS
from recforge.pipeline.datagate.modelcheck import MODEL_STATISTICS
from recforge.pipeline.datagate.suites import param

RAW_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
LABEL_COLUMN = "label"
RATING_MIN, RATING_MAX = 1, 5
# Accepted dtypes of the id/rating/timestamp columns: numpy integers and pandas' nullable integers. GX 1.x
# resolves a type name with np.dtype(name) or getattr(pandas, name), so the nullable ones are spelled by
# their class name ("Int64Dtype"); "Int64" would match nothing.
INTEGER_DTYPES = [
    *(f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)),
    *(f"{sign}Int{bits}Dtype" for sign in ("", "U") for bits in (8, 16, 32, 64)),
]

PARTITION = "ratings_partition"  # asset, suite, validation definition and checkpoint of the partition
LABELS = "ratings_partition_labels"  # the same for the derived label frame
STATISTICS_SUITE = "ratings_partition_statistics"  # the same for the one-row frame of the day's statistics
DEFINITIONS = {
    "rows": "rows of the partition",
    "label": f"mean {LABEL_COLUMN} (rating >= the label threshold)",
    **STATISTICS,
    **MODEL_STATISTICS,
}


def band_suite(band: Band) -> str:
    """The suite a band's expectation belongs to."""
    return {"rows": PARTITION, "label": LABELS}.get(band.statistic, STATISTICS_SUITE)


def band_params(bands: list[Band]) -> dict[str, float]:
    """Expectation parameters of the bands' bounds (``<key>_min`` / ``<key>_max``, the sides they have)."""
    params: dict[str, float] = {}
    for band in bands:
        if band.min_value is not None:
            params[f"{band.key}_min"] = float(band.min_value)
        if band.max_value is not None:
            params[f"{band.key}_max"] = float(band.max_value)
    return params


def statistics_frame(values: Mapping[str, float]) -> pd.DataFrame:
    """The day's statistics as a one-row frame, a column each (the statistics suite's asset)."""
    return pd.DataFrame({name: [float(value)] for name, value in values.items()})


def band_expectations(bands: list[Band]) -> list:
    """One expectation per band: its bounds as parameters, its severity, and its derivation as notes."""
    import great_expectations.expectations as gxe

    expectations = []
    for band in bands:
        bounds: dict[str, Any] = {
            "min_value": None if band.min_value is None else param(f"{band.key}_min"),
            "max_value": None if band.max_value is None else param(f"{band.key}_max"),
        }
        extra: dict[str, Any] = {
            "severity": band.severity,
            "notes": f"{band.severity}: {DEFINITIONS.get(band.statistic, band.statistic)}. Bound: {band.rule}",
            "meta": {"severity": band.severity, "statistic": band.statistic, "derivation": band.rule},
        }
        if band.statistic == "rows":
            expectations.append(gxe.ExpectTableRowCountToBeBetween(**bounds, **extra))
        else:
            column = LABEL_COLUMN if band.statistic == "label" else band.statistic
            expectations.append(gxe.ExpectColumnMeanToBeBetween(column=column, **bounds, **extra))
    return expectations


def partition_expectations(volume_bands: list[Band]) -> list:
    """The partition suite: schema, ranges, ids, the day's time window, uniqueness, then the row-count bands."""
    import great_expectations.expectations as gxe

    exps: list = [gxe.ExpectTableColumnsToMatchSet(column_set=list(RAW_COLUMNS), exact_match=True)]
    exps += [gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=INTEGER_DTYPES) for c in RAW_COLUMNS]
    exps += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in RAW_COLUMNS]
    exps += [
        gxe.ExpectColumnValuesToBeBetween(column="rating", min_value=RATING_MIN, max_value=RATING_MAX),
        gxe.ExpectColumnValuesToBeInSet(column="user_id", value_set=param("known_user_ids")),
        gxe.ExpectColumnValuesToBeInSet(column="item_id", value_set=param("known_item_ids")),
        gxe.ExpectColumnValuesToBeBetween(
            column="timestamp", min_value=param("day_start"), max_value=param("day_end"), strict_max=True
        ),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id", "timestamp"]),
    ]
    return exps + band_expectations(volume_bands)
