"""Built-in mock-galaxy simulator (stand-in for TNG50 + SKIRT)."""

from surveydust.simulate.field import FieldFiles, simulate_field
from surveydust.simulate.run import simulate

__all__ = ["FieldFiles", "simulate", "simulate_field"]
