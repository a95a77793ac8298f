"""The cursor's trust rules, on their own: which stored cursor and which listed stamps count."""

from __future__ import annotations

from syncd.poll.cursor import FutureSightings, cursor_problem, instant_ms, later, trust_limit

NOW = 1_700_000_000.0


def test_the_api_clock_judges_unless_it_is_far_ahead_of_ours() -> None:
    assert trust_limit(None, NOW, 300) == int((NOW + 300) * 1000)
    assert trust_limit(NOW - 60, NOW, 300) == int((NOW - 60 + 300) * 1000)
    # A Date header an hour ahead vouches for no more than our clock plus the skew.
    assert trust_limit(NOW + 3600, NOW, 300) == int((NOW + 600) * 1000)


def test_a_stored_cursor_that_is_no_instant_or_far_ahead_is_not_trusted() -> None:
    assert cursor_problem(None, NOW, 300) is None
    assert cursor_problem("2023-11-14T22:13:20.000Z", NOW, 300) is None
    assert "not an instant" in (cursor_problem("yesterday", NOW, 300) or "")
    assert "in the future" in (cursor_problem("2099-01-01T00:00:00.000Z", NOW, 300) or "")


def test_instants_and_the_later_of_two() -> None:
    assert instant_ms("1970-01-01T00:00:01.500Z") == 1500
    assert instant_ms("not a time") is None
    assert instant_ms(None) is None
    assert later(None, 5) == 5
    assert later(7, None) == 7
    assert later(7, 9) == 9


def test_a_far_future_record_is_reported_once_and_the_memory_is_bounded() -> None:
    seen = FutureSightings(capacity=2)
    assert seen.first_sighting("orders", 1, 10)
    assert not seen.first_sighting("orders", 1, 10)
    assert seen.first_sighting("orders", 1, 11)  # a new stamp is a new sighting
    assert seen.first_sighting("orders", 2, 10)  # evicts (orders, 1, 10), the least recent
    assert seen.first_sighting("orders", 1, 10)
