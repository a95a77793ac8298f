"""The SQLite store: every SQL statement, one module per table family (db, mirror, cursors,
events, dead_letters, audit, drift), the writer thread and batch apply; imports core and the
shared modules only."""
