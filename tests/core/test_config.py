"""recforge.core.config: locations from the environment, typed configs and config_from_dict."""

from __future__ import annotations

import dataclasses

import pytest

from recforge.core import config
from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import ConfigError


@typed_config
class Example:
    count: Annotated[int, Field(ge=1, le=10)] = 3
    ratio: Annotated[float, Field(ge=0, lt=1)] = 0.5
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ConfigError(f"Example.low ({self.low}) must be <= high ({self.high})")


@typed_config(frozen=False)
class Mutable:
    value: int = 1


def test_typed_config_defaults_and_valid_values():
    assert Example() == Example(count=3, ratio=0.5, name="x", sizes=(1, 2))
    assert Example(ratio=0).ratio == 0  # an int is a valid float


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"count": 0}, "count"),
    ({"count": 11}, "count"),
    ({"ratio": 1.0}, "ratio"),
    ({"count": "5"}, "count"),
    ({"count": True}, "count"),
    ({"name": 3}, "name"),
])
def test_typed_config_refuses_a_bad_value_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"^Example\.{field}: ") as caught:
        Example(**kwargs)
    assert "\n" not in str(caught.value)


def test_typed_config_cross_field_check_in_post_init():
    with pytest.raises(ConfigError, match="low"):
        Example(low=2.0, high=1.0)


def test_typed_config_is_frozen_unless_asked():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Example().count = 4  # type: ignore[misc]
    mutable = Mutable()
    mutable.value = 2
    assert mutable.value == 2


def test_config_from_dict_builds_and_coerces_json_values():
    built = config_from_dict(Example, {"count": 4, "ratio": 0, "sizes": [3, 4]})
    assert built == Example(count=4, ratio=0.0, sizes=(3, 4))
    assert isinstance(built.ratio, float)
    assert config_from_dict(Example, None) == Example()


@pytest.mark.parametrize(("values", "pattern"), [
    ({"cuont": 4}, r"unknown key\(s\) \['cuont'\]"),
    ({"sizes": 3}, r"Example\.sizes must be a list"),
    ({"ratio": "0.5"}, r"Example\.ratio must be a number"),
    ({"count": 4.0}, r"Example\.count must be int"),
    ({"count": 40}, r"Example\.count: "),
])
def test_config_from_dict_refuses_unknown_keys_and_wrong_types(values, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_from_dict(Example, values)


def test_locations_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RECFORGE_HOME", str(tmp_path))
    for name in ("RECFORGE_DATA_ROOT", "RECFORGE_RAW_DIR", "RECFORGE_WORK_DIR", "MLFLOW_TRACKING_URI",
                 "RECFORGE_EXPERIMENT"):
        monkeypatch.delenv(name, raising=False)
    assert config.recforge_home() == tmp_path
    assert config.data_root() == str(tmp_path / "data")
    assert config.raw_dir() == tmp_path / "raw"
    assert config.work_dir() == tmp_path / "work"
    assert config.gx_root() == tmp_path / "gx"
    assert config.tracking_uri() == config.DEFAULT_TRACKING_URI
    assert config.experiment_name() == config.DEFAULT_EXPERIMENT
    monkeypatch.setenv("RECFORGE_DATA_ROOT", "s3://bucket/recforge")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert config.data_root() == "s3://bucket/recforge"
    assert config.tracking_uri() == "http://mlflow.example:5000"


def test_git_commit_prefers_the_environment(monkeypatch):
    monkeypatch.setenv("RECFORGE_GIT_COMMIT", "abc123")
    assert config.git_commit() == "abc123"
    monkeypatch.delenv("RECFORGE_GIT_COMMIT")
    assert config.git_commit()  # a sha (maybe -dirty) in a checkout, "unknown" outside one


def test_typed_config_names_a_positional_argument_by_its_field():
    with pytest.raises(ConfigError, match=r"^Example\.count: "):
        Example(0)
