"""Annotation logic on top of the database: projects, items, annotators, assignment, answers, statistics.

Every function takes a :class:`~semsim.annotation.db.Database`; the web app and the CLI are thin layers over
these. Answers are stored once per assignment (unique constraint): a repeated submit is acknowledged as a
duplicate and stores nothing; an answer for an item not in the annotator's queue raises :class:`NotAssigned`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import queue
import random
import secrets
import threading
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sqlalchemy import Row, delete, func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from semsim.annotation.agreement import agreement
from semsim.annotation.db import (
    TASKS,
    Annotator,
    Answer,
    Assignment,
    Database,
    Item,
    Project,
    WebSession,
    utcnow,
)
from semsim.errors import SemsimError

PAIR_CHOICES = {1: "yes", 0: "no", -1: "unsure"}
CANT_TELL = "can't tell"


class NotAssigned(SemsimError):
    """The item is not in this annotator's queue (or the annotator is unknown)."""


def hash_secret(secret: str) -> str:
    """sha256 hex digest; tokens and session ids are stored only this way."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ProjectInfo:
    """The immutable settings of a project, loaded once per process."""

    study: str
    task: str
    per_item: int
    classes: tuple[str, ...]

    def choices(self) -> list[tuple[int, str]]:
        """(value, text) of every answer an annotator can give."""
        if self.task == "pair":
            return list(PAIR_CHOICES.items())
        return [*enumerate(self.classes), (-1, CANT_TELL)]

    def check_value(self, value: int) -> int:
        valid = {v for v, _ in self.choices()}
        if value not in valid:
            raise SemsimError(f"answer {value!r}: not a valid choice for the {self.task} task; "
                              f"use one of {sorted(valid)}")
        return value

    def text(self, value: int) -> str:
        return dict(self.choices()).get(int(value), str(value))

    def value_of(self, text: str) -> int:
        """Parse an answer given as text (class name, yes/no/unsure, can't tell) or as its number."""
        key = str(text).strip().lower()
        names = {t.lower(): v for v, t in self.choices()}
        names.update({"cannot tell": -1, "cant tell": -1, "-1": -1})
        if key in names:
            return names[key]
        try:
            return self.check_value(int(key))
        except ValueError:
            raise SemsimError(f"answer {text!r}: not a class name nor a choice of the {self.task} task; "
                              f"use one of {[t for _, t in self.choices()]}") from None

    def recognized(self, value: int, label: int | None) -> bool:
        """Whether an answer counts as recognizing the reconstruction (class: the true class; pair: yes)."""
        return value == 1 if self.task == "pair" else (label is not None and value == label)


def project_info(db: Database) -> ProjectInfo:
    with db.read() as s:
        p = db.project(s)
        return ProjectInfo(p.study, p.task, p.per_item, tuple(p.classes))


# ----------------------------------------------------------------------------------------------- loading


def _manifest_items(source: str | os.PathLike, gold: bool, info: ProjectInfo) -> list[dict]:
    from semsim.data.sets import ingest  # imports torch: only when loading sets, not in the web server

    manifest, _ = ingest(source)
    rows = []
    for rec in manifest.to_dict("records"):
        label = rec.get("label")
        label = None if label is None or pd.isna(label) else int(label)
        if info.task == "class" and (label is None or not 0 <= label < len(info.classes)):
            raise SemsimError(f"{source}: image '{rec['image_id']}' has label {label!r}; the class task "
                              f"needs a true class in 0..{len(info.classes) - 1} (a 'label' column or "
                              "SemSim file names)")
        gold_answer = None
        if gold:
            given = rec.get("gold_answer")
            if given is not None and not pd.isna(given):
                gold_answer = info.value_of(str(int(given)) if isinstance(given, float) else str(given))
            elif info.task == "class":
                gold_answer = label
            else:
                raise SemsimError(f"{source}: gold items of the pair task need a 'gold_answer' column "
                                  "(yes/no or 1/0) in the manifest")
        rows.append({"set": str(rec["set"]), "image_id": str(rec["image_id"]),
                     "original": str(rec["original"]), "reconstruction": str(rec["reconstruction"]),
                     "label": label, "gold": gold,
                     "gold_answer": gold_answer})
    return rows


def default_classes(sources: list[str | os.PathLike]) -> list[str]:
    """Class names "0".."max label" found in the sets (when no names are given)."""
    from semsim.data.sets import ingest

    top = -1
    for source in sources:
        manifest, _ = ingest(source)
        if "label" in manifest and manifest["label"].notna().any():
            top = max(top, int(manifest["label"].max()))
    if top < 0:
        raise SemsimError("the class task needs the true classes: give sets with a 'label' column or SemSim "
                          "file names ({id}_{label}_rec.png), or use --task pair")
    return [str(i) for i in range(top + 1)]


def init_project(db_url: str | os.PathLike, sets: list[str | os.PathLike], *, per_item: int = 5,
                 task: str = "class", study: str | None = None, classes: list[str] | None = None,
                 gold: Sequence[str | os.PathLike] = (), seed: int = 0) -> dict:
    """Create (or extend) an annotation database with the given sets; return counts of what was added.

    On an existing database the project settings are kept and only new sets are added.
    """
    if task not in TASKS:
        raise SemsimError(f"task {task!r}: unknown; use one of {', '.join(TASKS)}")
    if per_item < 1:
        raise SemsimError(f"per-item {per_item}: must be at least 1")
    db = Database(db_url, create=True)
    try:
        with db.write() as s:
            project = s.scalar(select(Project).limit(1))
            if project is None:
                if task == "class" and not classes:
                    classes = default_classes([*sets, *gold])
                project = Project(study=study or Path(str(db_url)).stem, task=task, per_item=per_item,
                                  classes=list(classes or []), seed=seed)
                s.add(project)
            info = ProjectInfo(project.study, project.task, project.per_item, tuple(project.classes))
            rows = [r for src in sets for r in _manifest_items(src, False, info)]
            rows += [r for src in gold for r in _manifest_items(src, True, info)]
            existing = set(s.execute(select(Item.set, Item.image_id)).all())
            clash = [r for r in rows if (r["set"], r["image_id"]) in existing]
            if clash:
                raise SemsimError(f"set '{clash[0]['set']}': image '{clash[0]['image_id']}' is already in "
                                  f"{db.url}; each set is loaded once")
            s.add_all(Item(**r) for r in rows)
        added = assign(db)
        return {"items": sum(not r["gold"] for r in rows), "gold": sum(r["gold"] for r in rows),
                "sets": len({r["set"] for r in rows}), "assigned": added["assigned"]}
    finally:
        db.dispose()


# ------------------------------------------------------------------------------------- annotators, assignment


def add_annotators(db: Database, names: list[str], admin: bool = False) -> dict[str, str]:
    """Create annotators (or admins); return name -> secret token (shown once; only its hash is stored).

    New annotators receive work at once: the queues are rebalanced (see :func:`assign`).
    """
    names = [n.strip() for n in names]
    if not all(names) or len(set(names)) != len(names):
        raise SemsimError(f"annotator names {names}: empty or repeated; give distinct names")
    tokens = {name: secrets.token_urlsafe(32) for name in names}
    try:
        with db.write() as s:
            taken = set(s.scalars(select(Annotator.name).where(Annotator.name.in_(names))))
            if taken:
                raise SemsimError(f"annotator '{sorted(taken)[0]}': already exists; choose another name")
            s.add_all(Annotator(name=n, token_hash=hash_secret(t), is_admin=admin) for n, t in tokens.items())
    except IntegrityError:
        raise SemsimError(f"annotators {names}: one already exists; choose other names") from None
    if not admin:
        assign(db)
    return tokens


def add_annotator(db: Database, name: str, admin: bool = False) -> str:
    """Create one annotator (see :func:`add_annotators`) and return their secret token."""
    return add_annotators(db, [name], admin)[name.strip()]


def set_active(db: Database, name: str, active: bool) -> None:
    """Deactivate (or reactivate) an annotator; a deactivated one's unanswered items go to the others."""
    with db.write() as s:
        annotator = s.scalar(select(Annotator).where(Annotator.name == name))
        if annotator is None:
            raise SemsimError(f"annotator '{name}': no such annotator; see `semsim annotate status`")
        annotator.active = active
        if not active:
            s.execute(delete(Assignment).where(Assignment.annotator_id == annotator.id,
                                               Assignment.id.not_in(select(Answer.assignment_id))))
    assign(db)


def assign(db: Database) -> dict:
    """Give every item ``per_item`` distinct active annotators, balancing the load.

    Existing assignments stay; items short of judges get the least-loaded annotators who do not have them yet;
    then unanswered assignments move from the most to the least loaded annotators until loads differ by at
    most one (where the items allow). Gold items go to every annotator. New work is appended to each queue in
    a random order (seeded by the project), so nobody sees an item twice and each queue has its own order.
    """
    with db.write() as s:
        project = db.project(s)
        people = list(s.scalars(select(Annotator.id).where(Annotator.active, ~Annotator.is_admin,
                                                            ~Annotator.imported).order_by(Annotator.id)))
        items = s.execute(select(Item.id, Item.gold)).all()
        rows = s.execute(select(Assignment.id, Assignment.annotator_id, Assignment.item_id,
                                Assignment.position, Answer.id)
                         .outerjoin(Answer, Answer.assignment_id == Assignment.id)).all()
        rng = random.Random(f"{project.seed}:{len(rows)}:{len(people)}")
        active = set(people)
        gold = {i for i, g in items if g}
        holders: dict[int, set[int]] = defaultdict(set)
        have: dict[int, set[int]] = defaultdict(set)
        load: Counter = Counter({p: 0 for p in people})
        top: dict[int, float] = defaultdict(float)
        movable: dict[int, list[int]] = defaultdict(list)
        by_id = {}
        for aid, person, item, pos, answer in rows:
            holders[item].add(person)
            have[person].add(item)
            top[person] = max(top[person], pos)
            by_id[aid] = (person, item)
            if item not in gold and person in active:
                load[person] += 1
                if answer is None:
                    movable[person].append(aid)
        new: list[tuple[int, int]] = []
        for person in people:
            new += [(person, g) for g in sorted(gold - have[person])]
        order = [i for i, g in items if not g]
        rng.shuffle(order)
        for item in order:
            need = project.per_item - len(holders[item])
            if need <= 0:
                continue
            free = [p for p in people if p not in holders[item]]
            free.sort(key=lambda p: (load[p], rng.random()))
            for person in free[:need]:
                new.append((person, item))
                holders[item].add(person)
                have[person].add(item)
                load[person] += 1
        moves = 0
        while people:
            light = min(people, key=lambda p: load[p])
            moved = False
            for heavy in sorted(people, key=lambda p: -load[p]):
                if load[heavy] - load[light] <= 1:
                    break
                for k, aid in enumerate(movable[heavy]):
                    item = by_id[aid][1]
                    if item not in have[light]:
                        movable[heavy].pop(k)
                        s.execute(Assignment.__table__.update().where(Assignment.id == aid).values(
                            annotator_id=light, position=top[light] + 1 + rng.random()))
                        have[heavy].discard(item)
                        have[light].add(item)
                        load[heavy] -= 1
                        load[light] += 1
                        moves += 1
                        moved = True
                        break
                if moved:
                    break
            if not moved:
                break
        rng.shuffle(new)
        s.add_all(Assignment(annotator_id=p, item_id=i, position=top[p] + 1 + rng.random()) for p, i in new)
        short = sum(1 for i, g in items if not g and len(holders[i]) < project.per_item)
    return {"assigned": len(new), "moved": moves, "items_short": short}


# ---------------------------------------------------------------------------------------- sessions, answers


def _person_columns() -> tuple:
    return Annotator.id, Annotator.name, Annotator.is_admin


def annotator_by_token(db: Database, token: str) -> Row | None:
    """``(id, name, is_admin)`` of the active annotator whose secret token this is, or None."""
    with db.connect() as s:
        return s.execute(select(*_person_columns()).where(Annotator.token_hash == hash_secret(token),
                                                          Annotator.active)).first()


def open_session(db: Database, token: str) -> tuple[str, str, Row] | None:
    """Log in by secret link: a new session id (for the cookie), its CSRF token, and the annotator."""
    person = annotator_by_token(db, token)
    if person is None:
        return None
    session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with db.write() as s:
        s.add(WebSession(session_hash=hash_secret(session_id), annotator_id=person.id, csrf=csrf))
    return session_id, csrf, person


def session_user(db: Database, session_id: str) -> tuple[Row, str] | None:
    """The annotator ``(id, name, is_admin)`` and CSRF token of a session cookie, or None."""
    with db.connect() as s:
        row = s.execute(select(*_person_columns(), WebSession.csrf)
                        .join(WebSession, WebSession.annotator_id == Annotator.id)
                        .where(WebSession.session_hash == hash_secret(session_id), Annotator.active)).first()
    return (row, row.csrf) if row else None


@dataclass
class Progress:
    done: int
    total: int
    item_id: int | None


def _next_item(s: Connection, annotator_id: int) -> int | None:
    return s.scalar(select(Assignment.item_id).outerjoin(Answer, Answer.assignment_id == Assignment.id)
                    .where(Assignment.annotator_id == annotator_id, Answer.id.is_(None))
                    .order_by(Assignment.position).limit(1))


def next_item(db: Database, annotator_id: int) -> int | None:
    """The next unanswered item in the annotator's order (None when the queue is done)."""
    with db.connect() as s:
        return _next_item(s, annotator_id)


def progress_of(db: Database, annotator_id: int) -> Progress:
    """How many of the annotator's items are answered, out of how many, and the next one."""
    with db.connect() as s:
        total = s.scalar(select(func.count()).select_from(Assignment)
                         .where(Assignment.annotator_id == annotator_id))
        done = s.scalar(select(func.count()).select_from(Answer).where(Answer.annotator_id == annotator_id))
        return Progress(int(done or 0), int(total or 0), _next_item(s, annotator_id))


def is_assigned(db: Database, annotator_id: int, item_id: int) -> bool:
    with db.connect() as s:
        return s.scalar(select(Assignment.id).where(Assignment.annotator_id == annotator_id,
                                                     Assignment.item_id == item_id)) is not None


AnswerRequest = tuple[int, int, int, "str | None"]  # annotator id, item id, value, submit id


def store_answers(db: Database, answers: list[AnswerRequest]) -> list[bool | NotAssigned]:
    """Store several answers in one transaction (one commit): per answer True (stored), False (that assignment
    was already answered: a duplicate) or a :class:`NotAssigned` error. Values must be checked before."""
    results: list[bool | NotAssigned] = []
    rows, seen = [], set()
    with db.write() as s:
        for annotator_id, item_id, value, submit_id in answers:
            found = s.execute(select(Assignment.id, Answer.id)
                              .outerjoin(Answer, Answer.assignment_id == Assignment.id)
                              .where(Assignment.annotator_id == annotator_id,
                                     Assignment.item_id == item_id)).first()
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
            s.execute(insert(Answer), rows)
    return results


def submit_answer(db: Database, info: ProjectInfo, annotator_id: int, item_id: int, value: int,
                  submit_id: str | None = None) -> bool:
    """Store an answer; True when stored now, False when this assignment was already answered (duplicate).

    Raises :class:`NotAssigned` for an item outside the annotator's queue, SemsimError for an invalid value.
    """
    info.check_value(value)
    try:
        result = store_answers(db, [(annotator_id, item_id, value, submit_id)])[0]
    except IntegrityError:  # a concurrent identical submit won the race (databases without a write lock)
        return False
    return outcome(result)


def outcome(result: bool | Exception) -> bool:
    """Raise an answer's error, or return whether it was stored now (False: a duplicate)."""
    if isinstance(result, Exception):
        raise result
    return result


class AnswerWriter:
    """Group commit for a server: concurrent submits wait in a queue and one thread stores whatever has
    gathered in a single transaction, so many answers share one durable commit (fsync). ``submit`` returns
    only after the commit that holds the answer, so an acknowledged answer is on disk."""

    def __init__(self, db: Database, info: ProjectInfo, max_batch: int = 256):
        self.db, self.info, self.max_batch = db, info, max_batch
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="semsim-answer-writer", daemon=True)
        self._thread.start()

    def enqueue(self, annotator_id: int, item_id: int, value: int, submit_id: str | None = None) -> Future:
        """Queue an answer (the value is checked now); the future resolves to what :func:`store_answers`
        says for it (True, False or a :class:`NotAssigned` error) once it is committed."""
        self.info.check_value(value)
        done: Future = Future()
        self._queue.put(((annotator_id, item_id, value, submit_id), done))
        return done

    def submit(self, annotator_id: int, item_id: int, value: int, submit_id: str | None = None) -> bool:
        """Like :func:`submit_answer`, through the shared commit."""
        return outcome(self.enqueue(annotator_id, item_id, value, submit_id).result())

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batch.append(more)
            requests = [req for req, _ in batch]
            try:
                results = store_answers(self.db, requests)
            except IntegrityError:  # another writer (no SQLite lock, e.g. PostgreSQL): one by one
                results = [self._single(req) for req in requests]
            except Exception as exc:  # the database failed: every waiting request sees the error
                results = [exc] * len(batch)
            for (_, done), result in zip(batch, results, strict=True):
                done.set_result(result)

    def _single(self, req: AnswerRequest) -> bool | Exception:
        try:
            return submit_answer(self.db, self.info, *req)
        except Exception as exc:
            return exc

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)


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


