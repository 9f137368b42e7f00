"""Offline simulator: the shared cache core, replacement policies, cost model, replay and sweeps."""

from expertcache.simulator.cache import ExpertCache
from expertcache.simulator.config import CacheConfig
from expertcache.simulator.costs import Profile, load_profile
from expertcache.simulator.engine import ReplayInput, SimResult, simulate
from expertcache.simulator.geometry import Geometry
from expertcache.simulator.policies import POLICIES

__all__ = ["ExpertCache", "CacheConfig", "Profile", "load_profile", "ReplayInput", "SimResult", "simulate", "Geometry", "POLICIES"]
