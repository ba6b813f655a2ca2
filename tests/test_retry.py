"""The one backoff policy: jittered, geometric, capped, reset after success."""

from __future__ import annotations

import random

from collector.retry import AttemptBudget, Backoff


def test_backoff_grows_geometrically_with_jitter_up_to_the_cap_and_resets() -> None:
    """Each delay lies in [d/2, d] for d = initial * 2**n capped at max; reset starts over."""
    backoff = Backoff(1.0, 10.0, rng=random.Random(3))
    delays = [backoff.next_delay() for _ in range(7)]
    for n, delay in enumerate(delays):
        ceiling = min(10.0, 2.0**n)
        assert ceiling / 2 <= delay <= ceiling
    assert delays[-1] <= 10.0
    backoff.reset()
    assert 0.5 <= backoff.next_delay() <= 1.0


def test_attempt_budget_books_at_most_limit_attempts_per_window() -> None:
    """Three attempts per 10 s: the fourth waits for the first to leave the window, and so on."""
    now = [100.0]
    budget = AttemptBudget(3, 10.0, clock=lambda: now[0])
    assert [budget.reserve() for _ in range(3)] == [100.0, 100.0, 100.0]
    assert budget.reserve() == 110.0
    assert budget.reserve(105.0) == 110.0
    assert budget.reserve(111.0) == 111.0
    now[0] = 200.0
    assert [budget.reserve() for _ in range(3)] == [200.0, 200.0, 200.0]
