"""The assignment algorithm as a pure function: distinct judges, balance, gold to all, top-ups after skips,
moves of unanswered work only, determinism. Checked against direct counts, no database involved."""

from __future__ import annotations

import random
from collections import Counter

from semsim.annotation.assignment import Held, plan
from semsim.annotation.project import FLAG, SKIP


def _queues(held: list[Held], result) -> dict[int, list[int]]:
    """Person -> items after applying the plan (moves change the holder of an assignment)."""
    rows = {h.id: (h.person, h.item) for h in held}
    for aid, person, _ in result.moves:
        rows[aid] = (person, rows[aid][1])
    out: dict[int, list[int]] = {}
    for person, item in [*rows.values(), *((p, i) for p, i, _ in result.new)]:
        out.setdefault(person, []).append(item)
    return out


def test_fresh_plan_is_distinct_balanced_and_seeded():
    people, items = [1, 2, 3, 4], [(i, False) for i in range(1, 31)]
    result = plan(people, items, [], per_item=3, rng=random.Random(5))
    queues = _queues([], result)
    assert sorted(len(q) for q in queues.values()) == [22, 22, 23, 23]  # 90 judgments over 4 people
    assert all(len(q) == len(set(q)) for q in queues.values())
    assert set(Counter(i for q in queues.values() for i in q).values()) == {3}
    assert result.moves == [] and result.short == 0
    again = plan(people, items, [], per_item=3, rng=random.Random(5))
    assert again.new == result.new  # the same seed gives the same plan
    assert plan(people, items, [], per_item=3, rng=random.Random(6)).new != result.new


def test_gold_goes_to_everybody_and_too_few_people_leave_items_short():
    items = [(1, True), (2, True), *((i, False) for i in range(3, 13))]
    result = plan([7, 8], items, [], per_item=3, rng=random.Random(0))
    queues = _queues([], result)
    assert all({1, 2} <= set(q) for q in queues.values())
    assert result.short == 10  # two people cannot be three distinct judges
    assert Counter(i for q in queues.values() for i in q if i > 2) == dict.fromkeys(range(3, 13), 2)


def test_newcomer_takes_only_unanswered_work():
    items = [(i, False) for i in range(1, 9)]
    first = plan([1, 2], items, [], per_item=1, rng=random.Random(1))
    held = [Held(k, p, i, pos, answer=0 if k % 2 else None) for k, (p, i, pos) in enumerate(first.new, 1)]
    result = plan([1, 2, 3], items, held, per_item=1, rng=random.Random(2))
    answered = {h.id for h in held if h.answer is not None}
    assert result.new == []
    assert result.moves and all(aid not in answered and person == 3 for aid, person, _ in result.moves)
    loads = Counter(p for p, q in _queues(held, result).items() for _ in q)
    assert max(loads.values()) - min(loads.values()) <= 1
    # a new assignment lands past the end of the receiving queue
    assert all(pos > 0 for _, _, pos in result.moves)
    assert plan([1, 2, 3], items, held, per_item=1, rng=random.Random(2), move=False).moves == []


def test_skips_and_flags_are_topped_up_by_someone_else():
    items = [(1, False), (2, False)]
    held = [Held(1, 10, 1, 1.0, answer=SKIP), Held(2, 11, 1, 1.0, answer=0),
            Held(3, 10, 2, 2.0, answer=FLAG), Held(4, 11, 2, 2.0, answer=1)]
    result = plan([10, 11, 12], items, held, per_item=2, rng=random.Random(0), move=False)
    assert sorted((p, i) for p, i, _ in result.new) == [(12, 1), (12, 2)]  # neither 10 nor 11 twice
    assert result.short == 0
    # with nobody left who does not hold the item, it stays short
    assert plan([10, 11], items, held, per_item=2, rng=random.Random(0)).short == 2
