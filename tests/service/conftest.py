from __future__ import annotations

from collections.abc import Iterator

import pytest

from syncd.sim.config import SimConfig
from syncd.sim.server import SimHandle, running_simulator


@pytest.fixture
def sim() -> Iterator[SimHandle]:
    """The simulator in this process, on loopback: no rate limit, changes visible at once."""
    with running_simulator(SimConfig(rate=0, max_lag=0)) as handle:
        yield handle
