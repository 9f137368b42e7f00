"""JSON files that users hand us (configurations, profiles), read with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from expertcache.errors import ConfigError


def read_json_object(path: str | Path, kind: str) -> dict:
    """The JSON object in ``path``; a ConfigError naming ``kind`` if it is missing or not one."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {kind} file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a JSON {kind} ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a {kind} (expected a JSON object)")
    return data