# ------------------------------------------------------------------------------------------------ statistics


def answers_frame(db: Database) -> pd.DataFrame:
    """Every answer with its item and annotator (one row per answer, in submission order)."""
    with db.read() as s:
        rows = s.execute(select(Answer.id, Answer.item_id, Item.set, Item.image_id, Item.label, Item.gold,
                                Item.gold_answer, Answer.annotator_id, Annotator.name, Answer.value,
                                Answer.created)
                         .join(Item, Item.id == Answer.item_id)
                         .join(Annotator, Annotator.id == Answer.annotator_id)
                         .order_by(Answer.id)).all()
    cols = ["answer_id", "item_id", "set", "image_id", "label", "gold", "gold_answer", "annotator_id",
            "annotator", "value", "created"]
    return pd.DataFrame(rows, columns=cols)


def _agreement_rows(answers: pd.DataFrame, info: ProjectInfo) -> dict[str, float]:
    units = answers.groupby("item_id")["value"].apply(list).tolist()
    out = {f"answers_{k}": v for k, v in agreement(units).items()}
    pairs = zip(answers["value"], answers["label"], strict=True)
    rec = answers.assign(r=[info.recognized(v, lab) for v, lab in pairs])
    rec_units = rec.groupby("item_id")["r"].apply(list).tolist()
    out.update({f"recognized_{k}": v for k, v in agreement(rec_units).items() if k != "n_units"})
    return out


