"""The change feed's delivery: sinks (http, exec), the runner that feeds each one from the change log,
and `build`, which makes both from the config's `[[sinks]]`.

May import syncd.core, syncd.store and the shared top-level modules (config, errors, logs, metrics,
signatures)."""
