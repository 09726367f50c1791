"""Answers: checking a request, storing answers (once per assignment), the queue's next item, undo.

An answer is checked completely (item id bounds, value, submit id length and characters) before it reaches
the database, so a malformed request fails alone. Answers are stored once per assignment (unique constraint):
a repeated submit is acknowledged as a duplicate and stores nothing; an answer for an item not in the
annotator's queue is a :class:`~semsim.annotation.project.NotAssigned` error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from semsim.annotation.db import Answer, Assignment, Database, utcnow
from semsim.annotation.project import NotAssigned, ProjectInfo
from semsim.errors import SemsimError

MAX_ID = 2**31 - 1  # the largest id an INTEGER column holds on every database (PostgreSQL: 4 bytes)
SUBMIT_ID = re.compile(r"[!-~]{1,64}")  # printable ASCII, the form's random id or a script's own


# built once: these run on every answer, and building a statement costs more than running it
_FIND = (select(Assignment.id, Answer.id).outerjoin(Answer, Answer.assignment_id == Assignment.id)
         .where(Assignment.annotator_id == bindparam("person"), Assignment.item_id == bindparam("item")))
_INSERT = insert(Answer)
_NEXT = (select(Assignment.item_id).outerjoin(Answer, Answer.assignment_id == Assignment.id)
         .where(Assignment.annotator_id == bindparam("person"), Answer.id.is_(None))
         .order_by(Assignment.position).limit(1))
_TOTAL = select(func.count()).select_from(Assignment).where(Assignment.annotator_id == bindparam("person"))
_DONE = select(func.count()).select_from(Answer).where(Answer.annotator_id == bindparam("person"))
_HOLDS = select(Assignment.id).where(Assignment.annotator_id == bindparam("person"),
                                     Assignment.item_id == bindparam("item"))


class InvalidAnswer(SemsimError):
    """A malformed answer request (refused before it reaches the database)."""


class AnswerRequest(NamedTuple):
    annotator_id: int
    item_id: int
    value: int
    submit_id: str | None = None


def check_answer(info: ProjectInfo, annotator_id: int, item_id: object, value: object,
                 submit_id: object = None) -> AnswerRequest:
    """A validated :class:`AnswerRequest`, or :class:`InvalidAnswer` naming the bad field."""
    for name, number in (("item_id", item_id), ("value", value)):
        if not isinstance(number, int) or isinstance(number, bool):
            raise InvalidAnswer(f"{name} {str(number)[:40]!r}: not an integer")
    if not 1 <= item_id <= MAX_ID:  # type: ignore[operator]
        raise InvalidAnswer(f"item_id {str(item_id)[:40]}: out of range; give an item id from your queue")
    if submit_id is not None and (not isinstance(submit_id, str) or not SUBMIT_ID.fullmatch(submit_id)):
        raise InvalidAnswer(f"submit_id {str(submit_id)[:40]!r}...: must be 1-64 printable ASCII characters")
    try:
        info.check_value(value)  # type: ignore[arg-type]
    except SemsimError as exc:
        raise InvalidAnswer(str(exc)) from None
    return AnswerRequest(annotator_id, item_id, value, submit_id)  # type: ignore[arg-type]


def store_answers(db: Database, answers: list[AnswerRequest]) -> list[bool | NotAssigned]:
    """Store several checked answers in one transaction (one commit): per answer True (stored), False (that
    assignment was already answered: a duplicate) or a :class:`NotAssigned` error."""
    results: list[bool | NotAssigned] = []
    rows: list[dict[str, Any]] = []
    seen: set[int] = set()
    with db.write_connection() as s:
        for annotator_id, item_id, value, submit_id in answers:
            found = s.execute(_FIND, {"person": annotator_id, "item": item_id}).first()
            if found is None:
                results.append(NotAssigned(f"item {item_id}: not assigned to this annotator; "
                                           "answers only for your own queue"))
            elif found[1] is not None or found[0] in seen:
                results.append(False)
            else:
                seen.add(found[0])
                rows.append({"assignment_id": found[0], "annotator_id": annotator_id, "item_id": item_id,
                             "value": value, "submit_id": submit_id, "created": utcnow()})
                results.append(True)
        if rows:
            s.execute(_INSERT, rows)
    return results


def outcome(result: bool | Exception) -> bool:
    """Raise an answer's error, or return whether it was stored now (False: a duplicate)."""
    if isinstance(result, Exception):
        raise result
    return result


def submit_answer(db: Database, info: ProjectInfo, annotator_id: int, item_id: int, value: int,
                  submit_id: str | None = None) -> bool:
    """Store an answer; True when stored now, False when this assignment was already answered (duplicate).

    Raises :class:`NotAssigned` for an item outside the annotator's queue, :class:`InvalidAnswer` for a bad
    field.
    """
    request = check_answer(info, annotator_id, item_id, value, submit_id)
    try:
        result = store_answers(db, [request])[0]
    except IntegrityError:  # a concurrent identical submit won the race (databases without a write lock)
        return False
    return outcome(result)


@dataclass
class Progress:
    done: int
    total: int
    item_id: int | None


def _next_item(s: Connection, annotator_id: int) -> int | None:
    return s.scalar(_NEXT, {"person": annotator_id})


def next_item(db: Database, annotator_id: int) -> int | None:
    """The next unanswered item in the annotator's order (None when the queue is done)."""
    with db.connect() as s:
        return _next_item(s, annotator_id)


def progress_of(db: Database, annotator_id: int) -> Progress:
    """How many of the annotator's items are answered, out of how many, and the next one."""
    with db.connect() as s:
        total = s.scalar(_TOTAL, {"person": annotator_id})
        done = s.scalar(_DONE, {"person": annotator_id})
        return Progress(int(done or 0), int(total or 0), _next_item(s, annotator_id))


def is_assigned(db: Database, annotator_id: int, item_id: int) -> bool:
    with db.connect() as s:
        return s.scalar(_HOLDS, {"person": annotator_id, "item": item_id}) is not None


def undo_last(db: Database, annotator_id: int) -> int | None:
    """Delete the annotator's most recent answer; return its item id (None when there is nothing to undo)."""
    with db.write() as s:
        answer = s.scalar(select(Answer).where(Answer.annotator_id == annotator_id)
                          .order_by(Answer.id.desc()).limit(1))
        if answer is None:
            return None
        item = answer.item_id
        s.delete(answer)
    return item
