"""`syncd run` as a child process, the way an operator or systemd runs it: a config file,
an environment, its output in a log file, stopped with SIGTERM (killed only if it hangs).

The demo runs its daemon this way, and so do the end-to-end tests.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx


class DaemonProcess:
    """One `syncd run --config CONFIG` child. `env` is its whole environment."""

    def __init__(
        self, config: Path, env: Mapping[str, str], log_path: Path, *, own_session: bool = False
    ) -> None:
        self.config_path = config
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run", "--config", str(config)],
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # In its own session, Ctrl-C in a terminal reaches only the parent, which then
            # stops the daemon in order instead of both racing.
            start_new_session=own_session,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait_healthy(self, admin_url: str, timeout: float = 30.0) -> None:
        """Until the admin listener answers /healthz; RuntimeError if the daemon exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{admin_url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the daemon did not become healthy within {timeout:.0f}s; see {self.log_path}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, as systemd stops it; SIGKILL after `timeout`. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
