"""The change feed's delivery: sinks (http, exec) and the runner that feeds each one from the change log.

May import syncd.core, syncd.store and the shared top-level modules (errors, logs, metrics, signatures)."""