def dashboard(db: Database, n_disputed: int = 20) -> dict:
    """Everything the admin page shows: progress per set and annotator, gold accuracy, agreement, disputes."""
    info = project_info(db)
    answers = answers_frame(db)
    with db.read() as s:
        items = pd.DataFrame(s.execute(select(Item.id, Item.set, Item.image_id, Item.gold)).all(),
                             columns=["item_id", "set", "image_id", "gold"])
        people = s.execute(select(Annotator.id, Annotator.name, Annotator.is_admin, Annotator.active,
                                  Annotator.imported)).all()
        assigned = dict(s.execute(select(Assignment.annotator_id, func.count())
                                  .group_by(Assignment.annotator_id)).all())
    regular = answers[~answers["gold"].astype(bool)]
    counts = regular.groupby("item_id").size()
    sets = []
    for name, group in items[~items["gold"].astype(bool)].groupby("set"):
        n = counts.reindex(group["item_id"]).fillna(0)
        sub = regular[regular["set"] == name]
        sets.append({"set": name, "items": len(group), "answers": int(n.sum()),
                     "needed": len(group) * info.per_item, "complete": int((n >= info.per_item).sum()),
                     **_agreement_rows(sub, info)})
    annotators = []
    for aid, name, is_admin, active, imported in people:
        if is_admin:
            continue
        mine = answers[answers["annotator_id"] == aid]
        gold = mine[mine["gold"].astype(bool)]
        annotators.append({
            "name": name, "active": active, "imported": imported, "assigned": int(assigned.get(aid, 0)),
            "done": len(mine), "gold_answered": len(gold),
            "gold_accuracy": float((gold["value"] == gold["gold_answer"]).mean()) if len(gold)
            else float("nan"),
            "last": mine["created"].max() if len(mine) else None,
        })
    disputed = []
    if len(regular):
        grouped = regular.groupby("item_id")["value"].apply(list)
        scored = []
        for item_id, values in grouped.items():
            if len(values) < 2:
                continue
            top_share = Counter(values).most_common(1)[0][1] / len(values)
            scored.append((1.0 - top_share, len(values), item_id, values))
        scored.sort(key=lambda t: (-t[0], -t[1], t[2]))
        meta = items.set_index("item_id")
        for dispute, n, item_id, values in scored[:n_disputed]:
            if dispute <= 0:
                break
            disputed.append({"item_id": int(item_id), "set": meta.at[item_id, "set"],
                             "image_id": meta.at[item_id, "image_id"], "dispute": dispute, "n": n,
                             "answers": ", ".join(f"{info.text(v)} x{c}"
                                                  for v, c in Counter(values).most_common())})
    return {"info": info, "overall": _agreement_rows(regular, info), "sets": sets, "annotators": annotators,
            "disputed": disputed, "n_answers": len(regular),
            "n_items": int((~items["gold"].astype(bool)).sum()),
            "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}

