"""When push mode stops trusting its webhooks, and when it trusts them again.

Pure logic with an injected clock: the daemon's mode control (syncd.service.modes) feeds it
what it observes (webhooks arriving, whether the receiver serves, what each poll had to
write) and acts on what it returns (a `Switch`, or "probe now"). Nothing here sleeps, polls or logs, so every rule is tested
without real time.

Rules (design.md, "Modes"):
- The receiver not serving is unhealthy.
- Silence is ambiguous, so no webhook for `fallback.silence` asks for a probe: a poll at once.
  If the probe's polls write anything (changes no webhook brought), that is unhealthy.
- Polls that write more than `fallback.missed_ratio` of the fresh changes they see are
  unhealthy: webhooks should have brought those changes first. The share is judged over at
  least `min_sample` fresh changes, so one race between a webhook and a poll in a quiet
  moment does not count as a verdict. Full listings are not judged: they re-read everything,
  including what no webhook was ever going to send.
- The first poll of each resource after a start is not judged: it catches up on everything
  that changed while the daemon was down, which no webhook could bring (the provider's
  retries race it), so it says nothing about the webhooks.
- One unhealthy verdict switches to fallback at once (missing changes is the costly
  failure); returning takes `fallback.recover_after` healthy verdicts in a row, so a
  borderline endpoint does not flap between the two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

HealthMode = Literal["push", "fallback"]
DEFAULT_MIN_SAMPLE = 10


@dataclass(frozen=True, slots=True)
class FallbackRules:
    """The thresholds of the rules above (the `[fallback]` section, as plain values)."""

    #: Seconds without a webhook before a probe poll.
    silence: float
    #: Share of fresh changes polls may write before the webhooks count as missing them.
    missed_ratio: float
    #: Healthy verdicts in a row needed to leave fallback.
    recover_after: int


@dataclass(frozen=True, slots=True)
class Switch:
    """A mode change and why it happened; `at` is on the monitor's clock."""

    to: HealthMode
    reason: str
    at: float

    @property
    def label(self) -> str:
        """A short reason class for metric labels (the full reason goes to logs and _meta)."""
        return self.reason.split(":", 1)[0]


class WebhookHealth:
    """Decides between push (poll at the safety interval) and fallback (poll at the interval)."""

    def __init__(
        self,
        rules: FallbackRules,
        *,
        clock: Callable[[], float],
        min_sample: int = DEFAULT_MIN_SAMPLE,
        mode: HealthMode = "push",
        catching_up: Iterable[str] = (),
    ) -> None:
        """`catching_up`: resources whose next poll (the first after a start) is not judged."""
        if min_sample < 1:
            raise ValueError(f"min_sample must be at least 1, got {min_sample}")
        self._cfg = rules
        self._clock = clock
        self._min_sample = min_sample
        self.mode: HealthMode = mode
        self.reason = "started" if mode == "push" else "started in fallback"
        self.since = clock()
        self.switches = 0
        self.healthy_streak = 0
        self.last_webhook_at: float | None = None
        self._quiet_since = self.since
        self._probe_left = 0
        self._probe_started = self.since
        self._receiver_serving = True
        self._fresh = 0
        self._applied = 0
        self._catching_up = set(catching_up)

    @property
    def config(self) -> FallbackRules:
        return self._cfg

    def update_config(self, rules: FallbackRules) -> None:
        """A reloaded [fallback] section applies from the next observation on."""
        self._cfg = rules

    @property
    def probing(self) -> bool:
        return self._probe_left > 0

    # -- observations -------------------------------------------------------------------

    def webhook_seen(self, at: float | None = None) -> None:
        """A delivery arrived (at `at` on the monitor's clock, default now)."""
        at = self._clock() if at is None else at
        if self.last_webhook_at is None or at > self.last_webhook_at:
            self.last_webhook_at = at
            self._quiet_since = max(self._quiet_since, at)

    def receiver_state(self, serving: bool) -> Switch | None:
        """Whether the public listener serves; checked on every tick of the daemon."""
        self._receiver_serving = serving
        if not serving:
            return self._verdict(
                False, "receiver down: the webhook listener (or the JetStream consumer) is not serving"
            )
        return None

    def silence_probe_due(self) -> bool:
        """True once per silence period in push mode: the daemon should poll at once and
        call `start_probe` and report each poll through `poll_finished`."""
        if self.probing and self._clock() - self._probe_started >= self._cfg.silence:
            # A probe poll that failed never reports; give up on it after a silence period.
            self._probe_left = 0
        if self.mode != "push" or self.probing:
            return False
        return self._clock() - self._quiet_since >= self._cfg.silence

    def start_probe(self, polls: int) -> None:
        """The daemon triggered `polls` polls (one per resource) because of silence."""
        if polls < 1:
            raise ValueError(f"a probe needs at least one poll, got {polls}")
        self._probe_left = polls
        self._probe_started = self._clock()
        # The next probe waits for another full silence period.
        self._quiet_since = self._clock()

    def poll_finished(
        self, *, fresh: int, applied: int, kind: str = "incremental", resource: str | None = None
    ) -> Switch | None:
        """One poll of one resource finished: it saw `fresh` new changes and had to write
        `applied` records. While a probe is out, its polls are the next ones to finish.
        Returns the switch it causes, if any."""
        if fresh < 0 or applied < 0:
            raise ValueError(f"fresh and applied must be >= 0, got fresh={fresh} applied={applied}")
        is_probe = self._probe_left > 0
        if is_probe:
            self._probe_left -= 1
        if resource is not None and resource in self._catching_up:
            self._catching_up.discard(resource)
            return None
        if kind == "full":
            return None
        if is_probe and applied > 0:
            self._reset_sample()
            quiet = self._cfg.silence
            return self._verdict(
                False,
                f"silence: no webhook for {quiet:g}s and a poll found {applied} change(s) no webhook brought",
            )
        self._fresh += fresh
        self._applied += applied
        # A change that became visible late has an updatedAt behind the cursor: a poll can
        # write it without counting it fresh. Judge writes over whichever count is larger.
        seen = max(self._fresh, self._applied)
        if seen < self._min_sample:
            return None
        share = self._applied / seen
        fresh_total, applied_total = seen, self._applied
        self._reset_sample()
        if share > self._cfg.missed_ratio:
            return self._verdict(
                False,
                f"missed: polls wrote {applied_total} of {fresh_total} fresh change(s) "
                f"({share:.0%} > {self._cfg.missed_ratio:.0%}), webhooks missed them",
            )
        return self._verdict(
            True, f"healthy: webhooks brought {fresh_total - applied_total} of {fresh_total}"
        )

    def _reset_sample(self) -> None:
        self._fresh = 0
        self._applied = 0

    # -- decisions ----------------------------------------------------------------------

    def _verdict(self, healthy: bool, reason: str) -> Switch | None:
        if not healthy:
            self.healthy_streak = 0
            if self.mode == "push":
                return self._switch("fallback", reason)
            return None
        if self.mode == "push" or not self._receiver_serving:
            return None
        self.healthy_streak += 1
        if self.healthy_streak >= self._cfg.recover_after:
            return self._switch(
                "push", f"recovered: {self.healthy_streak} healthy checks in a row ({reason})"
            )
        return None

    def _switch(self, to: HealthMode, reason: str) -> Switch:
        now = self._clock()
        self.mode = to
        self.reason = reason
        self.since = now
        self.switches += 1
        self.healthy_streak = 0
        self._quiet_since = now
        self._reset_sample()
        return Switch(to, reason, now)
