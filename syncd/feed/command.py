"""The `exec` sink: runs a command per batch, the changes as JSON Lines on its stdin.

Exit status 0 means every change of the batch was handled; anything else, or still running
past `timeout`, fails the whole batch (the runner retries it). The command runs without a
shell, in a process group of its own, and that group is killed when the command exits, times
out or the delivery is cancelled: a batch's processes end with it instead of piling up one per
batch. Its stdout is discarded and its stderr kept, up to a cap, for the failure reason.
(A process that leaves the group, with setsid, escapes that; the batch then waits at most
`_DRAIN_GRACE` for it to close the stderr it holds.)

Each batch runs in a thread of its own (`_Run`), not on the event loop: uvloop, the daemon's
loop, forks to spawn (several milliseconds a batch, growing with the daemon's memory), where
`subprocess.Popen` uses vfork (about a millisecond). The thread feeds stdin, drains stderr
and waits for the exit against the deadline; the event loop only waits for it, and on
cancellation kills the group so that the thread returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Final

from syncd.core.changes import Change
from syncd.feed.base import SinkError

#: Bytes of stderr kept for the failure reason (its tail: the end says what went wrong).
MAX_STDERR: Final = 4096


class CommandSink:
    """Runs `command` (argv, no shell) for each batch. `env` replaces the environment when
    given (None inherits syncd's)."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        timeout: float = 10.0,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        max_stderr: int = MAX_STDERR,
    ) -> None:
        if isinstance(command, str) or not command:
            raise ValueError(f"sink {name!r}: command must be a non-empty list of arguments")
        if timeout <= 0:
            raise ValueError(f"sink {name!r}: timeout must be > 0 seconds, got {timeout}")
        self._name = name
        self.command = tuple(command)
        self.timeout = timeout
        self._env = None if env is None else dict(env)
        self._cwd = cwd
        self._max_stderr = max_stderr

    @property
    def name(self) -> str:
        return self._name

    async def deliver(self, batch: Sequence[Change]) -> None:
        payload = b"".join(change.to_json() + b"\n" for change in batch)
        span = f"seqs {batch[0].seq}-{batch[-1].seq}" if len(batch) > 1 else f"seq {batch[0].seq}"
        run = _Run(self, payload)
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        # A thread per batch rather than the loop's default executor: a batch may take up to
        # `timeout`, and a few sinks doing that must not starve whatever else uses the pool.
        thread = threading.Thread(
            target=run.in_thread, args=(loop, finished), name=f"sink {self._name}", daemon=True
        )
        thread.start()
        try:
            await asyncio.shield(finished)
        except asyncio.CancelledError:
            run.stop()
            # Killed, the group's processes die at once and the thread returns: wait for it, so
            # that when the cancellation completes the batch's processes are gone and reaped.
            while not finished.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(finished)
            raise
        if run.error is not None:
            raise SinkError(
                self._name, f"{span}: cannot run {self.command[0]!r}: {run.error.strerror or run.error}"
            )
        if run.timed_out:
            raise SinkError(
                self._name, _reason(f"{span}: still running after {self.timeout:g} s, killed", run.stderr)
            )
        if run.returncode != 0:
            raise SinkError(self._name, _reason(f"{span}: {_status(run.returncode)}", run.stderr))


#: How often to look whether the command exited where no pidfd tells (Linux < 5.3, others).
_EXIT_POLL: Final = 0.005
#: How often, once the command has exited, to look whether the delivery was cancelled.
_STOP_POLL: Final = 0.05
#: How long, once the command has exited, its stderr may stay open (see `_communicate`).
_DRAIN_GRACE: Final = 1.0


