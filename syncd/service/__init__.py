"""The daemon: lifecycle, modes and fallback, reload, listeners, admin, systemd.
Imports push, poll, store, core and the shared modules."""
