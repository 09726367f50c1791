"""What the admin sees: progress per set and annotator, gold accuracy, agreement, disputed and flagged items.

Flagged (broken image) and skipped answers are counted apart and left out of the judgments. Plain Python over
the answer rows (one query): a study of 10,000 answers is summarised in well under a second.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import NamedTuple

from sqlalchemy import func, select

from semsim.annotation.agreement import agreement
from semsim.annotation.db import Annotator, Answer, Assignment, Database, Item
from semsim.annotation.project import FLAG, NOT_JUDGMENTS, SKIP, ProjectInfo, project_info


class AnswerRow(NamedTuple):
    answer_id: int
    item_id: int
    set: str
    image_id: str
    label: int | None
    gold: bool
    gold_answer: int | None
    annotator_id: int
    annotator: str
    value: int
    created: str  # ISO 8601 UTC, e.g. 2026-12-01T10:00:00.123456


def answer_rows(db: Database) -> list[AnswerRow]:
    """Every answer with its item and annotator, in submission order, flags and skips included (-2, -3).

    The time comes as text (no per-row date parsing: that was most of the dashboard's time)."""
    query = (select(Answer.id, Answer.item_id, Item.set, Item.image_id, Item.label, Item.gold, Item.gold_answer,
                    Answer.annotator_id, Annotator.name, Answer.value, Answer.created)
             .join(Item, Item.id == Answer.item_id).join(Annotator, Annotator.id == Answer.annotator_id)
             .order_by(Answer.id))
    with db.connect() as s:  # the driver's own rows: SQLAlchemy's per-row type processing is skipped
        rows = s.exec_driver_sql(str(query.compile(s.engine))).fetchall()
    return [AnswerRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], r[7], r[8], r[9], str(r[10]).replace(" ", "T"))
            for r in rows]


def judgments(rows: Iterable[AnswerRow]) -> list[AnswerRow]:
    """The answers that are judgments (flags and skips left out)."""
    return [r for r in rows if r.value not in NOT_JUDGMENTS]


def _agreement_rows(rows: list[AnswerRow], info: ProjectInfo) -> dict[str, float]:
    units: dict[int, list[int]] = defaultdict(list)
    recognized: dict[int, list[bool]] = defaultdict(list)
    for r in rows:
        units[r.item_id].append(r.value)
        recognized[r.item_id].append(info.recognized(r.value, r.label))
    out = {f"answers_{k}": v for k, v in agreement(units.values()).items()}
    out.update({f"recognized_{k}": v for k, v in agreement(recognized.values()).items() if k != "n_units"})
    return out


def _set_rows(items: list[tuple[int, str]], rows: list[AnswerRow], regular: list[AnswerRow],
              info: ProjectInfo) -> list[dict]:
    counts = Counter(r.item_id for r in regular)
    actions = Counter((r.set, r.value) for r in rows if r.value in NOT_JUDGMENTS and not r.gold)
    by_set: dict[str, list[AnswerRow]] = defaultdict(list)
    for r in regular:
        by_set[r.set].append(r)
    members: dict[str, list[int]] = defaultdict(list)
    for item_id, name in items:
        members[name].append(item_id)
    out = []
    for name in sorted(members):
        n = [counts[i] for i in members[name]]
        out.append({"set": name, "items": len(n), "answers": sum(n), "needed": len(n) * info.per_item,
                    "complete": sum(k >= info.per_item for k in n), "flagged": actions[(name, FLAG)],
                    "skipped": actions[(name, SKIP)], **_agreement_rows(by_set[name], info)})
    return out


def _annotator_rows(db: Database, rows: list[AnswerRow]) -> list[dict]:
    with db.connect() as s:
        people = s.execute(select(Annotator.id, Annotator.name, Annotator.is_admin, Annotator.active,
                                  Annotator.imported)).all()
        assigned = dict(s.execute(select(Assignment.annotator_id, func.count())
                                  .group_by(Assignment.annotator_id)).all())
    by_person: dict[int, list[AnswerRow]] = defaultdict(list)
    for r in rows:
        by_person[r.annotator_id].append(r)
    out = []
    for aid, name, is_admin, active, imported in people:
        if is_admin:
            continue
        mine = by_person[aid]
        gold = judgments(r for r in mine if r.gold)
        out.append({
            "name": name, "active": active, "imported": imported, "assigned": int(assigned.get(aid, 0)),
            "done": len(mine), "gold_answered": len(gold),
            "gold_accuracy": sum(r.value == r.gold_answer for r in gold) / len(gold) if gold else float("nan"),
            "flagged": sum(r.value == FLAG for r in mine), "skipped": sum(r.value == SKIP for r in mine),
            "last": max(r.created for r in mine) if mine else None,
        })
    return out


def _tally_text(values: list[int], info: ProjectInfo) -> str:
    return ", ".join(f"{info.text(v)} x{c}" for v, c in Counter(values).most_common())


def _disputed(regular: list[AnswerRow], info: ProjectInfo, n: int) -> list[dict]:
    values: dict[int, list[int]] = defaultdict(list)
    meta = {}
    for r in regular:
        values[r.item_id].append(r.value)
        meta[r.item_id] = (r.set, r.image_id)
    scored = []
    for item_id, vals in values.items():
        if len(vals) >= 2:
            dispute = 1.0 - Counter(vals).most_common(1)[0][1] / len(vals)
            scored.append((dispute, len(vals), item_id))
    scored.sort(key=lambda t: (-t[0], -t[1], t[2]))
    return [{"item_id": item_id, "set": meta[item_id][0], "image_id": meta[item_id][1], "dispute": dispute,
             "n": count, "answers": _tally_text(values[item_id], info)}
            for dispute, count, item_id in scored[:n] if dispute > 0]


def _flagged(rows: list[AnswerRow]) -> list[dict]:
    by_item: dict[int, list[AnswerRow]] = defaultdict(list)
    for r in rows:
        if r.value == FLAG:
            by_item[r.item_id].append(r)
    return [{"item_id": item_id, "set": flags[0].set, "image_id": flags[0].image_id,
             "by": ", ".join(r.annotator for r in flags)} for item_id, flags in sorted(by_item.items())]


def dashboard(db: Database, n_disputed: int = 20) -> dict:
    """Everything the admin page shows: progress per set and annotator, gold accuracy, agreement, disputes,
    the items flagged as broken."""
    info = project_info(db)
    rows = answer_rows(db)
    with db.connect() as s:
        items = [(i, name) for i, name in s.execute(select(Item.id, Item.set).where(~Item.example, ~Item.gold))]
    regular = judgments(r for r in rows if not r.gold)
    return {"info": info, "overall": _agreement_rows(regular, info), "sets": _set_rows(items, rows, regular, info),
            "annotators": _annotator_rows(db, rows), "disputed": _disputed(regular, info, n_disputed),
            "flagged": _flagged(rows), "n_answers": len(regular), "n_items": len(items),
            "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
