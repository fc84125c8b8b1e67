"""The compile gate's fake family (tests/gate_fake_family.py) with its fitting config only."""
from tests.gate_fake_family import good_cases as gate_cases  # noqa: F401
