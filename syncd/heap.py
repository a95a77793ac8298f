"""Garbage-collector settings: for a serving daemon (the receiver's hot path pays for them)
and for a long listing (a first sync, a relist), whose pages in flight outlive collections."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

#: Allocations between collections of the youngest generation (CPython's default is 700).
GC_GEN0_THRESHOLD = 10_000
#: The same while a full listing runs. A listing holds a few pages of records in flight
#: (parsed, queued for the writer, being written): about five containers per record, all
#: alive at the next collection, so at GC_GEN0_THRESHOLD every young collection walked them
#: (a collection every 2,000 records, 5-7 ms each: an eighth of a first sync's CPU). Past
#: the size of what a listing holds, collections all but stop.
LISTING_GEN0_THRESHOLD = 50_000

#: The young-generation thresholds the settings in force want (a serving daemon, each full
#: listing; several resources may list at once), and the thresholds from before the first of
#: them. The collector runs at the largest wanted; the old thresholds come back with the last
#: one, in whatever order they end (a listing may outlive serving, or start before it).
_wanted: list[int] = []
_before: tuple[int, int, int] = gc.get_threshold()
_lock = threading.Lock()


@contextlib.contextmanager
def _young_threshold(threshold: int) -> Iterator[None]:
    global _before
    with _lock:
        if not _wanted:
            _before = gc.get_threshold()
        _wanted.append(threshold)
        _set_young()
    try:
        yield
    finally:
        with _lock:
            _wanted.remove(threshold)
            _set_young()


def _set_young() -> None:
    gc.set_threshold(max([_before[0], *_wanted]), *_before[1:])


@contextlib.contextmanager
def serving_heap() -> Iterator[None]:
    """Collector settings for serving, restored on exit. Everything allocated while starting
    (modules, config, apps: most of the heap) moves to the permanent generation, so full
    collections stop walking it, and the youngest generation is collected less often.
    Under load, parsed delivery bodies held across an inbox commit survive into the older
    generations; with the default settings the collections that follow cost the receiver
    about a tenth of its CPU (bench/bench_receiver.py measures with the same settings).
    Non-cyclic garbage is still freed at once by reference counting."""
    gc.collect()
    gc.freeze()
    try:
        with _young_threshold(GC_GEN0_THRESHOLD):
            yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def listing_heap() -> Iterator[None]:
    """Young collections at most every LISTING_GEN0_THRESHOLD allocations while a full listing
    runs. Cyclic garbage made meanwhile waits a little longer; nothing else changes."""
    with _young_threshold(LISTING_GEN0_THRESHOLD):
        yield
