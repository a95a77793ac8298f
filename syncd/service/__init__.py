"""The daemon: lifecycle (daemon, running, stopping), modes and fallback, reload, listeners,
admin, systemd, GC tuning. Imports ops, push, poll, store, core and the shared modules."""
