"""Garbage-collector settings for a serving daemon (the receiver's hot path pays for them)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Allocations between collections of the youngest generation (CPython's default is 700).
GC_GEN0_THRESHOLD = 10_000


@contextlib.contextmanager
def serving_heap() -> Iterator[None]:
    """Collector settings for serving, restored on exit. Everything allocated while starting
    (modules, config, apps: most of the heap) moves to the permanent generation, so full
    collections stop walking it, and the youngest generation is collected less often.
    Under load, parsed delivery bodies held across an inbox commit survive into the older
    generations; with the default settings the collections that follow cost the receiver
    about a tenth of its CPU (bench/bench_receiver.py measures with the same settings).
    Non-cyclic garbage is still freed at once by reference counting."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
