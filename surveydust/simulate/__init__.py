"""Built-in mock-galaxy simulator (stand-in for TNG50 + SKIRT)."""

from surveydust.simulate.run import simulate

__all__ = ["simulate"]
