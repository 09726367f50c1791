"""A study's fixed settings as the app and the exports see them: choices, their keys and texts.

Answer values: class task, the class index or -1 ("can't tell"); pair task, 1 yes, 0 no, -1 unsure. In both
tasks -2 records a flagged (broken) image and -3 a skipped item: these are kept and exported, but are not
judgments (agreement, the label table's ``recognized`` and the judges per item leave them out).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from semsim.annotation.db import Database
from semsim.errors import SemsimError

PAIR_CHOICES = {1: "yes", 0: "no", -1: "unsure"}
CANT_TELL = "can't tell"
FLAG, SKIP = -2, -3
ACTIONS = {FLAG: "broken image", SKIP: "skip"}
ACTION_KEYS = {FLAG: "f", SKIP: "s"}
NOT_JUDGMENTS = frozenset(ACTIONS)


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
        """(value, text) of every judgment an annotator can give (the actions flag/skip not included)."""
        if self.task == "pair":
            return list(PAIR_CHOICES.items())
        return [*enumerate(self.classes), (-1, CANT_TELL)]

    def digit_classes(self) -> bool:
        """Whether every class is named by one distinct digit (digit sets: the key is the class's digit)."""
        return bool(self.classes) and all(len(c) == 1 and c.isdigit() for c in self.classes) \
            and len(set(self.classes)) == len(self.classes)

    def key(self, value: int) -> str:
        """The key that gives an answer: y/n/u (pair); the class's own digit on digit sets, else 1..9, 0 for up
        to ten classes (none beyond: type to filter); '-' can't tell; 'f' broken image (flag); 's' skip."""
        if value in ACTION_KEYS:
            return ACTION_KEYS[value]
        if self.task == "pair":
            return {1: "y", 0: "n", -1: "u"}[value]
        if value == -1:
            return "-"
        if self.digit_classes():
            return self.classes[value]
        return str((value + 1) % 10) if len(self.classes) <= 10 else ""

    def check_value(self, value: int) -> int:
        """``value`` itself when it is a judgment or an action of this task; else a :class:`SemsimError`."""
        valid = {v for v, _ in self.choices()} | set(ACTIONS)
        if isinstance(value, bool) or value not in valid:
            raise SemsimError(f"answer {value!r}: not a valid choice for the {self.task} task; "
                              f"use one of {sorted(valid)}")
        return value

    def text(self, value: int) -> str:
        return {**dict(self.choices()), **ACTIONS}.get(int(value), str(value))

    def value_of(self, text: str) -> int:
        """Parse an answer given as text (class name, yes/no/unsure, can't tell, skip, broken image) or as its
        number."""
        key = str(text).strip().lower()
        names = {t.lower(): v for v, t in [*self.choices(), *ACTIONS.items()]}
        names.update({"cannot tell": -1, "cant tell": -1, "-1": -1, "skipped": SKIP, "flagged": FLAG})
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
    """The settings of the database's project."""
    with db.read() as s:
        p = db.project(s)
        return ProjectInfo(p.study, p.task, p.per_item, tuple(p.classes))
