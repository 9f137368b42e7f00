"""expertcache: run MoE LLMs larger than the GPU with an expert cache chosen by simulation."""

from expertcache.errors import ConfigError, ExpertCacheError, TraceError
from expertcache.simulator import CacheConfig, ExpertCache, Geometry, Profile, simulate
from expertcache.traces import TraceMeta, TraceWriter, read_trace

__version__ = "0.1.0"


def __getattr__(name: str):
    """``expertcache.load`` imports torch and transformers only when it is first used."""
    if name == "load":
        from expertcache.runtime.loader import load

        return load
    raise AttributeError(f"module 'expertcache' has no attribute '{name}'")


__all__ = [
    "CacheConfig", "ConfigError", "ExpertCache", "ExpertCacheError", "Geometry", "Profile", "load",
    "TraceError", "TraceMeta", "TraceWriter", "read_trace", "simulate",
]  # fmt: skip
