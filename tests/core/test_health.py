"""The fallback decisions, driven by an injected clock: no test here waits for real time."""

from __future__ import annotations

import pytest

from syncd.core.health import FallbackRules, Switch, WebhookHealth


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fallback_config(silence: float = 60.0, ratio: float = 0.05, recover: int = 2) -> FallbackRules:
    return FallbackRules(silence=silence, missed_ratio=ratio, recover_after=recover)


def make(
    *, silence: float = 60.0, ratio: float = 0.05, recover: int = 2, min_sample: int = 10
) -> tuple[WebhookHealth, FakeClock]:
    clock = FakeClock()
    return WebhookHealth(fallback_config(silence, ratio, recover), clock=clock, min_sample=min_sample), clock


def test_starts_in_push_and_stays_while_webhooks_bring_everything() -> None:
    health, clock = make()
    for _ in range(20):
        clock.advance(5)
        health.webhook_seen()
        assert health.poll_finished(fresh=10, applied=0) is None
        assert not health.silence_probe_due()
    assert health.mode == "push"
    assert health.switches == 0


def test_missed_share_above_ratio_switches_to_fallback_at_once() -> None:
    health, clock = make(ratio=0.05)
    switch = health.poll_finished(fresh=20, applied=6)
    assert isinstance(switch, Switch)
    assert switch.to == "fallback"
    assert switch.label == "missed"
    assert "6 of 20" in switch.reason
    assert switch.at == clock.now
    assert health.mode == "fallback"
    assert health.switches == 1


def test_missed_share_at_the_ratio_is_healthy() -> None:
    health, _ = make(ratio=0.1)
    assert health.poll_finished(fresh=20, applied=2) is None
    assert health.mode == "push"


def test_small_samples_accumulate_before_a_verdict() -> None:
    health, _ = make(min_sample=10)
    # 3 of 6: far above the ratio, but too few changes to judge yet.
    assert health.poll_finished(fresh=3, applied=2) is None
    assert health.poll_finished(fresh=3, applied=1) is None
    switch = health.poll_finished(fresh=4, applied=1)
    assert switch is not None
    assert switch.to == "fallback"
    assert "4 of 10" in switch.reason


def test_writes_of_late_visible_changes_count_even_when_not_fresh() -> None:
    # A change visible late is behind the cursor: written but not counted fresh.
    health, _ = make(min_sample=10)
    switch = health.poll_finished(fresh=2, applied=12)
    assert switch is not None
    assert switch.to == "fallback"


def test_full_listings_are_not_judged() -> None:
    health, _ = make()
    assert health.poll_finished(fresh=500, applied=500, kind="full") is None
    assert health.mode == "push"
    # ... and do not leak into the next sample either.
    assert health.poll_finished(fresh=10, applied=0) is None
    assert health.mode == "push"


def test_silence_asks_for_one_probe_per_silence_period() -> None:
    health, clock = make(silence=60)
    clock.advance(59)
    assert not health.silence_probe_due()
    clock.advance(1)
    assert health.silence_probe_due()
    health.start_probe(3)
    assert health.probing
    assert not health.silence_probe_due()
    for _ in range(3):
        assert health.poll_finished(fresh=0, applied=0) is None
    assert not health.probing
    # A quiet shop: nothing found, still push, and the next probe waits a whole period.
    assert health.mode == "push"
    clock.advance(59)
    assert not health.silence_probe_due()
    clock.advance(1)
    assert health.silence_probe_due()


def test_a_webhook_resets_the_silence_clock() -> None:
    health, clock = make(silence=60)
    clock.advance(50)
    health.webhook_seen()
    clock.advance(50)
    assert not health.silence_probe_due()
    clock.advance(10)
    assert health.silence_probe_due()


def test_probe_that_finds_unbrought_changes_is_unhealthy_even_below_the_sample() -> None:
    health, clock = make(silence=60)
    clock.advance(60)
    assert health.silence_probe_due()
    health.start_probe(2)
    assert health.poll_finished(fresh=0, applied=0) is None
    switch = health.poll_finished(fresh=1, applied=1)
    assert switch is not None
    assert switch.to == "fallback"
    assert switch.label == "silence"
    assert "no webhook for 60s" in switch.reason


