"""Choosing which part to hedge, and where to split it (times and rates simulated)."""

from __future__ import annotations

from modelpull.hedge import Span, budget, choose

MiB = 1 << 20


def span(index: int, done: int, began: float, size: int = 8 * MiB) -> Span:
    start = index * size
    return Span("w", index, start, start + size, began=began, offset=start + done)


def test_the_slow_part_is_split_where_both_should_end_together() -> None:
    fast = [span(i, 6 * MiB, began=0.0) for i in range(3)]  # 3 MiB/s each, at t=2
    slow = span(3, 200_000, began=0.0)  # 100 kB/s
    picked = choose([*fast, slow], [], now=2.0, idle=2, min_piece=MiB)
    assert [(s.index, split) for s, split in picked] == [(3, slow.start + 2 * MiB)]
    (target, split) = picked[0]
    assert target.shorten(split, MiB) and target.end == split and target.hedged
    assert not target.shorten(split, MiB)  # hedged once only


def test_nothing_is_hedged_without_idle_hands_peers_or_time() -> None:
    fast = [span(i, 6 * MiB, began=0.0) for i in range(3)]
    slow = span(3, 200_000, began=0.0)
    assert choose([*fast, slow], [], now=2.0, idle=0, min_piece=MiB) == []
    assert choose([slow], [], now=2.0, idle=2, min_piece=MiB) == []  # no peer to compare
    young = span(3, 20_000, began=1.8)  # too young for its rate to mean anything
    assert choose([*fast, young], [], now=2.0, idle=2, min_piece=MiB) == []
    nearly = span(3, 8 * MiB - 150_000, began=0.0)  # slow, but it ends within 2 s
    assert choose([*fast, nearly], [3e6], now=2.0, idle=2, min_piece=MiB) == []


def test_a_split_too_close_to_the_request_is_refused() -> None:
    part = span(0, 0, began=0.0)
    part.offset = part.start + 3 * MiB  # the request went on since the choice
    assert not part.shorten(part.start + 3 * MiB, MiB)
    part.take_back()
    assert (part.end, part.hedged) == (part.full_end, False)


def test_the_budget_keeps_thrown_away_bytes_under_5_percent() -> None:
    assert budget(1 << 30, MiB) * (MiB + (4 << 20)) <= 0.05 * (1 << 30)
    assert budget(1000, MiB) == 1  # one hedge always allowed


def test_parts_that_have_not_moved_yet_are_not_compared() -> None:
    # Every request waiting for its first byte: no rate to compare, and no division by 0.
    still = [span(i, 0, began=0.0) for i in range(4)]
    assert choose(still, [], now=5.0, idle=2, min_piece=MiB) == []
    assert choose(still, [0.0, 0.0], now=5.0, idle=2, min_piece=MiB) == []
