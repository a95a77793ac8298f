"""The store lock and file identity, on real files: flock conflicts between two opens of the
lock file, the holder's pid, and a removed or replaced file told apart from the one opened."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syncd.errors import StoreError
from syncd.store.guard import FileIdentity, StoreLock, StoreLockedError, identity_problem


def test_a_second_lock_is_refused_naming_the_holder_and_taken_once_released(tmp_path: Path) -> None:
    store = str(tmp_path / "mirror.db")
    first, second = StoreLock(store), StoreLock(store)
    first.acquire()
    assert Path(first.path).read_text().strip() == str(os.getpid())
    with pytest.raises(StoreLockedError) as refused:
        second.acquire()
    assert refused.value.holder == os.getpid()
    assert f"pid {os.getpid()}" in str(refused.value)
    assert not second.held
    first.release()
    # The pid goes with the lock, and the file stays (removing it would let two lock).
    assert Path(first.path).read_text() == ""
    second.acquire()
    assert second.held
    second.release()


def test_a_lock_file_removed_under_the_holder_is_noticed(tmp_path: Path) -> None:
    lock = StoreLock(str(tmp_path / "mirror.db"))
    lock.acquire()
    assert lock.problem() is None
    Path(lock.path).unlink()
    problem = lock.problem()
    assert problem is not None
    assert "lock file" in problem
    assert "removed" in problem
    lock.release()


def test_identity_tells_removed_and_replaced_files_from_the_one_opened(tmp_path: Path) -> None:
    path = tmp_path / "mirror.db"
    path.write_bytes(b"one")
    opened = FileIdentity.of(os.stat(path))
    assert identity_problem(str(path), opened) is None
    # Written in place: still the same file.
    path.write_bytes(b"two")
    assert identity_problem(str(path), opened) is None
    other = tmp_path / "other.db"
    other.write_bytes(b"three")
    # Keep the first inode alive, so the new file cannot reuse its number.
    keep = tmp_path / "kept.db"
    os.link(path, keep)
    other.replace(path)
    assert "was replaced" in (identity_problem(str(path), opened) or "")
    path.unlink()
    assert "was removed" in (identity_problem(str(path), opened) or "")


def test_a_lock_in_a_directory_that_cannot_be_created_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(StoreError, match=r"cannot open the store's lock file .*not-a-dir"):
        StoreLock(str(blocker / "mirror.db")).acquire()
