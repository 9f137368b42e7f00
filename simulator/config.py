"""The cache configuration that a sweep chooses and the runtime executes, as JSON-ready data."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from expertcache.errors import ConfigError
from expertcache.jsonfile import read_json_object
from expertcache.simulator.geometry import Geometry
from expertcache.simulator.policies import get_policy


@dataclass
class CacheConfig:
    """Sets × ways, replacement policy, CPU threads for misses, and the budget it was sized for.

    >>> CacheConfig(sets=14, ways=4, policy="lru", threads=15).slots
    56
    """

    sets: int
    ways: int
    policy: str = "lru"
    threads: int | None = None  # None: all cores but one (the copy engine's feeder needs one)
    budget_bytes: int | None = None
    mapping: str = "modulo"
    seed: int = 0

    def __post_init__(self) -> None:
        self.geometry  # validates sets, ways and mapping
        get_policy(self.policy)
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.sets, self.ways, self.mapping)

    @property
    def slots(self) -> int:
        return self.sets * self.ways

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> "CacheConfig":
        data = read_json_object(path, "configuration")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown or not {"sets", "ways"} <= set(data):
            raise ConfigError(f"{path}: not a CacheConfig (needs sets and ways; unknown keys: {sorted(unknown)})")
        return cls(**data)
