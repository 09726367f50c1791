"""Annotators: creation (secret links), deactivation, reactivation, reissued links, and the served address."""

from __future__ import annotations

import secrets

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from semsim.annotation.assignment import assign
from semsim.annotation.db import Annotator, Answer, Assignment, Database, Project, WebSession
from semsim.annotation.project import hash_secret
from semsim.errors import SemsimError

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


def add_annotators(db: Database, names: list[str], admin: bool = False) -> dict[str, str]:
    """Create annotators (or admins); return name -> secret token (shown once; only its hash is stored).

    New annotators receive work at once: the queues are rebalanced (see :func:`~semsim.annotation.assign`).
    """
    names = [n.strip() for n in names]
    if not all(names) or len(set(names)) != len(names):
        raise SemsimError(f"annotator names {names}: empty or repeated; give distinct names")
    tokens = {name: secrets.token_urlsafe(32) for name in names}
    try:
        with db.write() as s:
            taken = set(s.scalars(select(Annotator.name).where(Annotator.name.in_(names))))
            if taken:
                raise SemsimError(f"annotator '{sorted(taken)[0]}': already exists; choose another name "
                                  "(or `semsim annotate reissue` for a new link)")
            s.add_all(Annotator(name=n, token_hash=hash_secret(t), is_admin=admin) for n, t in tokens.items())
    except IntegrityError:
        raise SemsimError(f"annotators {names}: one already exists; choose other names") from None
    if not admin:
        assign(db)
    return tokens


def add_annotator(db: Database, name: str, admin: bool = False) -> str:
    """Create one annotator (see :func:`add_annotators`) and return their secret token."""
    return add_annotators(db, [name], admin)[name.strip()]


def _annotator(s, name: str) -> Annotator:
    annotator = s.scalar(select(Annotator).where(Annotator.name == name))
    if annotator is None:
        raise SemsimError(f"annotator '{name}': no such annotator; see `semsim annotate status`")
    if annotator.imported:
        raise SemsimError(f"annotator '{name}': imported from Label Studio; imported annotators cannot log in")
    return annotator


def set_active(db: Database, name: str, active: bool) -> dict:
    """Deactivate (or reactivate) an annotator; a deactivated one's sessions end and their unanswered items go
    to the others; a reactivated one receives work again. Returns the counts of the rebalancing."""
    with db.write() as s:
        annotator = _annotator(s, name)
        annotator.active = active
        if not active:
            s.execute(delete(WebSession).where(WebSession.annotator_id == annotator.id))
            s.execute(delete(Assignment).where(Assignment.annotator_id == annotator.id,
                                               Assignment.id.not_in(select(Answer.assignment_id))))
    return assign(db)


def reissue(db: Database, name: str) -> str:
    """A new secret link for an annotator (the old link and every open session stop working); return the
    token. The annotator keeps their answers and queue (and is reactivated if they were deactivated)."""
    token = secrets.token_urlsafe(32)
    with db.write() as s:
        annotator = _annotator(s, name)
        was_active = annotator.active
        annotator.token_hash = hash_secret(token)
        annotator.active = True
        s.execute(delete(WebSession).where(WebSession.annotator_id == annotator.id))
    if not was_active:
        assign(db)
    return token


def set_base_url(db: Database, url: str) -> None:
    """Remember the address the app is served at (``semsim annotate serve`` sets it), for the links."""
    with db.write() as s:
        db.project(s).base_url = url.rstrip("/")


def link(db: Database, token: str, base_url: str | None = None) -> str:
    """The personal link of a token: ``base_url``, else the address of the last ``serve``, else the default."""
    if base_url is None:
        with db.read() as s:
            base_url = s.scalar(select(Project.base_url).limit(1)) or DEFAULT_BASE_URL
    return f"{base_url.rstrip('/')}/start/{token}"
