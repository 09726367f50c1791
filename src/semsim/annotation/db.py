"""The annotation database: SQLAlchemy models and engine setup.

SQLite runs in WAL mode with ``synchronous=FULL`` (an acknowledged answer survives a killed server or a power
cut) and ``BEGIN IMMEDIATE`` for writing transactions (concurrent writers wait for the lock instead of failing
on a stale snapshot); any other SQLAlchemy URL (e.g. ``postgresql://...``) is used as given. A file that is not
a SQLite database is refused before anything is written to it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from semsim.errors import SemsimError

TASKS = ("class", "pair")
# columns added after the first release, with the SQL default old rows get
ADDED_COLUMNS = {("project", "instructions"): "''", ("project", "base_url"): "NULL", ("item", "example"): "0",
                 ("web_session", "expires"): "'1970-01-01 00:00:00'"}
SQLITE_MAGIC = b"SQLite format 3\x00"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Project(Base):
    """One study per database: its task form, judges per item, classes, the owner's instructions for annotators
    and the address the app is served at (for the links of new annotators)."""

    __tablename__ = "project"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(10))
    per_item: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    instructions: Mapped[str] = mapped_column(Text, default="")
    base_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Item(Base):
    """A reconstruction to judge (with its original); gold items carry the known answer; examples are shown
    with their answer on the instructions page and never assigned."""

    __tablename__ = "item"
    __table_args__ = (UniqueConstraint("set", "image_id", name="uq_item_set_image"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    set: Mapped[str] = mapped_column(String(500), index=True)
    image_id: Mapped[str] = mapped_column(String(500))
    original: Mapped[str] = mapped_column(String(4000))
    reconstruction: Mapped[str] = mapped_column(String(4000))
    label: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_answer: Mapped[int | None] = mapped_column(Integer, nullable=True)
    example: Mapped[bool] = mapped_column(Boolean, default=False)


class Annotator(Base):
    """A person with a secret link (only the sha256 of the token is stored); admins see the dashboard."""

    __tablename__ = "annotator"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    imported: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Assignment(Base):
    """Item ``item_id`` is in the queue of ``annotator_id`` at ``position`` (each queue's random order)."""

    __tablename__ = "assignment"
    __table_args__ = (UniqueConstraint("annotator_id", "item_id", name="uq_assignment_annotator_item"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotator.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id"), index=True)
    position: Mapped[float] = mapped_column(Float)


class Answer(Base):
    """One answer per assignment (the unique constraint makes a double submit store one row).

    ``value``: class task, the chosen class index or -1 ("can't tell"); pair task, 1 yes, 0 no, -1 unsure;
    both tasks: -2 the image was flagged as broken, -3 the item was skipped (neither counts as a judgment).
    """

    __tablename__ = "answer"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignment.id"), unique=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotator.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id"), index=True)
    value: Mapped[int] = mapped_column(Integer)
    submit_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class WebSession(Base):
    """A browser session opened by a secret link: cookie id (stored hashed), its CSRF token and its expiry."""

    __tablename__ = "web_session"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotator.id"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires: Mapped[dt.datetime] = mapped_column(DateTime)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases or in-memory SQLite)."""
    if not url.startswith("sqlite") or "///" not in url:
        return None
    name = url.split("///", 1)[1]
    return Path(name) if name and name != ":memory:" else None


def check_sqlite_file(path: Path) -> None:
    """Refuse a file that exists, is not empty and is not a SQLite database (before SQLite touches it)."""
    if not path.exists():
        return
    if path.is_dir():
        raise SemsimError(f"{path}: is a folder; give a file name for the annotation database (e.g. study.sqlite)")
    with open(path, "rb") as fh:
        head = fh.read(len(SQLITE_MAGIC))
    if head and head != SQLITE_MAGIC:
        raise SemsimError(f"{path}: not a SQLite database; give a new file name or an existing annotation "
                          "database")


def database_url(db: str | os.PathLike) -> str:
    """A SQLAlchemy URL: ``db`` itself when it has a scheme, else a SQLite file path."""
    text = str(db)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).resolve()}"


class Database:
    """Engines and sessions for one annotation database.

    ``read()`` opens a plain transaction; ``write()`` one that takes SQLite's write lock up front.
    """

    def __init__(self, db: str | os.PathLike, create: bool = False):
        self.url = database_url(db)
        self.is_sqlite = self.url.startswith("sqlite")
        path = sqlite_path(self.url)
        if path is not None:
            check_sqlite_file(path)
            if not create and not path.is_file():
                raise SemsimError(f"{path}: no such annotation database; create it with "
                                  "`semsim annotate init`")
        self.engine = self._engine(immediate=False)
        self.write_engine = self._engine(immediate=True) if self.is_sqlite else self.engine
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.write_engine, expire_on_commit=False)
        if create:
            Base.metadata.create_all(self.write_engine)
        self._add_new_columns()

    def _add_new_columns(self) -> None:
        """Bring a database made by an earlier version up to date: add the columns it lacks (with the values
        :data:`ADDED_COLUMNS` gives old rows; an old session then counts as expired)."""
        tables = inspect(self.write_engine).get_table_names()
        with self.write_engine.begin() as conn:
            for table in Base.metadata.sorted_tables:
                if table.name not in tables:
                    continue
                present = {c["name"] for c in inspect(conn).get_columns(table.name)}
                for column in table.columns:
                    if column.name not in present and (table.name, column.name) in ADDED_COLUMNS:
                        kind = column.type.compile(self.write_engine.dialect)
                        default = ADDED_COLUMNS[(table.name, column.name)]
                        conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind} '
                                             f"DEFAULT {default}")

    def _engine(self, immediate: bool) -> Engine:
        if not self.is_sqlite:
            return create_engine(self.url, pool_pre_ping=True)
        engine = create_engine(self.url, connect_args={"timeout": 60, "check_same_thread": False},
                               pool_size=16, max_overflow=32)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as session:
            yield session

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A plain Core connection for the short reads of every request (lighter than a Session)."""
        with self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A writing transaction, committed when the block ends without an exception."""
        with self._write() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """A writing transaction on a plain Core connection (the answer writer: lighter than a Session)."""
        with self.write_engine.begin() as conn:
            yield conn

    def project(self, session: Session) -> Project:
        try:
            project = session.scalar(select(Project).limit(1))
        except OperationalError:
            project = None
        if project is None:
            raise SemsimError(f"{self.url}: not an annotation database (no project); "
                              "run `semsim annotate init`")
        return project

    def dispose(self) -> None:
        self.engine.dispose()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()
