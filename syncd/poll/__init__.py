"""The polling path: poller, cursor trust, listing guards, its writer transactions, scheduler, progress.
Imports syncd.store, syncd.core and the shared modules."""
