"""Operator commands' logic: status and verify.
Imports poll, store, core and the shared modules."""
