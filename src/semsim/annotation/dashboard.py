"""What the admin sees: progress per set and annotator, gold accuracy, agreement, disputed and flagged items.

Flagged (broken image) and skipped answers are counted apart and left out of the judgments.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pandas as pd
from sqlalchemy import func, select

from semsim.annotation.agreement import agreement
from semsim.annotation.db import Annotator, Answer, Assignment, Database, Item
from semsim.annotation.project import FLAG, NOT_JUDGMENTS, SKIP, ProjectInfo, project_info

ANSWER_COLUMNS = ["answer_id", "item_id", "set", "image_id", "label", "gold", "gold_answer", "annotator_id",
                  "annotator", "value", "created"]


def answers_frame(db: Database) -> pd.DataFrame:
    """Every answer with its item and annotator (one row per answer, in submission order), flags and skips
    included (``value`` -2 and -3)."""
    with db.connect() as s:
        rows = s.execute(select(Answer.id, Answer.item_id, Item.set, Item.image_id, Item.label, Item.gold,
                                Item.gold_answer, Answer.annotator_id, Annotator.name, Answer.value,
                                Answer.created)
                         .join(Item, Item.id == Answer.item_id)
                         .join(Annotator, Annotator.id == Answer.annotator_id)
                         .order_by(Answer.id)).all()
    frame = pd.DataFrame(rows, columns=ANSWER_COLUMNS)
    frame["gold"] = frame["gold"].astype(bool)
    return frame


def judgments(answers: pd.DataFrame) -> pd.DataFrame:
    """The answers that are judgments (flags and skips left out)."""
    return answers[~answers["value"].isin(NOT_JUDGMENTS)]


def _agreement_rows(answers: pd.DataFrame, info: ProjectInfo) -> dict[str, float]:
    units = answers.groupby("item_id")["value"].agg(list).tolist()
    out = {f"answers_{k}": v for k, v in agreement(units).items()}
    recognized = [info.recognized(v, lab) for v, lab in zip(answers["value"], answers["label"], strict=True)]
    rec_units = pd.Series(recognized, index=answers.index).groupby(answers["item_id"]).agg(list).tolist()
    out.update({f"recognized_{k}": v for k, v in agreement(rec_units).items() if k != "n_units"})
    return out


def _set_rows(items: pd.DataFrame, answers: pd.DataFrame, info: ProjectInfo) -> list[dict]:
    regular = judgments(answers[~answers["gold"]])
    counts = regular.groupby("item_id").size()
    actions = answers[answers["value"].isin(NOT_JUDGMENTS)].groupby(["set", "value"]).size()
    by_set = dict(tuple(regular.groupby("set")))
    rows = []
    for name, group in items[~items["gold"]].groupby("set"):
        n = counts.reindex(group["item_id"]).fillna(0)
        rows.append({"set": name, "items": len(group), "answers": int(n.sum()),
                     "needed": len(group) * info.per_item, "complete": int((n >= info.per_item).sum()),
                     "flagged": int(actions.get((name, FLAG), 0)), "skipped": int(actions.get((name, SKIP), 0)),
                     **_agreement_rows(by_set.get(name, regular.iloc[:0]), info)})
    return rows


def _annotator_rows(db: Database, answers: pd.DataFrame) -> list[dict]:
    with db.connect() as s:
        people = s.execute(select(Annotator.id, Annotator.name, Annotator.is_admin, Annotator.active,
                                  Annotator.imported)).all()
        assigned = dict(s.execute(select(Assignment.annotator_id, func.count())
                                  .group_by(Assignment.annotator_id)).all())
    by_person = dict(tuple(answers.groupby("annotator_id")))
    rows = []
    for aid, name, is_admin, active, imported in people:
        if is_admin:
            continue
        mine = by_person.get(aid, answers.iloc[:0])
        gold = judgments(mine[mine["gold"]])
        rows.append({
            "name": name, "active": active, "imported": imported, "assigned": int(assigned.get(aid, 0)),
            "done": len(mine), "gold_answered": len(gold),
            "gold_accuracy": float((gold["value"] == gold["gold_answer"]).mean()) if len(gold) else float("nan"),
            "flagged": int((mine["value"] == FLAG).sum()), "skipped": int((mine["value"] == SKIP).sum()),
            "last": mine["created"].max() if len(mine) else None,
        })
    return rows


def _disputed(regular: pd.DataFrame, info: ProjectInfo, n: int) -> list[dict]:
    if not len(regular):
        return []
    scored = []
    for (item_id, set_name, image_id), values in regular.groupby(["item_id", "set", "image_id"])["value"]:
        values = values.tolist()
        if len(values) < 2:
            continue
        top_share = Counter(values).most_common(1)[0][1] / len(values)
        scored.append((1.0 - top_share, len(values), item_id, set_name, image_id, values))
    scored.sort(key=lambda t: (-t[0], -t[1], t[2]))
    return [{"item_id": int(item_id), "set": set_name, "image_id": image_id, "dispute": dispute, "n": count,
             "answers": ", ".join(f"{info.text(v)} x{c}" for v, c in Counter(values).most_common())}
            for dispute, count, item_id, set_name, image_id, values in scored[:n] if dispute > 0]


def _flagged(answers: pd.DataFrame) -> list[dict]:
    flags = answers[answers["value"] == FLAG]
    return [{"item_id": int(item_id), "set": set_name, "image_id": image_id, "by": ", ".join(group["annotator"])}
            for (item_id, set_name, image_id), group in flags.groupby(["item_id", "set", "image_id"])]


def dashboard(db: Database, n_disputed: int = 20) -> dict:
    """Everything the admin page shows: progress per set and annotator, gold accuracy, agreement, disputes,
    the items flagged as broken."""
    info = project_info(db)
    answers = answers_frame(db)
    with db.connect() as s:
        items = pd.DataFrame(s.execute(select(Item.id, Item.set, Item.image_id, Item.gold)
                                       .where(~Item.example)).all(),
                             columns=["item_id", "set", "image_id", "gold"])
    items["gold"] = items["gold"].astype(bool)
    regular = judgments(answers[~answers["gold"]])
    return {"info": info, "overall": _agreement_rows(regular, info), "sets": _set_rows(items, answers, info),
            "annotators": _annotator_rows(db, answers), "disputed": _disputed(regular, info, n_disputed),
            "flagged": _flagged(answers), "n_answers": len(regular), "n_items": int((~items["gold"]).sum()),
            "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
