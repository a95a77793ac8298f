"""`syncd demo`: the simulator plus the daemon, shown live, and its report.
An entry point: may import anything below it."""
