"""Pure reconciliation logic: records, values, decisions, webhook health.
Imports nothing that does I/O or reads a clock; only syncd.errors, syncd.timefmt, syncd.contract."""
