"""The connection limit's hill climb (`scheduler.RateClimber`), driven window by window with the rate
a host of a known shape would give: no clock and no threads, so each case is exact.

The engine feeds it the measured rate of every 0.25 s window (tests/test_scale.py checks the whole
loop against the test Hub behind a per-connection cap)."""

from __future__ import annotations

import random
from collections.abc import Callable

from prefetch.download.scheduler import RateClimber

CEILING = 32


def climb(
    climber: RateClimber, rate_at: Callable[[int, int], float], windows: int, *, short: bool = True
) -> list[int]:
    """The limit after each window; `rate_at(limit, window)` is the host's rate with that many
    connections; `short`: its requests end within a window."""
    limits = []
    for window in range(windows):
        limits.append(climber.observe(rate_at(climber.limit, window), waiting=True, short=short))
    return limits


def share(limits: list[int], value: int) -> float:
    return limits.count(value) / len(limits)


def capped_per_connection(limit: int, _window: int) -> float:
    """A CDN that caps each connection: every connection adds its share."""
    return 20e6 * limit


def peak_at_4(limit: int, _window: int) -> float:
    """A fast local server and a busy CPU: more than 4 connections only compete."""
    return {1: 40.0, 2: 70.0, 4: 100.0, 8: 97.0, 16: 93.0, 32: 88.0}[limit]


def test_behind_a_per_connection_cap_the_limit_stays_at_the_ceiling() -> None:
    limits = climb(RateClimber(CEILING), capped_per_connection, 200)
    assert max(limits) == CEILING
    assert share(limits, CEILING) >= 0.9  # a halving costs a window, and is tried ever more rarely
    assert share(limits[100:], CEILING) >= 0.95


def test_the_limit_climbs_back_when_more_connections_pay() -> None:
    limits = climb(RateClimber(CEILING, start=2), capped_per_connection, 40)
    assert limits[:5] == [2, 4, 8, 16, 32]  # one doubling a window after the first (the warm-up)
    assert share(limits[5:], CEILING) >= 0.9


def test_where_connections_only_compete_the_limit_comes_down_to_the_best() -> None:
    limits = climb(RateClimber(CEILING), peak_at_4, 200)
    assert limits[:5] == [32, 16, 8, 4, 2]  # each halving kept while the rate holds
    assert limits[5] == 4  # 2 lost rate: undone
    assert share(limits[5:], 4) >= 0.85  # probes either way are rare and each is undone


def test_a_sudden_fall_of_the_rate_halves_the_limit_at_once() -> None:
    def falls(limit: int, window: int) -> float:
        return capped_per_connection(limit, window) * (0.3 if window >= 50 else 1.0)

    limits = climb(RateClimber(CEILING), falls, 80)
    at_fall = limits[49]
    assert limits[50] == at_fall // 2
    assert limits[60:] and max(limits[60:]) == CEILING  # per-connection cap again: it climbs back


def test_the_limit_stays_within_one_and_the_ceiling_whatever_the_rates() -> None:
    rng = random.Random(13)
    climber = RateClimber(8)
    for _ in range(5000):
        rate = rng.choice([0.0, rng.uniform(0, 1e9)])
        limit = climber.observe(rate, waiting=rng.random() < 0.7, short=rng.random() < 0.7)
        assert 1 <= limit <= 8


def test_without_requests_waiting_it_does_not_grow() -> None:
    climber = RateClimber(CEILING, start=4)
    limits = [
        climber.observe(capped_per_connection(climber.limit, 0), waiting=False, short=True) for _ in range(30)
    ]
    assert max(limits) == 4


def test_while_requests_are_long_it_does_not_try_fewer_connections() -> None:
    """A halving takes effect only as requests in flight end: with big segments that takes seconds,
    too long a loss for a probe. A fall of the rate still halves the limit."""
    assert set(climb(RateClimber(CEILING), peak_at_4, 100, short=False)) == {CEILING}

    def falls(limit: int, window: int) -> float:
        return capped_per_connection(limit, window) * (0.3 if window >= 50 else 1.0)

    assert climb(RateClimber(CEILING), falls, 60, short=False)[50] == CEILING // 2


def test_a_moved_ceiling_takes_a_limit_at_or_above_it_along() -> None:
    """A helper process takes its share of the connections, then gives it back (`HostLimits.resize`)."""
    capped = RateClimber(32)
    assert capped.resize(-16) == 16 and capped.ceiling == 16
    assert capped.resize(16) == 32 and capped.ceiling == 32
    assert climb(capped, capped_per_connection, 20)[-1] == 32
    peaked = RateClimber(16)
    climb(peaked, peak_at_4, 60)
    before = peaked.limit
    assert before < 16 and peaked.resize(16) == before  # below the old ceiling: the climb decides
    assert peaked.resize(-31) == 1  # never below one connection


def test_a_ceiling_raised_while_a_halving_from_it_is_judged_takes_the_limit_along() -> None:
    """A helper process gave its connections back while the parent's limit was probing half its
    ceiling: the probe was then judged against the rate before the helper stopped competing (and
    could pay), and the limit stayed at or under half of `--jobs`."""
    climber = RateClimber(8)
    assert climb(climber, capped_per_connection, 2) == [8, 4]  # the warm-up window, then a halving
    assert climber.resize(8) == 16
    assert max(climb(climber, capped_per_connection, 3)) == 16  # not held at 8 after a probe undone
