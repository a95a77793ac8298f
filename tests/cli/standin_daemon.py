"""A stand-in for `syncd run` in the sink reset tests, run as its own process: it holds the
store's lock as the daemon does (pid recorded), says `ready` on stdout, and on each SIGHUP
makes the offset resets `syncd sinks reset` left in `_meta` and deletes their keys, as the
daemon does. With `ignore` it takes SIGHUP and does nothing (a daemon that does not reset
sinks). SIGTERM ends it.

    python -m tests.cli.standin_daemon STORE apply|ignore
"""

from __future__ import annotations

import signal
import sys

from syncd.store import changelog
from syncd.store.db import Store
from syncd.store.guard import StoreLock
from syncd.store.schema import META_SINK_RESET


def apply_resets(path: str) -> list[str]:
    store = Store(path)
    try:
        with store.db.atomic():
            done = []
            for key, value in Store.read_meta(store.conn).items():
                if key.startswith(META_SINK_RESET):
                    sink = key.removeprefix(META_SINK_RESET)
                    changelog.set_offset(store.conn, sink, int(value))
                    store.delete_meta(key)
                    done.append(f"{sink}={value}")
        return done
    finally:
        store.close()


def main() -> None:
    path, mode = sys.argv[1], sys.argv[2]
    lock = StoreLock(path)
    lock.acquire()
    # Signals are taken with sigwait, so one arriving before or between waits is never lost.
    signals = {signal.SIGHUP, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    print("ready", flush=True)
    while signal.sigwait(signals) == signal.SIGHUP:
        done = apply_resets(path) if mode == "apply" else []
        print("hup " + " ".join(done), flush=True)
    lock.release()


if __name__ == "__main__":
    main()
