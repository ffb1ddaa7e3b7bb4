"""Where every stage keeps its files: the one catalog of the work directory's layout.

::

    <work>/<day>/features/                 feature splits + spec.json of the partition <day> (nightly_retrain)
    <work>/<day>/models/<family>/          trained model: model.onnx, state_dict.pt, card (nightly_retrain)
    <work>/<day>/variants/<family>/        compressed variants (compress_and_validate)
    <work>/<day>/profiles/<family>/        profile documents and plots (profile_variants)
    <work>/candidates/<run id>/            a training run's artifacts fetched from MLflow by a later stage
        features/, <family>/

A model folder's features are always ``<model folder>/../../features`` (both layouts keep that shape).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from recforge.core import config


def _day(day: dt.date | str) -> str:
    return day.isoformat() if isinstance(day, dt.date) else str(day)


@dataclass(frozen=True)
class Catalog:
    """Paths of the work directory (default ``RECFORGE_WORK_DIR``); every stage and the fleet use this."""

    root: Path

    @classmethod
    def default(cls) -> Catalog:
        return cls(config.work_dir())

    def day_dir(self, day: dt.date | str) -> Path:
        return self.root / _day(day)

    def features_dir(self, day: dt.date | str) -> Path:
        return self.day_dir(day) / "features"

    def model_dir(self, day: dt.date | str, family: str) -> Path:
        return self.day_dir(day) / "models" / family

    def variants_dir(self, day: dt.date | str, family: str) -> Path:
        return self.day_dir(day) / "variants" / family

    def profiles_dir(self, day: dt.date | str, family: str) -> Path:
        return self.day_dir(day) / "profiles" / family

    def candidate_dir(self, run_id: str) -> Path:
        """Scratch folder of one training run's artifacts fetched from MLflow."""
        return self.root / "candidates" / run_id

    def trained_days(self, family: str) -> list[Path]:
        """Day folders holding a trained ``family`` model (model.onnx), newest first."""
        if not self.root.is_dir():
            return []
        days = [p for p in self.root.iterdir() if (p / "models" / family / "model.onnx").is_file()]
        return sorted(days, reverse=True)

    @staticmethod
    def features_of(model_dir: str | Path) -> Path:
        """The features folder that belongs to a model folder (``<model folder>/../../features``)."""
        return Path(model_dir).parent.parent / "features"

    @staticmethod
    def variants_of(model_dir: str | Path, family: str) -> Path:
        """The variants folder beside a model folder (``<model folder>/../../variants/<family>``)."""
        return Path(model_dir).parent.parent / "variants" / family
