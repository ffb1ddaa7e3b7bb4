"""Reading a JSON document file with one-line errors that name it: what every loader of a RecForge file format
(traces, traffic profiles) needs before it checks the document's own fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recforge.core.errors import ConfigError, DataError


def read_json_document(path: str | Path, what: str, how_to_make: str) -> Any:
    """The parsed JSON of ``path``. A ConfigError when the file cannot be read; a DataError when it is empty (naming
    ``how_to_make`` one) or not JSON. ``what`` names the file in both, e.g. ``"trace file"``."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{what} {path} cannot be read: {getattr(err, 'strerror', None) or err}") from None
    if not text.strip():
        raise DataError(f"{what} {path} is empty; {how_to_make}")
    try:
        return json.loads(text)
    except ValueError as err:
        raise DataError(f"{what} {path} is not JSON (line {getattr(err, 'lineno', '?')}): corrupt or "
                        "truncated") from None
