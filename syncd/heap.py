"""Garbage-collector settings: for a serving daemon (the receiver's hot path pays for them)
and for a long listing (a first sync, a relist), whose pages in flight outlive collections."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Allocations between collections of the youngest generation (CPython's default is 700).
GC_GEN0_THRESHOLD = 10_000
#: The same while a full listing runs. A listing holds a few pages of records in flight
#: (parsed, queued for the writer, being written): about five containers per record, all
#: alive at the next collection, so at GC_GEN0_THRESHOLD every young collection walked them
#: (a collection every 2,000 records, 5-7 ms each: an eighth of a first sync's CPU). Past
#: the size of what a listing holds, collections all but stop.
LISTING_GEN0_THRESHOLD = 50_000

#: Full listings running now (several resources may list at once) and the threshold the
#: first of them raised.
_listings = 0
_before_listings: tuple[int, int, int] = (GC_GEN0_THRESHOLD, 10, 10)


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


@contextlib.contextmanager
def listing_heap() -> Iterator[None]:
    """Young collections at most every LISTING_GEN0_THRESHOLD allocations while a full listing
    runs; the threshold before the first listing comes back when the last one ends (unless
    something else changed it meanwhile, such as the daemon leaving `serving_heap`). Cyclic
    garbage made meanwhile waits a little longer; nothing else changes."""
    global _listings, _before_listings
    if _listings == 0:
        _before_listings = gc.get_threshold()
        if _before_listings[0] < LISTING_GEN0_THRESHOLD:
            gc.set_threshold(LISTING_GEN0_THRESHOLD, *_before_listings[1:])
    _listings += 1
    try:
        yield
    finally:
        _listings -= 1
        if _listings == 0 and gc.get_threshold()[0] == max(_before_listings[0], LISTING_GEN0_THRESHOLD):
            gc.set_threshold(*_before_listings)