def test_a_probe_whose_polls_never_report_expires() -> None:
    health, clock = make(silence=10)
    clock.advance(10)
    health.start_probe(3)
    assert health.poll_finished(fresh=0, applied=0) is None  # the other two failed
    clock.advance(10)
    assert health.silence_probe_due()
    assert not health.probing


def test_no_probes_in_fallback() -> None:
    health, clock = make(silence=10)
    health.poll_finished(fresh=10, applied=10)
    assert health.mode == "fallback"
    clock.advance(1000)
    assert not health.silence_probe_due()


def test_recovery_needs_recover_after_healthy_checks_in_a_row() -> None:
    health, _ = make(recover=3)
    health.poll_finished(fresh=10, applied=10)
    assert health.mode == "fallback"
    assert health.poll_finished(fresh=10, applied=0) is None
    assert health.poll_finished(fresh=10, applied=0) is None
    assert health.healthy_streak == 2
    # One unhealthy check in between starts the count again: no flapping.
    assert health.poll_finished(fresh=10, applied=5) is None
    assert health.healthy_streak == 0
    assert health.mode == "fallback"
    assert health.poll_finished(fresh=10, applied=0) is None
    assert health.poll_finished(fresh=10, applied=0) is None
    switch = health.poll_finished(fresh=10, applied=0)
    assert switch is not None
    assert switch.to == "push"
    assert switch.label == "recovered"
    assert health.mode == "push"
    assert health.switches == 2


def test_quiet_polls_are_no_evidence_either_way() -> None:
    health, _ = make(recover=1)
    health.poll_finished(fresh=10, applied=10)
    for _ in range(50):
        assert health.poll_finished(fresh=0, applied=0) is None
    assert health.mode == "fallback"


def test_receiver_down_is_unhealthy_and_blocks_recovery() -> None:
    health, _ = make(recover=1)
    switch = health.receiver_state(False)
    assert switch is not None
    assert switch.to == "fallback"
    assert switch.label == "receiver down"
    # Still down: no repeated switch, and healthy polls cannot bring push back.
    assert health.receiver_state(False) is None
    assert health.poll_finished(fresh=10, applied=0) is None
    assert health.mode == "fallback"
    assert health.receiver_state(True) is None
    switch = health.poll_finished(fresh=10, applied=0)
    assert switch is not None
    assert switch.to == "push"


def test_reloaded_thresholds_apply_to_the_next_verdict() -> None:
    health, _ = make(ratio=0.05)
    health.update_config(fallback_config(60, 0.5, 2))
    assert health.poll_finished(fresh=10, applied=4) is None
    assert health.mode == "push"
    assert health.config.missed_ratio == 0.5


@pytest.mark.parametrize(("fresh", "applied"), [(-1, 0), (0, -1)])
def test_negative_counts_are_rejected(fresh: int, applied: int) -> None:
    health, _ = make()
    with pytest.raises(ValueError, match="must be >= 0"):
        health.poll_finished(fresh=fresh, applied=applied)


def test_invalid_construction_is_rejected() -> None:
    with pytest.raises(ValueError, match="min_sample"):
        WebhookHealth(fallback_config(), clock=FakeClock(), min_sample=0)
    health, _ = make()
    with pytest.raises(ValueError, match="at least one poll"):
        health.start_probe(0)


def test_the_first_poll_of_each_resource_after_a_start_is_not_judged() -> None:
    clock = FakeClock()
    health = WebhookHealth(fallback_config(ratio=0.05), clock=clock, catching_up=("orders", "customers"))
    # Everything changed while the daemon was down is written by the catch-up polls.
    assert health.poll_finished(fresh=12, applied=12, resource="orders") is None
    assert health.poll_finished(fresh=30, applied=30, resource="customers") is None
    assert health.mode == "push"
    # From the second poll of a resource on, polls are judged again.
    switch = health.poll_finished(fresh=12, applied=12, resource="orders")
    assert switch is not None
    assert switch.to == "fallback"
    assert "12 of 12" in switch.reason


def test_a_resource_not_catching_up_is_judged_from_its_first_poll() -> None:
    health = WebhookHealth(fallback_config(ratio=0.05), clock=FakeClock(), catching_up=("orders",))
    switch = health.poll_finished(fresh=12, applied=12, resource="inventory")
    assert switch is not None
    assert switch.to == "fallback"
