"""The polling path: poller, scheduler, progress.
Imports syncd.store, syncd.core and the shared modules."""
