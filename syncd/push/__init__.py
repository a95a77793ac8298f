"""The webhook path: receiver, admission, listener limits, the durable inbox, audit, inbox worker.
Imports syncd.store, syncd.core and the shared modules."""
