"""`syncd changes --follow --json` as a real process feeding a pipe: changes committed while
it runs come out in seq order, a line each; SIGTERM and SIGINT end it with exit 0 and no
traceback; a reader that goes away (`| head -1`) ends it quietly with exit 0, whether or not
more changes come."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from syncd.store.db import Store

from .feed_support import customer, order, store_path, syncd_process, write, write_config

pytestmark = pytest.mark.slow

#: Only a safety net against a hang; no assertion waits for it.
TIMEOUT = 20.0
FOLLOW = ("changes", "--follow", "--json", "--poll-interval", "0.02")


class Follower:
    """A `syncd changes --follow` process whose stdout lines are read by a thread; leaving
    the block kills it if it is still running and closes its pipes."""

    def __init__(self, config: Path, *args: str) -> None:
        self.proc = syncd_process(config, *FOLLOW, *args)
        self.lines: queue.Queue[bytes] = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def next_seq(self) -> int:
        return int(json.loads(self.lines.get(timeout=TIMEOUT))["seq"])

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, str]:
        """Send `sig`; the exit code and everything written to stderr."""
        self.proc.send_signal(sig)
        code = self.proc.wait(TIMEOUT)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read().decode()

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._pump.join(TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_it_prints_changes_as_they_commit_until_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    write(tmp_path, [order(1, 1)])
    with Follower(write_config(tmp_path)) as follower:
        seqs = [follower.next_seq()]
        write(tmp_path, [order(1, 2, "approved"), order(2, 1)])
        seqs += [follower.next_seq(), follower.next_seq()]
        write(tmp_path, [customer("c-1", 1)])
        seqs.append(follower.next_seq())
        code, stderr = follower.stop(sig)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert seqs == [1, 2, 3, 4]


def test_since_and_filters_apply_while_following(tmp_path: Path) -> None:
    write(tmp_path, [order(1, 1), customer("c-1", 1)])
    with Follower(write_config(tmp_path), "--since", "1", "--event", "order.*") as follower:
        write(tmp_path, [customer("c-1", 2, name="Grace")])
        write(tmp_path, [order(1, 2, "shipped")])
        event = json.loads(follower.lines.get(timeout=TIMEOUT))
        code, stderr = follower.stop()
    assert code == 0, stderr
    assert (event["seq"], event["event"]) == (4, "order.shipped")


def _piped_to_head(tmp_path: Path) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    follower = syncd_process(write_config(tmp_path), *FOLLOW)
    assert follower.stdout is not None
    head = subprocess.Popen(["head", "-1"], stdin=follower.stdout, stdout=subprocess.PIPE)
    # Only `head` holds the pipe's reading end now: when it exits, the follower's writes fail.
    follower.stdout.close()
    return follower, head


@pytest.mark.parametrize("more_changes", [True, False], ids=["busy log", "quiet log"])
def test_a_reader_that_goes_away_ends_it_quietly(tmp_path: Path, more_changes: bool) -> None:
    if more_changes:
        write(tmp_path, [order(rid, 1) for rid in range(1, 2001)])
    else:
        write(tmp_path, [order(1, 1)])
    follower, head = _piped_to_head(tmp_path)
    with follower, head:
        out, _ = head.communicate(timeout=TIMEOUT)
        code = follower.wait(TIMEOUT)
        assert follower.stderr is not None
        stderr = follower.stderr.read().decode()
    assert json.loads(out)["seq"] == 1
    assert code == 0, stderr
    assert stderr == ""


def test_it_follows_a_log_that_starts_empty(tmp_path: Path) -> None:
    Store(store_path(tmp_path)).close()
    with Follower(write_config(tmp_path)) as follower:
        write(tmp_path, [order(7, 1)])
        assert follower.next_seq() == 1
        code, stderr = follower.stop()
    assert code == 0, stderr