class _Run:
    """One batch's command, run by `in_thread` (blocking) and stopped from the event loop
    with `stop`. The outcome is left in `error` (could not start), `timed_out`, `returncode`
    and `stderr` (its tail)."""

    def __init__(self, sink: CommandSink, payload: bytes) -> None:
        self._sink = sink
        self._payload = payload
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self.error: OSError | None = None
        self.timed_out = False
        self.returncode: int | None = None
        self.stderr = bytearray()

    def stop(self) -> None:
        """Kill the group (from any thread): the thread then returns within moments."""
        with self._lock:
            self._stopped = True
            if self._proc is not None:
                _kill_group(self._proc)

    def in_thread(self, loop: asyncio.AbstractEventLoop, finished: asyncio.Future[None]) -> None:
        outcome: BaseException | None = None
        try:
            self._run()
        except BaseException as exc:  # a bug here must reach the runner, not vanish
            outcome = exc
        # A loop closed meanwhile has no one left waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, finished, outcome)

    def _run(self) -> None:
        sink = self._sink
        deadline = time.monotonic() + sink.timeout
        try:
            proc = subprocess.Popen(
                sink.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=sink._env,
                cwd=sink._cwd,
                start_new_session=True,
            )
        except OSError as exc:
            self.error = exc
            return
        with self._lock:
            self._proc = proc
            if self._stopped:  # cancelled while it was starting
                _kill_group(proc)
        try:
            self._communicate(proc, deadline)
        finally:
            # Whatever the command left running would hold the pipes open (and outlive the
            # batch); the batch is over when the command is. Killed before it is reaped: the
            # zombie keeps its pid, so the group's id cannot have been reused by then.
            _kill_group(proc)
            for pipe in (proc.stdin, proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
            # Dead now (SIGKILL cannot be ignored) but not yet reaped; `stop` must not kill
            # the group once it is, so it forgets the process first.
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            with self._lock:
                self._proc = None
            # Reaps it, so no zombie is left behind.
            self.returncode = proc.wait()

    def _communicate(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        """Feed stdin and drain stderr until the command exits or the deadline passes, then
        read what is left of stderr."""
        assert proc.stdin is not None
        assert proc.stderr is not None
        stdin, stderr = proc.stdin.fileno(), proc.stderr.fileno()
        os.set_blocking(stdin, False)
        os.set_blocking(stderr, False)
        pidfd = _pidfd(proc.pid)
        payload = memoryview(self._payload)
        with contextlib.ExitStack() as cleanup, selectors.DefaultSelector() as selector:
            if pidfd is not None:
                cleanup.callback(os.close, pidfd)
                selector.register(pidfd, selectors.EVENT_READ)
            selector.register(stderr, selectors.EVENT_READ)
            if payload:
                selector.register(stdin, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
            reading = True
            while not _exited(proc.pid):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.timed_out = True
                    return
                wait = remaining if pidfd is not None else min(remaining, _EXIT_POLL)
                for key, _ in selector.select(wait):
                    if key.fd == stdin:
                        payload = self._write(proc, selector, payload)
                    elif key.fd == stderr:
                        reading = self._read(selector, stderr)
            # What it started dies with it; their end of the pipe closes with them. Only a
            # process that left the group (setsid) keeps it open: the command's own stderr is
            # all in the pipe by now, so that one is not waited for past a grace.
            _kill_group(proc)
            deadline = min(deadline, time.monotonic() + _DRAIN_GRACE)
            if pidfd is not None:
                selector.unregister(pidfd)
            if payload:  # exited without reading it all
                selector.unregister(stdin)
            while reading and not self._stopped:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                if selector.select(min(remaining, _STOP_POLL)):
                    reading = self._read(selector, stderr)

    def _write(
        self, proc: subprocess.Popen[bytes], selector: selectors.BaseSelector, payload: memoryview
    ) -> memoryview:
        assert proc.stdin is not None
        try:
            payload = payload[os.write(proc.stdin.fileno(), payload) :]
        except BlockingIOError:
            return payload
        except (BrokenPipeError, ConnectionResetError):
            # A command that exits without reading all of its input is judged by its exit
            # status alone, so a closed pipe is not an error here.
            payload = payload[:0]
        if not payload:
            selector.unregister(proc.stdin.fileno())
            proc.stdin.close()  # the end of the input
        return payload

    def _read(self, selector: selectors.BaseSelector, fd: int) -> bool:
        """Read what stderr has, keeping only the tail; False at its end."""
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            selector.unregister(fd)
            return False
        kept = self.stderr
        kept += chunk
        if len(kept) > self._sink._max_stderr:
            del kept[: len(kept) - self._sink._max_stderr]
        return True


def _settle(finished: asyncio.Future[None], exc: BaseException | None) -> None:
    if finished.done():
        return
    if exc is None:
        finished.set_result(None)
    else:
        finished.set_exception(exc)


def _pidfd(pid: int) -> int | None:
    """A descriptor that turns readable when the process exits, where the system has them."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _exited(pid: int) -> bool:
    # WNOWAIT: look without reaping, so the pid (and with it the group's id) stays taken
    # until the group has been killed.
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The command is its process group's leader (start_new_session), so its pid names the
    # group; what it started is killed with it. Never after it was reaped: the id could be
    # another group's by then.
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _status(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _reason(head: str, stderr: bytes | bytearray) -> str:
    text = bytes(stderr).decode("utf-8", "replace").strip()
    return f"{head}: {text}" if text else head
