"""Where RecForge keeps things, and how typed configs are read.

Everything has an embedded default under the project folder, and every location can be pointed
elsewhere with an environment variable:

=====================  ==========================================  =================================
variable               default                                     what
=====================  ==========================================  =================================
RECFORGE_HOME          <repo>/.recforge                            local state of the embedded setup
RECFORGE_DATA_ROOT     $RECFORGE_HOME/data                         partitioned data; any fsspec URL
RECFORGE_RAW_DIR       $RECFORGE_HOME/raw                          verified raw downloads (cache)
RECFORGE_WORK_DIR      $RECFORGE_HOME/work                         scratch: features, model files
MLFLOW_TRACKING_URI    http://127.0.0.1:5000                       MLflow tracking server
RECFORGE_EXPERIMENT    recforge-nightly                            MLflow experiment of nightly runs
=====================  ==========================================  =================================
"""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass

from recforge.core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"
DEFAULT_EXPERIMENT = "recforge-nightly"


def recforge_home() -> Path:
    return Path(os.environ.get("RECFORGE_HOME", REPO_ROOT / ".recforge"))


def data_root() -> str:
    """Root of the partitioned data: a local folder by default, any fsspec URL (s3://...) when set."""
    return os.environ.get("RECFORGE_DATA_ROOT", str(recforge_home() / "data"))


def raw_dir() -> Path:
    """Download cache of the raw source files (checksum-verified)."""
    return Path(os.environ.get("RECFORGE_RAW_DIR", recforge_home() / "raw"))


def work_dir() -> Path:
    return Path(os.environ.get("RECFORGE_WORK_DIR", recforge_home() / "work"))


def gx_root() -> Path:
    """great-expectations project folder (suites, results, Data Docs)."""
    return recforge_home() / "gx"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def experiment_name() -> str:
    return os.environ.get("RECFORGE_EXPERIMENT", DEFAULT_EXPERIMENT)


def git_commit() -> str:
    """The code version an artifact was built from ("unknown" outside a git checkout)."""
    if sha := os.environ.get("RECFORGE_GIT_COMMIT"):
        return sha
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    sha = out.stdout.strip() if out.returncode == 0 else "unknown"
    dirty = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
    )
    return sha + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


T = TypeVar("T")

__all__ = ["Annotated", "Field", "config_from_dict", "typed_config"]  # Annotated/Field: for typed_config fields


def typed_config(cls: type[T] | None = None, *, frozen: bool = True) -> Any:
    """Make ``cls`` a typed config: a (frozen) dataclass whose fields are checked on construction.

    The one style of every RecForge config. Constraints are written on the field, not in hand-written checks::

        @typed_config
        class RegisterConfig:
            margin: Annotated[float, Field(ge=0, lt=10)] = 0.05  # relative LBT gain needed to promote

    Types are strict (no "5" for an int, no True for an int; an int is a valid float). A bad value raises a
    one-line ConfigError naming the field (``RegisterConfig.margin: Input should be less than 10, got 20``).
    Checks across fields go in ``__post_init__`` (raise ConfigError or ValueError there).
    Build one from JSON/DAG params with :func:`config_from_dict` (unknown keys refused, lists for tuples).
    """

    def wrap(klass: type[T]) -> type[T]:
        checked = _pydantic_dataclass(frozen=frozen, config=ConfigDict(strict=True))(klass)
        init = checked.__init__

        @functools.wraps(init)
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as err:
                names = [f.name for f in dataclasses.fields(checked)]
                raise ConfigError(_validation_message(klass.__name__, err, names)) from None

        checked.__init__ = __init__
        return checked

    return wrap if cls is None else wrap(cls)


def _validation_message(owner: str, err: ValidationError, field_names: list[str]) -> str:
    first = err.errors()[0]
    # a positional argument is located by its index: name its field instead
    loc = [field_names[part] if isinstance(part, int) and part < len(field_names) and i == 0 else part
           for i, part in enumerate(first["loc"])]
    where = ".".join(str(part) for part in loc)
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {err.error_count() - 1} more problem(s))" if err.error_count() > 1 else ""
    if not where:
        return f"{owner}: {message}{more}"
    return f"{owner}.{where}: {message}, got {first.get('input')!r}{more}"


def config_from_dict(cls: type[T], values: dict[str, Any] | None) -> T:
    """Build the config dataclass ``cls`` from ``values``, rejecting unknown keys and wrong types.

    Lists are accepted for tuple fields (JSON has no tuples); ints are accepted for float fields.
    """
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        kwargs[key] = _coerce(cls.__name__, key, hints[key], value)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{cls.__name__}: {err}") from None


def _coerce(owner: str, key: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{owner}.{key} must be a list, got {value!r}")
        (item_type, *_rest) = typing.get_args(hint) or (Any,)
        return tuple(_coerce(owner, key, item_type, v) for v in value)
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{owner}.{key} must be a number, got {value!r}")
    if hint in (int, str, bool) and type(value) is not hint:
        raise ConfigError(f"{owner}.{key} must be {hint.__name__}, got {value!r}")
    return value
