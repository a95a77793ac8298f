"""The Pet Store simulator: the upstream of every test, the demo and the benchmarks.

It serves petstore-api.md exactly (lagged listings with ties and cursors, single records,
webhook endpoints and signed deliveries with the retry schedule), runs a seeded workload, and
injects faults on request. Entry points:

- `running_simulator(SimConfig(...), clock=...)` / `SimHandle`: in a background thread.
- `syncd simulate` (`syncd.sim.cli.simulate`): as a process.
- `/_sim/state`, `/_sim/stats`, `/_sim/idle`, `POST /_sim/control`: ground truth and control.
"""

from syncd.sim.clock import ManualClock, SystemClock
from syncd.sim.config import PRESETS, FaultConfig, SimConfig
from syncd.sim.server import SimHandle, ThreadedServer, running_simulator
from syncd.sim.simulator import Simulator

__all__ = [
    "PRESETS",
    "FaultConfig",
    "ManualClock",
    "SimConfig",
    "SimHandle",
    "Simulator",
    "SystemClock",
    "ThreadedServer",
    "running_simulator",
]
