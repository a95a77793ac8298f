"""The webhook path: receiver endpoint and app, admission, listener limits, the durable inbox, audit, inbox worker.
Imports syncd.store, syncd.core and the shared modules."""
