"""The SQLite store: connection, schema, the writer thread, apply, bookkeeping tables.
Owns every SQL statement; imports syncd.core and the shared modules only."""
