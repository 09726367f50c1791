"""Logging in: secret links, browser sessions (hashed cookie ids with a CSRF token and an expiry), logout."""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import Row, bindparam, delete, select

from semsim.annotation.db import Annotator, Database, WebSession, utcnow
from semsim.annotation.project import hash_secret

DEFAULT_SESSION_HOURS = 12.0


# built once: these run on every request, and building a statement costs more than running it
_BY_TOKEN = select(Annotator.id, Annotator.name, Annotator.is_admin).where(
    Annotator.token_hash == bindparam("token_hash"), Annotator.active)
_BY_SESSION = (select(Annotator.id, Annotator.name, Annotator.is_admin, WebSession.csrf)
               .join(WebSession, WebSession.annotator_id == Annotator.id)
               .where(WebSession.session_hash == bindparam("session_hash"), Annotator.active,
                      WebSession.expires > bindparam("now")))


def annotator_by_token(db: Database, token: str) -> Row | None:
    """``(id, name, is_admin)`` of the active annotator whose secret token this is, or None."""
    with db.connect() as s:
        return s.execute(_BY_TOKEN, {"token_hash": hash_secret(token)}).first()


def open_session(db: Database, token: str, hours: float = DEFAULT_SESSION_HOURS) -> tuple[str, str, Row] | None:
    """Log in by secret link: a new session id (for the cookie), its CSRF token, and the annotator; the
    session ends after ``hours``. Expired sessions of everybody are deleted on the way."""
    person = annotator_by_token(db, token)
    if person is None:
        return None
    session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = utcnow()
    with db.write() as s:
        s.execute(delete(WebSession).where(WebSession.expires <= now))
        s.add(WebSession(session_hash=hash_secret(session_id), annotator_id=person.id, csrf=csrf, created=now,
                         expires=now + dt.timedelta(hours=hours)))
    return session_id, csrf, person


def session_user(db: Database, session_id: str) -> tuple[Row, str] | None:
    """The annotator ``(id, name, is_admin)`` and CSRF token of a live session cookie, or None."""
    with db.connect() as s:
        row = s.execute(_BY_SESSION, {"session_hash": hash_secret(session_id), "now": utcnow()}).first()
    return (row, row.csrf) if row else None


def close_session(db: Database, session_id: str) -> None:
    """Log out: the session cookie stops working."""
    with db.write() as s:
        s.execute(delete(WebSession).where(WebSession.session_hash == hash_secret(session_id)))
