"""One daemon per store, and the store a daemon writes is the file at its configured path.

`StoreLock`: an exclusive `flock` on `<store>.lock`, taken before the store is opened and
held until the daemon exits, with the holder's pid written in the file so a second daemon
can say who holds it. Readers (status, verify) never take it: WAL lets them read while the
daemon writes. flock locks are separate from the POSIX record locks SQLite itself uses, so
the two never interfere; the file is never removed, since removing it would let a second
daemon lock a new file while the first still holds the old one.

`FileIdentity`: (st_dev, st_ino) of a file as opened. A store removed or replaced under a
running daemon leaves the daemon writing into a file nobody will ever open again: every
acknowledgement after that is lost at the next restart. `identity_problem` says so, and the
daemon then refuses deliveries and exits for its service manager to restart it on the file
that is at the path now.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from syncd.errors import StoreError


def lock_path(store_path: str) -> str:
    return f"{store_path}.lock"


class StoreLockedError(StoreError):
    """Another process holds the store's lock."""

    def __init__(self, store_path: str, holder: int | None) -> None:
        self.store_path = store_path
        self.holder = holder
        who = f"syncd pid {holder}" if holder is not None else "another process (pid not recorded)"
        super().__init__(
            f"store {store_path} is in use by {who} (lock {lock_path(store_path)}); "
            "only one daemon may run on a store"
        )


@dataclass(frozen=True, slots=True)
class FileIdentity:
    device: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino)


def identity_problem(path: str, expected: FileIdentity, what: str = "store") -> str | None:
    """None while `path` is still the file with `expected` identity, else what happened."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"{what} {path} was removed while syncd was running"
    except OSError as exc:
        return f"cannot check {what} {path}: {exc.strerror}"
    if FileIdentity.of(st) != expected:
        return f"{what} {path} was replaced by another file while syncd was running"
    return None


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return int(text) if text else None
    return None


class StoreLock:
    """The exclusive lock of one store; `acquire` raises StoreLockedError naming the holder."""

    def __init__(self, store_path: str) -> None:
        self.store_path = store_path
        self.path = lock_path(store_path)
        self._fd: int | None = None
        self.identity: FileIdentity | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open the store's lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise StoreLockedError(self.store_path, holder) from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot lock {self.path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        self.identity = FileIdentity.of(os.fstat(fd))

    def problem(self) -> str | None:
        """Whether the lock file at the path is still ours: removed, another daemon could
        lock a new one."""
        if self.identity is None:
            return None
        return identity_problem(self.path, self.identity, "lock file")

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # The pid goes before the lock does, so the next holder's pid is never erased.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)
