"""The one family of errors that the command line turns into a single line and exit status 2."""


class ExpertCacheError(Exception):
    """Bad input or an impossible request, reported to the user without a traceback."""


class TraceError(ExpertCacheError):
    """A trace file is missing, unreadable, or breaks the documented schema."""


class ConfigError(ExpertCacheError):
    """A cache configuration, geometry, policy, budget or profile that cannot be used."""
