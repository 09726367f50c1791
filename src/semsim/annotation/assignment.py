"""Who judges which item: a pure balancing algorithm (:func:`plan`) and :func:`assign`, which applies it.

Every regular item needs ``per_item`` distinct judges. Existing assignments stay; an item short of judges goes
to the least-loaded active annotators who do not hold it yet; then unanswered assignments move from the most to
the least loaded annotators until loads differ by at most one (where the items allow). Gold items go to every
active annotator. New work is appended to each queue at random positions past its end, so each queue keeps its
own order and nobody sees an item twice. A skipped or flagged item is held (not shown again to that person)
but is no judgment, so it is topped up by someone else.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from semsim.annotation.db import Annotator, Answer, Assignment, Database, Item, Project
from semsim.annotation.project import NOT_JUDGMENTS


@dataclass(frozen=True)
class Held:
    """An existing assignment: its id, holder, item, queue position and answer (None: unanswered)."""

    id: int
    person: int
    item: int
    position: float
    answer: int | None = None


@dataclass
class Plan:
    """What :func:`plan` decided: new ``(person, item, position)`` rows, ``(assignment id, person, position)``
    moves of unanswered work, and how many regular items still have fewer than ``per_item`` judges."""

    new: list[tuple[int, int, float]] = field(default_factory=list)
    moves: list[tuple[int, int, float]] = field(default_factory=list)
    short: int = 0


@dataclass
class _Tally:
    """Running state of the algorithm: who holds what, loads, queue ends, movable (unanswered) work."""

    people: list[int]
    holders: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    have: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    judges: Counter = field(default_factory=Counter)
    load: Counter = field(default_factory=Counter)
    top: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    movable: dict[int, list[Held]] = field(default_factory=lambda: defaultdict(list))

    def hold(self, person: int, item: int) -> None:
        self.holders[item].add(person)
        self.have[person].add(item)

    def give(self, person: int, item: int) -> None:
        self.hold(person, item)
        self.judges[item] += 1
        self.load[person] += 1


def _tally(people: Sequence[int], held: Sequence[Held], gold: set[int]) -> _Tally:
    t = _Tally(list(people))
    t.load.update({p: 0 for p in people})
    active = set(people)
    for h in held:
        t.hold(h.person, h.item)
        t.top[h.person] = max(t.top[h.person], h.position)
        if h.answer not in NOT_JUDGMENTS:
            t.judges[h.item] += 1
        if h.item in gold or h.person not in active:
            continue
        t.load[h.person] += 1
        if h.answer is None:
            t.movable[h.person].append(h)
    return t


def _top_up(t: _Tally, regular: list[int], per_item: int, rng: random.Random) -> list[tuple[int, int]]:
    """Give every item short of judges to the least-loaded people who do not hold it (items in random order)."""
    order = list(regular)
    rng.shuffle(order)
    new = []
    for item in order:
        need = per_item - t.judges[item]
        if need <= 0:
            continue
        free = sorted((p for p in t.people if p not in t.holders[item]), key=lambda p: (t.load[p], rng.random()))
        for person in free[:need]:
            t.give(person, item)
            new.append((person, item))
    return new


def _one_move(t: _Tally) -> tuple[Held, int] | None:
    """Take one unanswered assignment from the heaviest person who has one the lightest can take."""
    light = min(t.people, key=lambda p: t.load[p])
    for heavy in sorted(t.people, key=lambda p: -t.load[p]):
        if t.load[heavy] - t.load[light] <= 1:
            return None
        for k, h in enumerate(t.movable[heavy]):
            if light not in t.holders[h.item]:
                t.movable[heavy].pop(k)
                t.holders[h.item].discard(heavy)
                t.have[heavy].discard(h.item)
                t.hold(light, h.item)
                t.load[heavy] -= 1
                t.load[light] += 1
                return h, light
    return None


def plan(people: Sequence[int], items: Sequence[tuple[int, bool]], held: Sequence[Held], per_item: int,
         rng: random.Random, move: bool = True) -> Plan:
    """Balance the queues of the active annotators ``people`` over ``items`` (``(id, gold)``) given what is
    ``held`` already; ``move=False`` only tops up (nobody loses an item). Pure: reads nothing, writes nothing;
    the same inputs and ``rng`` state give the same plan."""
    gold = {i for i, g in items if g}
    t = _tally(people, held, gold)
    pairs = [(p, g) for p in t.people for g in sorted(gold - t.have[p])]
    for p, g in pairs:
        t.hold(p, g)
    regular = [i for i, g in items if not g]
    pairs += _top_up(t, regular, per_item, rng)
    result = Plan()
    while move and t.people and (step := _one_move(t)) is not None:
        h, light = step
        result.moves.append((h.id, light, t.top[light] + 1 + rng.random()))
    rng.shuffle(pairs)
    result.new = [(p, i, t.top[p] + 1 + rng.random()) for p, i in pairs]
    result.short = sum(1 for i in regular if t.judges[i] < per_item)
    return result


def _state(s: Session, db: Database) -> tuple[Project, list[int], list[tuple[int, bool]], list[Held]]:
    project = db.project(s)
    people = list(s.scalars(select(Annotator.id).where(Annotator.active, ~Annotator.is_admin,
                                                        ~Annotator.imported).order_by(Annotator.id)))
    items = [(i, g) for i, g in s.execute(select(Item.id, Item.gold).where(~Item.example).order_by(Item.id)).all()]
    held = [Held(*r) for r in s.execute(select(Assignment.id, Assignment.annotator_id, Assignment.item_id,
                                               Assignment.position, Answer.value)
                                        .outerjoin(Answer, Answer.assignment_id == Assignment.id)
                                        .order_by(Assignment.id)).all()]
    return project, people, items, held


def assign(db: Database, move: bool = True) -> dict:
    """Apply :func:`plan` to the database (one write transaction); return counts: assigned, moved, items_short.
    The server tops up after skips with ``move=False``, so an item on someone's screen stays theirs."""
    with db.write() as s:
        project, people, items, held = _state(s, db)
        rng = random.Random(f"{project.seed}:{len(held)}:{len(people)}")
        result = plan(people, items, held, project.per_item, rng, move)
        for aid, person, position in result.moves:
            s.execute(update(Assignment).where(Assignment.id == aid).values(annotator_id=person,
                                                                            position=position))
        s.add_all(Assignment(annotator_id=p, item_id=i, position=pos) for p, i, pos in result.new)
    return {"assigned": len(result.new), "moved": len(result.moves), "items_short": result.short}


def shortfall(db: Database) -> dict:
    """Read-only: how many regular items would stay short of judges, judges per item, active annotators."""
    with db.read() as s:
        project, people, items, held = _state(s, db)
    result = plan(people, items, held, project.per_item, random.Random(0), move=False)
    return {"items_short": result.short, "per_item": project.per_item, "annotators": len(people)}


def shortfall_warning(db: Database) -> str | None:
    """A warning line when items cannot get their judges (too few annotators), else None."""
    short = shortfall(db)
    if not short["items_short"]:
        return None
    return (f"warning: {short['items_short']} item(s) cannot get {short['per_item']} distinct judges with "
            f"{short['annotators']} active annotator(s); add annotators (`semsim annotate add-annotator`)")
