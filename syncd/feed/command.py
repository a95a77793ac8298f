"""The `exec` sink: runs a command per batch, the changes as JSON Lines on its stdin.

Exit status 0 means every change of the batch was handled; anything else, or still running
past `timeout`, fails the whole batch (the runner retries it). The command runs without a
shell, in a process group of its own, and that group is killed when the command exits, times
out or the delivery is cancelled: a batch's processes end with it instead of piling up one per
batch. Its stdout is discarded and its stderr kept, up to a cap, for the failure reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
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
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise SinkError(
                self._name, f"{span}: cannot run {self.command[0]!r}: {exc.strerror or exc}"
            ) from None
        stderr = bytearray()
        feeder = asyncio.create_task(self._feed(proc, payload))
        drainer = asyncio.create_task(self._drain(proc, stderr))
        try:
            async with asyncio.timeout(self.timeout):
                await _exited(proc)
                # Whatever the command left running would hold the pipes open (and outlive
                # the batch); the batch is over when the command is.
                _kill_group(proc)
                await asyncio.gather(feeder, drainer)
        except TimeoutError:
            raise SinkError(
                self._name, _reason(f"{span}: still running after {self.timeout:g} s, killed", stderr)
            ) from None
        finally:
            _kill_group(proc)
            feeder.cancel()
            drainer.cancel()
            await asyncio.gather(feeder, drainer, return_exceptions=True)
            if proc.returncode is None:
                # Killed just now: reap it so no zombie is left behind (SIGKILL cannot be
                # ignored). Not `wait()`: a process that escaped the group may hold the pipes.
                await _exited(proc)
        if proc.returncode != 0:
            raise SinkError(self._name, _reason(f"{span}: {_status(proc.returncode)}", stderr))

    async def _feed(self, proc: asyncio.subprocess.Process, payload: bytes) -> None:
        stdin = proc.stdin
        assert stdin is not None
        # A command that exits without reading all of its input is judged by its exit
        # status alone, so a closed pipe is not an error here.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.write(payload)
            await stdin.drain()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.close()
            await stdin.wait_closed()

    async def _drain(self, proc: asyncio.subprocess.Process, kept: bytearray) -> None:
        stream = proc.stderr
        assert stream is not None
        # Read to the end, so a chatty command never blocks on a full pipe, but keep only
        # the tail.
        while chunk := await stream.read(65536):
            kept += chunk
            if len(kept) > self._max_stderr:
                del kept[: len(kept) - self._max_stderr]


#: How often to look whether the command exited while something it started keeps its pipes
#: open (asyncio's `wait()` also waits for the pipes to close).
_EXIT_POLL: Final = 0.05


async def _exited(proc: asyncio.subprocess.Process) -> None:
    waiter = asyncio.ensure_future(proc.wait())
    try:
        while proc.returncode is None:
            # Normally the pipes close with the process and `wait()` returns at once.
            await asyncio.wait({waiter}, timeout=_EXIT_POLL)
    finally:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # The command is its process group's leader (start_new_session), so its pid names the
    # group; what it started is killed with it.
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
