"""The daemon: lifecycle (daemon, running, stopping), the change feed's sinks (feed), modes
and fallback, reload, listeners, admin, systemd, GC tuning. Imports ops, push, poll, feed,
store, core and the shared modules."""
